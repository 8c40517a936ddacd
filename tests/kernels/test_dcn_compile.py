"""The DCNv2 columns and backward kernels compile ahead of time for sm_80 / sm_90 (Triton -> PTX -> cubin
with the wheel's ptxas), without a GPU: the interpreter cases check the arithmetic, this the GPU lowering."""

from __future__ import annotations

import collections
import re

import pytest

triton = pytest.importorskip("triton")


def _compile(
    kernel, arch: int, pointer_dtypes: dict[str, str], default_dtype: str, consts: dict, num_warps: int = 4
):
    """The kernel for ``sm_<arch>``: pointers ``*<dtype>`` (``pointer_dtypes`` by name, else
    ``default_dtype``), ``consts`` as constexprs, every other argument i32, with the launch's warps."""
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
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("has_mask", [True, False])
def test_dcn_columns_kernel_compiles_for_gpu(arch, has_mask):
    from bevforge.ops.dcn import triton_columns as tc

    # (input dtype, columns dtype): bf16 activations -> bf16 GEMM, fp32 -> bf16 (autocast), fp32 -> fp32;
    # every pair once (sm_90 with the mask), bf16 for the other variants (~3 s per compile)
    # (and both column layouts' launch blocks: channel-major for NCHW, pixel-major for channels-last)
    pairs = (("bf16", "bf16"), ("fp32", "bf16"), ("fp32", "fp32"), ("fp16", "fp16"))
    for pixel_major, (block_c, block_l, warps) in tc.LAUNCH.items():
        consts = {"HAS_MASK": has_mask, "KH": 3, "KW": 3, "BLOCK_C": block_c, "BLOCK_L": block_l}
        for in_dtype, out_dtype in pairs if (arch == 90 and has_mask and not pixel_major) else pairs[:1]:
            compiled = _compile(tc._dcn_columns_kernel, arch, {"out_ptr": out_dtype}, in_dtype, consts, warps)
            label = f"{in_dtype} -> {out_dtype} sm_{arch} pixel_major={pixel_major}"
            assert len(compiled.asm["cubin"]) > 1000, f"{label}: no cubin"


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("has_mask", [True, False])
def test_dcn_backward_kernel_compiles_for_gpu(arch, has_mask):
    """The backward kernel (fp32 atomics into the input gradient) lowers to a cubin: the autocast case
    (fp32 activations, bf16 columns' gradient) and the all-bf16 one; without the input gradient too."""
    from bevforge.ops.dcn import triton_backward as tb

    pairs = (("fp32", "bf16"), ("bf16", "bf16"), ("fp16", "fp16"))  # (input dtype, columns' gradient dtype)
    variants = [(p, need_x) for p in tb.LAUNCH for need_x in ((True, False) if arch == 90 else (True,))]
    for pixel_major, need_x in variants:
        block_c, block_l, warps = tb.LAUNCH[pixel_major]
        for in_dtype, grad_dtype in pairs if (arch == 90 and has_mask and not pixel_major) else pairs[:1]:
            dtypes = {"gcol_ptr": grad_dtype, "gx_ptr": "fp32", "goff_ptr": "fp32", "gmask_ptr": "fp32"}
            consts = {"HAS_MASK": has_mask, "NEED_X": need_x, "KH": 3, "KW": 3,
                      "BLOCK_C": block_c, "BLOCK_L": block_l}  # fmt: skip
            compiled = _compile(tb._dcn_backward_kernel, arch, dtypes, in_dtype, consts, warps)
            label = f"{in_dtype}/{grad_dtype} need_x={need_x} sm_{arch} pixel_major={pixel_major}"
            assert len(compiled.asm["cubin"]) > 1000, f"{label}: no cubin"
            if need_x:
                assert "atom" in compiled.asm["ptx"] or "red." in compiled.asm["ptx"], f"{label}: no atomics"


def _memory_ops(
    kernel, values: dict, consts: dict, pointer_dtypes: dict[str, str], num_warps: int
) -> collections.Counter:
    """PTX global memory instructions of ``kernel`` for sm_90, specialised as a launch on tensors with these
    integer arguments (``values``) would be: an argument equal to 1 a constexpr, a multiple of 16 and every
    pointer marked divisible by 16 (Triton's launcher does both)."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    sig, constexprs, attrs = {}, dict(consts), {}
    for i, name in enumerate(kernel.arg_names):
        if name in consts:
            sig[name] = "constexpr"
        elif name.endswith("_ptr"):
            sig[name], attrs[(i,)] = f"*{pointer_dtypes.get(name, 'bf16')}", [["tt.divisibility", 16]]
        elif values[name] == 1:
            sig[name], constexprs[name] = "constexpr", 1
        else:
            sig[name] = "i32"
            if values[name] % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn=kernel, signature=sig, constexprs=constexprs, attrs=attrs)
    ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps}).asm["ptx"]
    return collections.Counter(re.findall(r"\b(?:ld|st|atom|red)\.global[\w.]*", ptx))


def test_pixel_major_kernels_use_vector_memory_ops():
    """On channels-last bf16 tensors (an R101 stage-3 DCN) the pixel-major columns and backward kernels
    move each corner's channels as 16-byte vectors (loads, stores and the input gradient's atomics), where
    the channel-major NCHW kernels gather and store one element per instruction: the reason for the
    channels-last path (``ops/dcn/sampled.py``)."""
    from bevforge.ops.dcn import triton_backward as tb
    from bevforge.ops.dcn import triton_columns as tc

    C, H, W, K = 256, 58, 100, 9
    L = H * W
    values = dict(H=H, W=W, Wo=W, L=L, Cg=C, G=1, stride_h=1, stride_w=1, pad_h=1, pad_w=1, dil_h=1,
                  dil_w=1)  # fmt: skip
    for prefix, channels in (("sx", C), ("so", 2 * K), ("sm", K), ("sxg", C)):  # channels-last strides
        names = ("b", "c", "h", "w") if prefix in ("sx", "sxg") else ("b", "c", "l_h", "l_w")
        values.update(zip((prefix + n for n in names), (channels * L, 1, W * channels, channels)))
    cols = (L * K * C, 1, C, K * C)  # pixel-major [B, L, K*C]: image, channel, tap, pixel
    values.update(zip(("scb", "scc", "sck", "scl"), cols), **dict(zip(("sgb", "sgc", "sgk", "sgl"), cols)))
    block_c, block_l, warps = tc.LAUNCH[True]
    consts = {"HAS_MASK": True, "KH": 3, "KW": 3, "BLOCK_C": block_c, "BLOCK_L": block_l}
    columns = _memory_ops(tc._dcn_columns_kernel, values, consts, {}, warps)
    assert columns["ld.global.v4.b32"] >= 4 * K and columns["st.global.v4.b32"] >= K, columns
    block_c, block_l, warps = tb.LAUNCH[True]
    consts = {"HAS_MASK": True, "NEED_X": True, "KH": 3, "KW": 3, "BLOCK_C": block_c, "BLOCK_L": block_l}
    f32 = {"gx_ptr": "fp32", "goff_ptr": "fp32", "gmask_ptr": "fp32"}
    backward = _memory_ops(tb._dcn_backward_kernel, values, consts, f32, warps)
    atomics = {op: n for op, n in backward.items() if op.startswith(("atom", "red"))}
    assert atomics and all(".v4." in op and "relaxed" in op for op in atomics), backward
    assert backward["ld.global.v4.b32"] >= 5, backward  # the columns' gradient and the four corners
