"""The DCNv2 columns and backward kernels compile ahead of time for sm_80 / sm_90 (Triton -> PTX -> cubin
with the wheel's ptxas), without a GPU: the interpreter cases check the arithmetic, this the GPU lowering."""

from __future__ import annotations

import pytest

triton = pytest.importorskip("triton")


def _compile(kernel, arch: int, pointer_dtypes: dict[str, str], default_dtype: str, consts: dict):
    """The kernel for ``sm_<arch>``: pointers ``*<dtype>`` (``pointer_dtypes`` by name, else
    ``default_dtype``), ``consts`` as constexprs, every other argument i32."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig = {}
    for name in kernel.arg_names:
        if name in consts:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name] = f"*{pointer_dtypes.get(name, default_dtype)}"
        else:
            sig[name] = "i32"
    src = ASTSource(fn=kernel, signature=sig, constexprs=consts)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": 4})


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("has_mask", [True, False])
def test_dcn_columns_kernel_compiles_for_gpu(arch, has_mask):
    from bevforge.ops.dcn import triton_columns as tc

    # (input dtype, columns dtype): bf16 activations -> bf16 GEMM, fp32 -> bf16 (autocast), fp32 -> fp32;
    # every pair once (sm_90 with the mask), bf16 for the other variants (~3 s per compile)
    pairs = (("bf16", "bf16"), ("fp32", "bf16"), ("fp32", "fp32"), ("fp16", "fp16"))
    consts = {"HAS_MASK": has_mask, "KH": 3, "KW": 3, "BLOCK_C": tc.BLOCK_C, "BLOCK_L": tc.BLOCK_L}
    for in_dtype, out_dtype in pairs if (arch == 90 and has_mask) else pairs[:1]:
        compiled = _compile(tc._dcn_columns_kernel, arch, {"out_ptr": out_dtype}, in_dtype, consts)
        assert len(compiled.asm["cubin"]) > 1000, f"{in_dtype} -> {out_dtype} sm_{arch}: no cubin"


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("has_mask", [True, False])
def test_dcn_backward_kernel_compiles_for_gpu(arch, has_mask):
    """The backward kernel (fp32 atomics into the input gradient) lowers to a cubin: the autocast case
    (fp32 activations, bf16 columns' gradient) and the all-bf16 one; without the input gradient too."""
    from bevforge.ops.dcn import triton_backward as tb

    pairs = (("fp32", "bf16"), ("bf16", "bf16"), ("fp16", "fp16"))  # (input dtype, columns' gradient dtype)
    for in_dtype, grad_dtype in pairs if (arch == 90 and has_mask) else pairs[:1]:
        for need_x in (True, False) if arch == 90 else (True,):
            dtypes = {"gcol_ptr": grad_dtype, "gx_ptr": "fp32", "goff_ptr": "fp32", "gmask_ptr": "fp32"}
            consts = {"HAS_MASK": has_mask, "NEED_X": need_x, "KH": 3, "KW": 3,
                      "BLOCK_C": tb.BLOCK_C, "BLOCK_L": tb.BLOCK_L}  # fmt: skip
            compiled = _compile(tb._dcn_backward_kernel, arch, dtypes, in_dtype, consts)
            label = f"{in_dtype}/{grad_dtype} need_x={need_x} sm_{arch}"
            assert len(compiled.asm["cubin"]) > 1000, f"{label}: no cubin"
            if need_x:
                assert "atom" in compiled.asm["ptx"] or "red." in compiled.asm["ptx"], f"{label}: no atomics"
