"""MSDA with static (H, W) int pairs: the same numbers as the ``[L, 2]`` tensor, no graph break."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo as dynamo

from bevforge.ops.msda import msda_reference, multi_scale_deformable_attention
from bevforge.ops.msda.shapes import (
    check_num_tokens,
    level_shapes,
    shapes_tensor,
    static_level_shapes,
    wh_normaliser,
)

SHAPES = ((5, 7), (3, 4), (1, 2))


def make_inputs(dtype=torch.float64):
    B, M, D, Q, P = 2, 2, 3, 4, 3
    S = sum(h * w for h, w in SHAPES)
    value = torch.randn(B, S, M, D, dtype=dtype)
    locs = torch.rand(B, Q, M, len(SHAPES), P, 2, dtype=dtype) * 1.4 - 0.2  # some out of range
    weights = torch.rand(B, Q, M, len(SHAPES), P, dtype=dtype)
    start = torch.tensor([0, 35, 47])
    return value, start, locs, weights


def test_static_pairs_equal_tensor_shapes():
    torch.manual_seed(0)
    value, start, locs, weights = make_inputs()
    want = msda_reference(value, torch.tensor(SHAPES), start, locs, weights)
    assert torch.equal(msda_reference(value, SHAPES, start, locs, weights), want)
    assert torch.equal(
        multi_scale_deformable_attention(value, [list(s) for s in SHAPES], start, locs, weights), want
    )


def test_shape_helpers():
    assert static_level_shapes(torch.tensor(SHAPES)) is None
    assert static_level_shapes([torch.Size([5, 7]), (3, 4), (1, 2)]) == SHAPES
    assert level_shapes(torch.tensor(SHAPES)) == SHAPES
    assert torch.equal(shapes_tensor(SHAPES, torch.device("cpu")), torch.tensor(SHAPES))
    norm = wh_normaliser(SHAPES, torch.float32, torch.device("cpu"))
    assert torch.equal(norm, torch.tensor([[7.0, 5.0], [4.0, 3.0], [2.0, 1.0]]))
    assert torch.equal(wh_normaliser(torch.tensor(SHAPES), torch.float32, torch.device("cpu")), norm)


@pytest.mark.parametrize("bad", [((5,),), ((0, 2),), ((2.5, 2),), ()])
def test_bad_static_shapes_name_the_fix(bad):
    with pytest.raises(ValueError, match="spatial_shapes"):
        static_level_shapes(bad)


def test_token_count_check():
    check_num_tokens(SHAPES, 49, "here")
    with pytest.raises(ValueError, match="here: spatial_shapes .* 49 tokens but the value map has 48"):
        check_num_tokens(SHAPES, 48, "here")
    check_num_tokens(torch.tensor(SHAPES), 49, "here")
    with pytest.raises(RuntimeError):  # device-side assert: raises at once on the CPU
        check_num_tokens(torch.tensor(SHAPES), 48, "here")


def test_static_shapes_trace_without_graph_break():
    torch.manual_seed(0)
    value, start, locs, weights = make_inputs(torch.float32)
    dynamo.reset()
    static = dynamo.explain(msda_reference)(value, SHAPES, start, locs, weights)

    def with_tensor_shapes(value, start, locs, weights):  # as the encoder builds them in its forward
        return msda_reference(value, torch.as_tensor(SHAPES), start, locs, weights)

    dynamo.reset()
    read_back = dynamo.explain(with_tensor_shapes)(value, start, locs, weights)
    dynamo.reset()
    assert static.graph_break_count == 0, static.break_reasons
    assert read_back.graph_break_count >= 1  # the tensor form reads the shapes back (tolist)


def test_sampling_locations_is_the_plain_formula_in_fp32(monkeypatch):
    """One ``addcdiv``: bitwise ``ref + offsets / n`` in fp32; bf16 offsets are divided in fp32 (not rounded
    to bf16 first) and get bf16 gradients; an ONNX export takes the plain form."""
    from bevforge.ops.msda.shapes import sampling_locations

    g = torch.Generator().manual_seed(0)
    ref = torch.rand(2, 5, 1, 3, 1, 2, generator=g)  # [B, Q, 1, L, 1, 2]
    offsets = torch.randn(2, 5, 4, 3, 6, 2, generator=g) * 7  # [B, Q, M, L, P, 2] in cells
    n = torch.tensor([[100.0, 50.0], [50.0, 25.0], [13.0, 7.0]])[None, None, None, :, None, :]
    assert torch.equal(sampling_locations(ref, offsets, n), ref + offsets / n)
    low = offsets.bfloat16().requires_grad_()
    got = sampling_locations(ref, low, n)
    assert got.dtype == torch.float32 and torch.equal(got, ref + low.detach().float() / n)
    got.sum().backward()
    assert low.grad.dtype == torch.bfloat16
    monkeypatch.setattr(torch.onnx, "is_in_onnx_export", lambda: True)
    monkeypatch.setattr(torch, "addcdiv", None)  # the exporter has no addcdiv: never called there
    assert torch.equal(sampling_locations(ref, offsets, n), ref + offsets / n)
