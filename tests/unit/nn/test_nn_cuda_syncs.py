"""On CUDA the attention blocks run forward + backward without a host sync when the level shapes are
static (``torch.cuda.set_sync_debug_mode("error")`` turns any synchronising call into an error)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from bevforge.models.bev_encoder import BEVFormerLayer
from bevforge.nn.msdeform_attn import MSDeformAttn
from bevforge.nn.spatial_cross_attn import SpatialCrossAttention

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

B, N, C, Z, BEV_H, BEV_W = 2, 3, 32, 4, 6, 7
Q = BEV_H * BEV_W
CAM_SHAPES = ((8, 12), (4, 6))
S = sum(h * w for h, w in CAM_SHAPES)
DEV = torch.device("cuda")


@contextlib.contextmanager
def no_sync_allowed():
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def layer_inputs():
    torch.manual_seed(0)
    query = torch.randn(B, Q, C, device=DEV, requires_grad=True)
    feats = torch.randn(B, N, S, C, device=DEV, requires_grad=True)
    ref_cam = torch.rand(B, N, Q, Z, 2, device=DEV)
    mask = torch.rand(B, N, Q, Z, device=DEV) > 0.5
    bev_start = torch.zeros(1, dtype=torch.long, device=DEV)
    cam_start = torch.tensor([0, 96], device=DEV)
    rest = (
        torch.randn(B, Q, C, device=DEV),
        torch.randn(B, Q, C, device=DEV),
        torch.tensor([True, False], device=DEV),
    )
    return query, feats, ref_cam, mask, bev_start, cam_start, rest


def test_encoder_layer_forward_backward_without_sync():
    torch.manual_seed(0)
    layer = BEVFormerLayer(C, 64, 0.1, N, 2, 4, 4, 4, 8).to(DEV).train()
    for m in layer.modules():
        if isinstance(m, SpatialCrossAttention):
            m.query_bound = "all"
    query, feats, ref_cam, mask, bev_start, cam_start, (pos, prev, has_prev) = layer_inputs()
    ref_2d = torch.rand(2 * B, Q, 1, 2, device=DEV)
    layer(query, pos, prev, has_prev, ref_2d, ((BEV_H, BEV_W),), bev_start, feats, ref_cam, mask,
          CAM_SHAPES, cam_start, query)  # fmt: skip  # warm-up: Triton compiles outside the check
    with no_sync_allowed():
        out = layer(query, pos, prev, has_prev, ref_2d, ((BEV_H, BEV_W),), bev_start, feats, ref_cam, mask,
                    CAM_SHAPES, cam_start, query)  # fmt: skip
        out.square().mean().backward()
    assert torch.isfinite(query.grad).all() and torch.isfinite(feats.grad).all()


def test_sca_exact_gather_syncs_and_the_static_and_fused_paths_do_not():
    torch.manual_seed(0)
    # dropout off: the two calls below are compared (the module is in training mode)
    sca = SpatialCrossAttention(C, N, 4, 2, 8, dropout=0.0, query_bound="exact", fuse_cameras="off").to(DEV)
    query, feats, ref_cam, mask, _, cam_start, _ = layer_inputs()
    want = sca(query, feats, ref_cam, mask, CAM_SHAPES, cam_start)
    with no_sync_allowed(), pytest.raises(RuntimeError, match="synchroniz"):
        sca(query, feats, ref_cam, mask, CAM_SHAPES, cam_start)  # the host read of max_len
    sca.query_bound = "all"
    with no_sync_allowed():
        got = sca(query, feats, ref_cam, mask, CAM_SHAPES, cam_start)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)  # the Triton kernel's atomics reorder sums
    sca.fuse_cameras = "auto"  # the default on CUDA: one kernel over the cameras, no gather, no read
    assert sca.fused(feats)
    with no_sync_allowed():
        fused = sca(query, feats, ref_cam, mask, CAM_SHAPES, cam_start)
        fused.square().sum().backward()
    torch.testing.assert_close(fused, want, rtol=0, atol=1e-5)
    assert torch.isfinite(feats.grad).all()


def test_decoder_cross_attention_without_sync():
    torch.manual_seed(0)
    attn = MSDeformAttn(C, 4, num_levels=1, num_points=4).to(DEV).train()
    query = torch.randn(B, 9, C, device=DEV, requires_grad=True)
    bev = torch.randn(B, Q, C, device=DEV, requires_grad=True)
    ref = torch.rand(B, 9, 1, 2, device=DEV)
    start = torch.zeros(1, dtype=torch.long, device=DEV)
    attn(query, bev, ref, ((BEV_H, BEV_W),), start, query).sum().backward()  # warm-up
    with no_sync_allowed():
        attn(query, bev, ref, ((BEV_H, BEV_W),), start, query).sum().backward()
