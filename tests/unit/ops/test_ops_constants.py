"""device_constant: copied once per (values, dtype, device), same values as torch.tensor."""

from __future__ import annotations

import torch

from bevforge.ops import constants
from bevforge.ops.constants import device_constant


def test_same_tensor_for_the_same_constant():
    a = device_constant([(3, 4), (5, 6)], torch.long, "cpu")
    assert torch.equal(a, torch.tensor([[3, 4], [5, 6]]))
    assert device_constant(((3, 4), (5, 6)), torch.long, torch.device("cpu")) is a  # lists and tuples alike
    b = device_constant([(3, 4), (5, 6)], torch.float32, "cpu")
    assert b is not a and b.dtype == torch.float32


def test_device_fill_fallback_matches_the_copy():
    """What a CUDA-graph capture builds on a cache miss (device-side fills) equals the copied constant."""
    for values in ([1, 2, 3], [(58, 100), (29, 50)], [[0.5, 2.0]]):
        for dtype in (torch.long, torch.float32, torch.bfloat16):
            filled = constants._filled(constants._freeze(values), dtype, torch.device("cpu"))
            assert torch.equal(filled, torch.tensor(values, dtype=dtype)), (values, dtype)


def test_traced_code_builds_its_own_constant():
    def f(x):
        return x + device_constant([1.0, 2.0], torch.float32, x.device)

    traced = torch.jit.trace(f, torch.zeros(2))
    assert torch.equal(traced(torch.ones(2)), torch.tensor([2.0, 3.0]))
    compiled = torch.compile(f, backend="eager", fullgraph=True)
    assert torch.equal(compiled(torch.ones(2)), torch.tensor([2.0, 3.0]))


def test_constant_first_made_under_inference_mode_can_be_saved_for_backward():
    """An evaluation under inference_mode may ask first; training then saves the constant for backward."""
    with torch.inference_mode():
        c = device_constant([7.0, 11.0, 13.0], torch.float32, "cpu")
    assert not c.is_inference()
    w = torch.ones(3, requires_grad=True)
    (w * c).sum().backward()  # mul saves c for backward
    assert torch.equal(w.grad, torch.tensor([7.0, 11.0, 13.0]))
