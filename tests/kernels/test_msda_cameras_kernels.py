"""The Triton MSDA camera kernel (``bevforge::msda_cameras``): its reference against the per-camera MSDA
and gradcheck (CPU), the dispatch on CPU, and the shared cases (CPU interpreter; CUDA if present)."""

from __future__ import annotations

import pytest
import torch
from kernel_harness import case_file_tests, load_cases

from bevforge.ops.msda import msda_cameras, msda_from_offsets
from bevforge.ops.msda.cameras import cameras_kernel_runs, msda_cameras_reference


def _cases():
    return load_cases("msda_cameras_kernel_cases")


def test_reference_is_the_sum_over_hit_cameras_of_the_msda():
    value, spatial, start, reference, hit, offsets, weights = _cases().make_inputs("cpu")
    got = msda_cameras_reference(value, spatial, start, reference, hit, offsets, weights)
    want = torch.zeros_like(got)
    for b in range(value.shape[0]):
        for n in range(value.shape[1]):
            one = msda_from_offsets(
                value[b : b + 1, n], spatial, start, reference[b : b + 1, n, :, None], offsets[b : b + 1],
                weights[b : b + 1],
            )[0]  # fmt: skip
            want[b] += torch.where(hit[b, n, :, None], one, 0.0)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_reference_gradcheck_fp64():
    args = _cases().make_inputs("cpu", B=1, N=2, M=1, D=2, Q=3, P=2, Z=1)
    value, spatial, start, reference, hit, offsets, weights = args
    hit[:] = True  # gradcheck wants every path live
    reference = torch.rand_like(reference).double()

    def f(v, o, w):
        return msda_cameras_reference(v, spatial, start, reference.float(), hit, o, w)

    leaves = (
        value.double().requires_grad_(),
        offsets.double().requires_grad_(),
        weights.double().requires_grad_(),
    )
    assert torch.autograd.gradcheck(f, leaves, eps=1e-6, atol=1e-5)


def test_dispatch_auto_on_cpu_is_the_reference(monkeypatch):
    monkeypatch.delenv("BEVFORGE_KERNELS", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    args = _cases().make_inputs("cpu")
    assert not cameras_kernel_runs(args[0])
    torch.testing.assert_close(msda_cameras(*args), msda_cameras_reference(*args), atol=0, rtol=0)


def test_dispatch_forced_triton_on_cpu_says_why(monkeypatch):
    monkeypatch.setenv("BEVFORGE_KERNELS", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="BEVFORGE_KERNELS=triton.*camera kernel.*cpu"):
        msda_cameras(*_cases().make_inputs("cpu"))


def test_reference_refuses_bad_shapes():
    value, spatial, start, reference, hit, offsets, weights = _cases().make_inputs("cpu")
    with pytest.raises(ValueError, match=r"msda_cameras: hit \(2, 3, 4\)"):
        msda_cameras_reference(value, spatial, start, reference, hit[..., :4], offsets, weights)


test_triton_kernels_under_interpreter, test_triton_kernels_cuda = case_file_tests("msda_cameras_kernel_cases")
