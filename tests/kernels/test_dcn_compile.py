"""The DCNv2 columns and backward kernels compile ahead of time for sm_80 / sm_90 (Triton -> PTX -> cubin
with the wheel's ptxas), without a GPU: the interpreter cases check the arithmetic, this the GPU lowering."""

from __future__ import annotations

import pytest

triton = pytest.importorskip("triton")

_CONSTEXPR = {"HAS_MASK", "KH", "KW", "BLOCK_C", "BLOCK_L"}


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("has_mask", [True, False])
def test_dcn_columns_kernel_compiles_for_gpu(arch, has_mask):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from bevforge.ops.dcn import triton_columns as tc

    kernel = tc._dcn_columns_kernel
    # (input dtype, columns dtype): bf16 activations -> bf16 GEMM, fp32 -> bf16 (autocast), fp32 -> fp32;
    # every pair once (sm_90 with the mask), bf16 for the other variants (~3 s per compile)
    pairs = (("bf16", "bf16"), ("fp32", "bf16"), ("fp32", "fp32"), ("fp16", "fp16"))
    for in_dtype, out_dtype in pairs if (arch == 90 and has_mask) else pairs[:1]:
        sig = {}
        for name in kernel.arg_names:
            if name in _CONSTEXPR:
                sig[name] = "constexpr"
            elif name.endswith("_ptr"):
                sig[name] = f"*{out_dtype if name == 'out_ptr' else in_dtype}"
            else:
                sig[name] = "i32"
        consts = {"HAS_MASK": has_mask, "KH": 3, "KW": 3, "BLOCK_C": tc.BLOCK_C, "BLOCK_L": tc.BLOCK_L}
        src = ASTSource(fn=kernel, signature=sig, constexprs=consts)
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": 4})
        assert len(compiled.asm["cubin"]) > 1000, f"{in_dtype} -> {out_dtype} sm_{arch}: no cubin"


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("has_mask", [True, False])
def test_dcn_backward_kernel_compiles_for_gpu(arch, has_mask):
    """The backward kernel (fp32 atomics into the input gradient) lowers to a cubin: the autocast case
    (fp32 activations, bf16 columns' gradient) and the all-bf16 one; without the input gradient too."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from bevforge.ops.dcn import triton_backward as tb

    kernel = tb._dcn_backward_kernel
    outputs = {"gx_ptr", "goff_ptr", "gmask_ptr"}
    constexpr = {"HAS_MASK", "NEED_X", "KH", "KW", "BLOCK_C", "BLOCK_L"}
    pairs = (("fp32", "bf16"), ("bf16", "bf16"), ("fp16", "fp16"))  # (input dtype, columns' gradient dtype)
    for in_dtype, grad_dtype in pairs if (arch == 90 and has_mask) else pairs[:1]:
        for need_x in (True, False) if arch == 90 else (True,):
            sig = {}
            for name in kernel.arg_names:
                if name in constexpr:
                    sig[name] = "constexpr"
                elif name in outputs:
                    sig[name] = "*fp32"
                elif name.endswith("_ptr"):
                    sig[name] = f"*{grad_dtype if name == 'gcol_ptr' else in_dtype}"
                else:
                    sig[name] = "i32"
            consts = {"HAS_MASK": has_mask, "NEED_X": need_x, "KH": 3, "KW": 3,
                      "BLOCK_C": tb.BLOCK_C, "BLOCK_L": tb.BLOCK_L}  # fmt: skip
            src = ASTSource(fn=kernel, signature=sig, constexprs=consts)
            compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": 4})
            label = f"{in_dtype}/{grad_dtype} need_x={need_x} sm_{arch}"
            assert len(compiled.asm["cubin"]) > 1000, f"{label}: no cubin"
            if need_x:
                assert "atom" in compiled.asm["ptx"] or "red." in compiled.asm["ptx"], f"{label}: no atomics"
