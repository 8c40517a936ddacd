"""MSDA kernels: reference gradcheck, dispatch rules, Triton parity (CPU interpreter; CUDA if present)."""

from __future__ import annotations

import pytest
import torch
from kernel_harness import case_file_tests, load_cases

from bevforge.ops.msda import msda_reference, multi_scale_deformable_attention


def _cases():
    return load_cases("msda_kernel_cases")


def test_reference_gradcheck_fp64():
    cases = _cases()
    value, spatial, start, locs, weights = cases.make_inputs("cpu", torch.float64, B=1, M=2, D=2, Q=3, P=2)
    inputs = (value.requires_grad_(), spatial, start, locs.requires_grad_(), weights.requires_grad_())
    assert torch.autograd.gradcheck(msda_reference, inputs, eps=1e-6, atol=1e-5)


def test_dispatch_auto_on_cpu_is_the_reference(monkeypatch):
    monkeypatch.delenv("BEVFORGE_KERNELS", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    args = _cases().make_inputs("cpu")
    torch.testing.assert_close(multi_scale_deformable_attention(*args), msda_reference(*args), atol=0, rtol=0)


def test_dispatch_forced_triton_on_cpu_says_why(monkeypatch):
    monkeypatch.setenv("BEVFORGE_KERNELS", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="BEVFORGE_KERNELS=triton.*cpu"):
        multi_scale_deformable_attention(*_cases().make_inputs("cpu"))


def test_dispatch_rejects_unknown_choice(monkeypatch):
    monkeypatch.setenv("BEVFORGE_KERNELS", "cuda")
    with pytest.raises(ValueError, match="reference, triton or auto"):
        multi_scale_deformable_attention(*_cases().make_inputs("cpu"))


test_triton_kernels_under_interpreter, test_triton_kernels_cuda = case_file_tests("msda_kernel_cases")


@pytest.mark.gpu
def test_triton_cuda_base_shape_parity():
    """A BEVFormer-like TSA slice (1 level, 50x50, 8 heads x 32 ch, 4 points) on CUDA, fwd + bwd."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    cases = _cases()
    args = cases.make_inputs("cuda", shapes=((50, 50),), B=2, M=8, D=32, Q=2500, P=4)
    grad_out = torch.randn(2, 2500, 256, device="cuda")
    out_k, g_k = cases._grads(cases._op(), *args, grad_out)
    out_r, g_r = cases._grads(msda_reference, *args, grad_out)
    torch.testing.assert_close(out_k, out_r, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(g_k[0], g_r[0], atol=2e-3, rtol=1e-3)  # value
    torch.testing.assert_close(g_k[2], g_r[2], atol=2e-3, rtol=1e-3)  # attention weights
    # location grads jump where a point crosses a pixel centre; grid_sample computes the pixel coordinate
    # as ((2 * loc - 1 + 1) * W - 1) / 2, we as loc * W - 0.5: a few points in 1e5 may land on the
    # other side of the kink in fp32 (seen once on an H200: 1 of 320 000, 0.6 % off)
    bad = (g_k[1] - g_r[1]).abs() > 2e-3 + 1e-3 * g_r[1].abs()
    assert bad.sum().item() <= max(2, bad.numel() // 20000), f"{bad.sum().item()} location grads differ"
