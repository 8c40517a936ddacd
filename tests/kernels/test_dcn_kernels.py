"""DCNv2 columns kernel: dispatch rules on CPU, Triton parity (CPU interpreter; CUDA if present)."""

from __future__ import annotations

import pytest
import torch
from kernel_harness import case_file_tests, load_cases

from bevforge.ops.dcn import sampled as dcn


def _cases():
    return load_cases("dcn_kernel_cases")


def test_columns_auto_on_cpu_is_the_sampled_path(monkeypatch):
    monkeypatch.delenv("BEVFORGE_KERNELS", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x, offset, mask, geo = _cases().make_inputs("cpu")
    assert "needs CUDA" in dcn.columns_ineligible_reason(x, offset, mask, torch.float32, 9)
    got = dcn._forward_columns(x, offset, mask, geo, 1, torch.float32)
    torch.testing.assert_close(got, _cases().oracle_columns(x, offset, mask, geo), atol=0, rtol=0)


def test_columns_forced_triton_on_cpu_says_why(monkeypatch):
    monkeypatch.setenv("BEVFORGE_KERNELS", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x, offset, mask, _ = _cases().make_inputs("cpu")
    weight = torch.randn(4, x.shape[1], 3, 3)
    with pytest.raises(RuntimeError, match="BEVFORGE_KERNELS=triton.*DCN columns.*cpu"):
        dcn.deform_conv2d_sampled(x, offset, weight, padding=1, mask=mask)


def test_columns_not_used_for_unsupported_dtypes(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x, offset, mask, _ = _cases().make_inputs("cpu", dtype=torch.float64)
    assert "dtypes" in dcn.columns_ineligible_reason(x, offset, mask, torch.float64, 9)


test_triton_columns_under_interpreter, test_triton_columns_cuda = case_file_tests("dcn_kernel_cases")
