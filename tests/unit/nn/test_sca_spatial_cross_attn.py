"""Spatial cross-attention: the vectorised gather/scatter equals a dense per-camera computation."""

from __future__ import annotations

import torch

from bevforge.nn.spatial_cross_attn import SpatialCrossAttention

B, N, Q, Z, C = 2, 6, 12, 4, 16
SHAPES = torch.tensor([[3, 4], [2, 2]])
START = torch.tensor([0, 12])


def make_inputs():
    query = torch.randn(B, Q, C)
    value = torch.randn(B, N, 16, C)
    ref_cam = torch.rand(B, N, Q, Z, 2)
    mask = torch.rand(B, N, Q, Z) > 0.7
    mask[0, :, 3] = False  # a query no camera sees
    mask[1, 2] = False  # a camera that sees nothing in sample 1
    return query, value, ref_cam, mask


def make_sca() -> SpatialCrossAttention:
    sca = SpatialCrossAttention(C, num_cams=N, num_heads=4, num_levels=2, num_points=8).eval()
    with torch.no_grad():
        sca.deformable_attention.sampling_offsets.weight.normal_(0, 0.1)
        sca.deformable_attention.attention_weights.weight.normal_(0, 0.1)
    return sca


def test_sca_matches_dense_reference():
    torch.manual_seed(0)
    sca = make_sca()
    query, value, ref_cam, mask = make_inputs()
    out = sca(query, value, ref_cam, mask, SHAPES, START)
    assert out.shape == (B, Q, C)
    # dense: every query through every camera, then keep hits and average over hitting cameras
    dense = sca.deformable_attention(
        query.repeat_interleave(N, dim=0), value.flatten(0, 1), ref_cam.flatten(0, 1), SHAPES, START
    ).view(B, N, Q, C)
    hit = mask.any(-1)  # [B, N, Q]
    slots = (dense * hit[..., None]).sum(1) / hit.sum(1).clamp(min=1)[..., None]
    expected = query + sca.output_proj(slots)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    # a query without hits gets only the projection bias
    torch.testing.assert_close(out[0, 3], query[0, 3] + sca.output_proj.bias)


def test_sca_uses_each_samples_own_mask_and_backprops():
    torch.manual_seed(0)
    sca = make_sca()
    query, value, ref_cam, mask = make_inputs()
    out = sca(query, value, ref_cam, mask, SHAPES, START)
    for b in range(B):
        alone = sca(query[b : b + 1], value[b : b + 1], ref_cam[b : b + 1], mask[b : b + 1], SHAPES, START)
        torch.testing.assert_close(out[b : b + 1], alone, atol=1e-5, rtol=1e-5)
    value.requires_grad_(True)
    sca.train()(query, value, ref_cam, mask, SHAPES, START).sum().backward()
    assert value.grad[1, 2].abs().sum() == 0  # camera 2 sees nothing in sample 1
    assert value.grad[0, 2].abs().sum() > 0
