"""ops/dcn on CUDA: fp32 parity with torchvision and the bf16 autocast path (skipped without a GPU)."""

import pytest
import torch
from torchvision.ops import deform_conv2d

from bevforge.ops.dcn import deform_conv2d_sampled

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _inputs(B=2, C=32, O=48, H=13, W=21):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(B, C, H, W, generator=gen)
    offset = torch.randn(B, 18, H, W, generator=gen) * 3.0  # many taps outside the image
    mask = torch.rand(B, 9, H, W, generator=gen)
    weight = torch.randn(O, C, 3, 3, generator=gen) * (C * 9) ** -0.5
    bias = torch.randn(O, generator=gen)
    return [t.cuda().requires_grad_() for t in (x, offset, mask, weight, bias)]


def _grads(fn, tensors, grad_out=None, amp=False):
    x, offset, mask, weight, bias = tensors
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        out = fn(x, offset, weight, bias, padding=1, mask=mask)
    grad_out = torch.randn_like(out, dtype=torch.float32) if grad_out is None else grad_out
    return out, torch.autograd.grad(out.float(), tensors, grad_out), grad_out


def test_dcn_sampled_cuda_fp32_matches_torchvision(monkeypatch):
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)  # restored after the test
    tensors = _inputs()
    ref, ref_grads, g = _grads(deform_conv2d, tensors)
    out, grads, _ = _grads(deform_conv2d_sampled, tensors, g)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    for name, a, b in zip(("input", "offset", "mask", "weight", "bias"), grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-4, msg=lambda m, n=name: f"grad {n}: {m}")


def test_dcn_sampled_cuda_bf16_autocast_close_to_fp32():
    tensors = _inputs()
    ref, ref_grads, g = _grads(deform_conv2d, tensors)
    out, grads, _ = _grads(deform_conv2d_sampled, tensors, g, amp=True)
    assert out.dtype == torch.bfloat16
    assert (out.float() - ref).norm() <= 0.01 * ref.norm()
    for a, b in zip(grads, ref_grads):
        assert a.dtype == torch.float32
        assert (a - b).norm() <= 0.02 * b.norm()
