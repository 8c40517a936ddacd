"""Graph breaks of the BEVFormer attention blocks under ``torch._dynamo.explain`` (training mode).

With static (H, W) shapes the encoder layer (TSA -> SCA -> FFN) and the decoder's deformable attention
trace as one graph each: no host read of the level shapes, no token-count ``int()``, no SCA ``max_len``.
"""

from __future__ import annotations

import torch
import torch._dynamo as dynamo

from bevforge.models.bev_encoder import BEVFormerLayer
from bevforge.nn.msdeform_attn import MSDeformAttn

B, N, C, Z, BEV_H, BEV_W = 1, 3, 16, 4, 4, 5
Q = BEV_H * BEV_W
CAM_SHAPES = ((4, 6), (2, 3))
S = sum(h * w for h, w in CAM_SHAPES)


def explain(fn, *args):
    dynamo.reset()
    try:
        return dynamo.explain(fn)(*args)
    finally:
        dynamo.reset()


def layer_inputs(cam_shapes, bev_shapes):
    torch.manual_seed(0)
    query, pos, prev = torch.randn(B, Q, C), torch.randn(B, Q, C), torch.randn(B, Q, C)
    ref_2d = torch.rand(2 * B, Q, 1, 2)
    feats = torch.randn(B, N, S, C)
    ref_cam = torch.rand(B, N, Q, Z, 2)
    mask = torch.rand(B, N, Q, Z) > 0.5
    has_prev = torch.tensor([True])
    bev_start, cam_start = torch.zeros(1, dtype=torch.long), torch.tensor([0, 24])
    return (query, pos, prev, has_prev, ref_2d, bev_shapes, bev_start, feats, ref_cam, mask, cam_shapes,
            cam_start, query)  # fmt: skip


def test_encoder_layer_has_no_graph_break_with_static_shapes():
    torch.manual_seed(0)
    layer = BEVFormerLayer(C, 32, 0.1, N, 2, 4, 4, 4, 8).train()
    out = explain(layer, *layer_inputs(CAM_SHAPES, ((BEV_H, BEV_W),)))
    assert out.graph_break_count == 0, [r.reason.splitlines()[0] for r in out.break_reasons]
    assert out.graph_count == 1


def test_encoder_layer_fused_over_cameras_has_no_graph_break():
    """The SCA as one op over the cameras (here its reference: the op itself is opaque to the tracer)
    traces in the layer's one graph: no gather size, no host read."""
    torch.manual_seed(0)
    layer = BEVFormerLayer(C, 32, 0.1, N, 2, 4, 4, 4, 8).train()
    layer.spatial_attn.fuse_cameras = "on"
    out = explain(layer, *layer_inputs(CAM_SHAPES, ((BEV_H, BEV_W),)))
    assert out.graph_break_count == 0, [r.reason.splitlines()[0] for r in out.break_reasons]
    assert out.graph_count == 1


def test_encoder_layer_with_tensor_shapes_still_breaks():
    """The tensor form is read back by the reference MSDA: the break the static form removes."""
    layer = BEVFormerLayer(C, 32, 0.1, N, 2, 4, 4, 4, 8).train()

    def with_tensor_shapes(*args):
        args = list(args)
        args[5], args[10] = torch.as_tensor(args[5]), torch.as_tensor(args[10])  # built in the forward
        return layer(*args)

    out = explain(with_tensor_shapes, *layer_inputs(CAM_SHAPES, ((BEV_H, BEV_W),)))
    assert out.graph_break_count >= 1


def test_decoder_deformable_attention_has_no_graph_break_with_static_shapes():
    torch.manual_seed(0)
    attn = MSDeformAttn(C, 4, num_levels=1, num_points=4).train()
    query, pos, bev = torch.randn(B, 7, C), torch.randn(B, 7, C), torch.randn(B, Q, C)
    ref = torch.rand(B, 7, 1, 2)
    out = explain(attn, query, bev, ref, ((BEV_H, BEV_W),), torch.zeros(1, dtype=torch.long), pos)
    assert out.graph_break_count == 0, [r.reason.splitlines()[0] for r in out.break_reasons]
