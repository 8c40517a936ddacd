"""The one deformable-attention init shared by MSDeformAttn, SCA's MSDeformableAttention3D and TSA."""

import torch
from torch import nn

from bevforge.nn.msdeform_attn import MSDeformAttn, init_deformable_attention
from bevforge.nn.spatial_cross_attn import SpatialCrossAttention
from bevforge.nn.temporal_self_attn import TemporalSelfAttention


def test_init_deformable_attention_ring_of_directions() -> None:
    torch.manual_seed(0)
    heads, levels, points = 4, 2, 3
    offsets = nn.Linear(8, heads * levels * points * 2)
    weights = nn.Linear(8, heads * levels * points)
    proj = nn.Linear(8, 8)
    init_deformable_attention(
        offsets, weights, (proj,), num_heads=heads, num_levels=levels, num_points=points
    )
    assert torch.count_nonzero(offsets.weight) == 0
    assert torch.count_nonzero(weights.weight) == 0 and torch.count_nonzero(weights.bias) == 0
    assert torch.count_nonzero(proj.bias) == 0
    bound = (6.0 / (8 + 8)) ** 0.5  # xavier uniform
    assert proj.weight.abs().max() <= bound and proj.weight.abs().max() > 0.5 * bound
    bias = offsets.bias.view(heads, levels, points, 2)
    # head m points in direction 2 pi m / M, max component 1: +x, +y, -x, -y for M = 4
    directions = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    expected = directions[:, None, None, :] * torch.arange(1.0, points + 1)[None, None, :, None]
    torch.testing.assert_close(bias, expected.expand(heads, levels, points, 2), atol=1e-6, rtol=0)
    # diagonal heads (M = 8) are scaled so that the largest component is exactly 1
    offsets8 = nn.Linear(8, 8 * 1 * 1 * 2)
    init_deformable_attention(offsets8, nn.Linear(8, 8), (), num_heads=8, num_levels=1, num_points=1)
    torch.testing.assert_close(offsets8.bias.view(8, 2).abs().amax(dim=-1), torch.ones(8))
    torch.testing.assert_close(offsets8.bias.view(8, 2)[1], torch.tensor([1.0, 1.0]))


def test_modules_share_the_init() -> None:
    torch.manual_seed(0)
    msda = MSDeformAttn(16, num_heads=4, num_levels=2, num_points=3)
    sca = SpatialCrossAttention(16, num_cams=2, num_heads=4, num_levels=2, num_points=4)
    tsa = TemporalSelfAttention(16, num_heads=4, num_levels=1, num_points=3)
    for module, levels, points in (
        (msda, 2, 3),
        (sca.deformable_attention, 2, 4),
        (tsa, 2, 3),  # TSA: 2 queues x 1 level, laid out [M, V, L, P, 2]
    ):
        reference = nn.Linear(1, 4 * levels * points * 2)
        init_deformable_attention(
            reference, nn.Linear(1, 1), (), num_heads=4, num_levels=levels, num_points=points
        )
        torch.testing.assert_close(module.sampling_offsets.bias, reference.bias, atol=0, rtol=0)
        assert torch.count_nonzero(module.attention_weights.weight) == 0
        assert torch.count_nonzero(module.attention_weights.bias) == 0
        assert torch.count_nonzero(module.value_proj.bias) == 0
    for output_proj in (msda.output_proj, sca.output_proj, tsa.output_proj):
        assert torch.count_nonzero(output_proj.bias) == 0
