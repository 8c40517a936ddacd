"""The export's dense spatial cross-attention equals the hit-only module, for any hit sets."""

from __future__ import annotations

import torch

from bevforge.export.dense_sca import DenseSpatialCrossAttention, with_dense_sca
from bevforge.nn.spatial_cross_attn import SpatialCrossAttention


def _inputs(gen: torch.Generator, batch: int, cams: int, num_q: int, channels: int, shapes: list):
    spatial_shapes = torch.tensor(shapes, dtype=torch.long)  # [L, 2]
    start = torch.cat((spatial_shapes.new_zeros(1), spatial_shapes.prod(1).cumsum(0)[:-1]))  # [L]
    num_value = int(spatial_shapes.prod(1).sum())
    query = torch.randn(batch, num_q, channels, generator=gen)  # [B, Q, C]
    value = torch.randn(batch, cams, num_value, channels, generator=gen)  # [B, N, S, C]
    ref = torch.rand(batch, cams, num_q, 2, 2, generator=gen) * 1.4 - 0.2  # [B, N, Q, Z, 2], some outside
    mask = torch.rand(batch, cams, num_q, 2, generator=gen) < 0.3  # [B, N, Q, Z]
    mask[0, 0] = False  # a camera that sees nothing
    mask[1, 2] = True  # a camera that sees everything
    return query, value, ref, mask, spatial_shapes, start


def test_export_dense_sca_equals_hit_only_sca():
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    sca = SpatialCrossAttention(embed_dims=16, num_cams=3, num_heads=2, num_levels=2, num_points=4).eval()
    dense = DenseSpatialCrossAttention(sca).eval()
    for _ in range(3):  # other hit sets each time
        args = _inputs(gen, batch=2, cams=3, num_q=20, channels=16, shapes=[[4, 6], [2, 3]])
        with torch.no_grad():
            want, got = sca(*args), dense(*args)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    # a query no camera sees keeps its residual only (output_proj of zeros = its bias)
    query, value, ref, mask, shapes, start = args
    mask[:, :, 5] = False
    with torch.no_grad():
        out = dense(query, value, ref, mask, shapes, start)
    torch.testing.assert_close(out[:, 5], query[:, 5] + sca.output_proj.bias)


def test_export_with_dense_sca_copies_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 4), SpatialCrossAttention(embed_dims=8, num_cams=2, num_heads=2, num_levels=1)
    )
    copy = with_dense_sca(model)
    assert isinstance(model[1], SpatialCrossAttention)  # the original keeps the hit-only path
    assert isinstance(copy[1], DenseSpatialCrossAttention)
    torch.testing.assert_close(copy[1].sca.output_proj.weight, model[1].output_proj.weight)
    assert copy[1].sca.output_proj.weight.data_ptr() != model[1].output_proj.weight.data_ptr()
