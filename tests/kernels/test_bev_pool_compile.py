"""The BEV pooling kernels compile ahead of time for sm_80 / sm_90 (Triton -> PTX -> cubin with the
wheel's ptxas), without a GPU: the interpreter tests check the arithmetic, this checks the GPU lowering."""

from __future__ import annotations

import pytest

triton = pytest.importorskip("triton")


def _signature(kernel, dtype: str) -> dict[str, str]:
    """Triton signature from the argument names: ``ranks_*``/``*starts*``/``*lengths*``/``feat_order``
    pointers are int64, the other pointers ``dtype``, ``BLOCK_*`` constexpr, the rest int32 sizes."""
    sig = {}
    for name in kernel.arg_names:
        if name.startswith("BLOCK_"):
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            int_ptr = name.startswith(("ranks_", "starts", "lengths", "feat_order"))
            sig[name] = "*i64" if int_ptr else f"*{dtype}"
        else:
            sig[name] = "i32"
    return sig


@pytest.mark.parametrize("arch", [80, 90])
def test_bev_pool_kernels_compile_for_gpu(arch):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from bevforge.ops.bev_pool import triton_bev_pool as kernels

    block_p, block_c, warps = kernels._launch_params(64)  # BEVDet-R50: 64 context channels
    dtypes = ("fp32", "bf16") if arch == 90 else ("fp16",)
    for kernel in (
        kernels._bev_pool_fwd_kernel,
        kernels._bev_pool_grad_depth_kernel,
        kernels._bev_pool_grad_context_kernel,
    ):
        for dtype in dtypes:
            src = ASTSource(
                fn=kernel,
                signature=_signature(kernel, dtype),
                constexprs={"BLOCK_P": block_p, "BLOCK_C": block_c},
            )
            compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": warps})
            assert len(compiled.asm["cubin"]) > 1000, f"{kernel.fn.__name__} {dtype} sm_{arch}: no cubin"
