"""The image finishing kernel compiles ahead of time for sm_80 / sm_90 (Triton -> PTX -> cubin with the
wheel's ptxas), without a GPU: the interpreter cases check the arithmetic, this checks the GPU lowering."""

from __future__ import annotations

import pytest

triton = pytest.importorskip("triton")

_CONSTEXPR = {"HAS_PHOTO", "HAS_KEEP", "BGR", "BLOCK"}
_POINTERS = {"img_ptr": "*u8", "params_ptr": "*fp32", "keep_ptr": "*u8", "out_ptr": "*fp32"}


@pytest.mark.parametrize("arch", [80, 90])
def test_finish_images_kernel_compiles_for_gpu(arch):
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from bevforge.ops.images import triton_finish as tf

    kernel = tf._finish_kernel
    variants = [(True, True, False), (False, False, True)] if arch == 90 else [(True, False, False)]
    for has_photo, has_keep, bgr in variants:
        sig = {}
        for name in kernel.arg_names:
            if name in _CONSTEXPR:
                sig[name] = "constexpr"
            elif name in _POINTERS:
                sig[name] = _POINTERS[name]
            elif name.startswith(("mean", "std")):
                sig[name] = "fp32"
            else:
                sig[name] = "i32"
        consts = {"HAS_PHOTO": has_photo, "HAS_KEEP": has_keep, "BGR": bgr, "BLOCK": tf.BLOCK}
        src = ASTSource(fn=kernel, signature=sig, constexprs=consts)
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": 4})
        assert len(compiled.asm["cubin"]) > 1000, f"photo={has_photo} keep={has_keep} bgr={bgr} sm_{arch}"
