"""BEV pooling kernels: Triton vs reference under the CPU interpreter (subprocess), and on CUDA if present."""

from __future__ import annotations

import pytest
import torch
from kernel_harness import case_file_tests, load_cases


def _cases():
    return load_cases("bev_pool_kernel_cases")


test_bev_pool_triton_kernels_under_interpreter, test_bev_pool_triton_kernels_cuda = case_file_tests(
    "bev_pool_kernel_cases"
)


@pytest.mark.gpu
def test_bev_pool_cuda_bevdet_r50_shape_parity():
    """BEVDet-R50 sizes (6 cameras, 59 depth bins, 16x44 features, 64 channels, 128x128 BEV), fwd + bwd."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    cases = _cases()
    depth, context, plan = cases.make_inputs(
        "cuda", B=1, N=6, D=59, fH=16, fW=44, C=64, H=128, W=128, outside=0.4, num_cells=None
    )
    grad_out = torch.randn(1, 64, 128, 128, device="cuda")
    out_k, g_k = cases._grads(cases._op(), depth, context, plan, grad_out)
    out_r, g_r = cases._grads(cases.bev_pool_reference, depth, context, plan, grad_out)
    torch.testing.assert_close(out_k, out_r, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(g_k[0], g_r[0], atol=1e-4, rtol=1e-4)  # depth: 64-term dot products
    torch.testing.assert_close(g_k[1], g_r[1], atol=1e-5, rtol=1e-4)  # context
