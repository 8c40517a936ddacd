"""Checks of the Triton DCNv2 columns and backward kernels, shared by two runners (as msda's):
``test_dcn_kernels.py`` runs them in-process on CUDA and, on CPU, runs this file as a script with
``TRITON_INTERPRET=1``.

Oracle: the sampled path's own columns (fp32 input copy -> ``grid_sample`` -> mask product) and, end to
end, ``torchvision.ops.deform_conv2d``. Tolerances: fp32 columns 1e-5 (the kernel computes the sample
positions in pixels, the oracle through a [-1, 1] grid: fp32 rounding apart); bf16/fp16 output columns
vs the fp32 oracle rounded to the same dtype: one rounding step (2e-2 / 2e-3 relative).
Backward kernel: autograd through the oracle's fp32 columns (input, offset and mask gradients); fp32 1e-4
(sums over channels in another order, atomics), bf16/fp16 inputs vs the fp32 oracle on the same rounded
values 1e-3 (the kernel accumulates in fp32; only the inputs are rounded).

Shape letters: B images, C channels, H/W input, Ho/Wo output, K taps, G offset groups.
"""

from __future__ import annotations

import sys

import torch
import torchvision
from kernel_harness import run_cases

from bevforge.ops.dcn import sampled as dcn
from bevforge.ops.dispatch import kernels

TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def make_inputs(device, B=2, C=6, H=7, W=9, kernel=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1),
                G=1, spread=3.0, dtype=torch.float32, seed=0):  # fmt: skip
    """(x, offset, mask, geometry); offsets ~ N(0, spread) px so many taps fall outside the image."""
    g = torch.Generator().manual_seed(seed)
    kh, kw = kernel
    Ho = (H + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    Wo = (W + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    x = torch.randn(B, C, H, W, generator=g)
    offset = torch.randn(B, 2 * G * kh * kw, Ho, Wo, generator=g) * spread
    mask = torch.rand(B, G * kh * kw, Ho, Wo, generator=g)
    geo = dcn._Geometry(tuple(kernel), tuple(stride), tuple(padding), tuple(dilation))
    return x.to(device, dtype), offset.to(device, dtype), mask.to(device, dtype), geo


def oracle_columns(x, offset, mask, geo, out_dtype=torch.float32):
    """The sampled path's columns ``[B, C*K, L]`` in fp32 (then cast to ``out_dtype``)."""
    K = geo.kernel[0] * geo.kernel[1]
    G = offset.shape[1] // (2 * K)
    xs = dcn._sampling_input(x.float())
    sampled = dcn._sample(xs, dcn._grid(offset.float(), geo, xs.shape[-2], xs.shape[-1], xs.dtype), G)
    m = None if mask is None else mask.float()
    return dcn._columns(sampled, m, x.shape[0], G, K, tuple(offset.shape[-2:]), torch.float32).to(out_dtype)


def kernel_columns(x, offset, mask, geo, out_dtype=torch.float32, pixel_major=False):
    from bevforge.ops.dcn.triton_columns import dcn_columns_op

    return dcn_columns_op(x, offset, mask, *[list(v) for v in geo], out_dtype, pixel_major)


def oracle_backward(grad_cols, x, offset, mask, geo):
    """Autograd through the sampled path's fp32 columns: ``(grad_x, grad_offset, grad_mask or None)``."""
    K = geo.kernel[0] * geo.kernel[1]
    B, C = x.shape[:2]
    G = offset.shape[1] // (2 * K)
    Ho, Wo = offset.shape[-2:]
    leaves = [t.detach().float().requires_grad_() for t in (x, offset)]
    m = None if mask is None else mask.detach().float().requires_grad_()
    xs = dcn._sampling_input(leaves[0])
    grid = dcn._grid(leaves[1], geo, xs.shape[-2], xs.shape[-1], xs.dtype)
    cols = dcn._sample(xs, grid, G).view(B, G, C // G, K, Ho, Wo)  # [B, G, C/G, K, Ho, Wo]
    if m is not None:
        cols = cols * m.reshape(B, G, 1, K, Ho, Wo)
    grads = torch.autograd.grad(cols.reshape(B, C * K, Ho * Wo), leaves + ([m] if m is not None else []),
                                grad_cols.float())  # fmt: skip
    return grads[0], grads[1], grads[2] if m is not None else None


def kernel_backward(grad_cols, x, offset, mask, geo, need_x=True, pixel_major=False):
    from bevforge.ops.dcn.triton_backward import dcn_backward_op

    return dcn_backward_op(grad_cols, x, offset, mask, *[list(v) for v in geo], need_x, pixel_major)


def _check_backward(grad_cols, x, offset, mask, geo, tol, label):
    gx, goff, gmask = kernel_backward(grad_cols, x, offset, mask, geo)
    want_x, want_off, want_mask = oracle_backward(grad_cols, x, offset, mask, geo)
    assert gx.dtype == goff.dtype == torch.float32, (gx.dtype, goff.dtype)
    _close(gx, want_x, tol, f"{label} grad x")
    _close(goff, want_off, tol, f"{label} grad offset")
    if mask is None:
        assert gmask.numel() == 0, gmask.shape
    else:
        _close(gmask, want_mask, tol, f"{label} grad mask")


def _grad_cols(x, offset, geo, dtype=torch.float32, seed=7):
    K = geo.kernel[0] * geo.kernel[1]
    shape = (x.shape[0], x.shape[1] * K, offset.shape[-2] * offset.shape[-1])  # [B, C*K, L]
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(x.device, dtype)


def check_backward_geometries(device: str) -> None:
    """The backward kernel's input/offset/mask gradients vs autograd through the oracle, every geometry
    of ``check_geometries``, with and without the mask."""
    for i, kw in enumerate(_GEOMETRIES):
        x, offset, mask, geo = make_inputs(device, seed=i, **kw)
        grad_cols = _grad_cols(x, offset, geo, seed=i)
        for m in (mask, None):
            _check_backward(grad_cols, x, offset, m, geo, 1e-4, f"{kw} mask={m is not None}")


def check_backward_low_precision_and_layouts(device: str) -> None:
    """bf16/fp16 inputs and columns' gradient (fp32 accumulation), channels-last inputs, need_x=False."""
    for dtype in (torch.bfloat16, torch.float16):
        x, offset, mask, geo = make_inputs(device, dtype=dtype)
        # fractions in [0.25, 0.75]: rounded to bf16 a random offset often lands on an integer, where the
        # offset gradient has a kink and the oracle's grid round trip may take the other side
        frac = torch.rand(offset.shape, generator=torch.Generator().manual_seed(3)).to(device) * 0.5 + 0.25
        offset = (offset.float().floor() + frac).to(dtype)
        _check_backward(_grad_cols(x, offset, geo, dtype), x, offset, mask, geo, 1e-3, str(dtype))
    x, offset, mask, geo = make_inputs(device, C=5)
    grad_cols = _grad_cols(x, offset, geo)
    want = kernel_backward(grad_cols, x, offset, mask, geo)
    cl = [t.contiguous(memory_format=torch.channels_last) for t in (x, offset, mask)]
    for a, b, name in zip(kernel_backward(grad_cols, *cl, geo), want, ("x", "offset", "mask")):
        _close(a, b, 1e-6, f"channels-last grad {name}")  # atomics: the last bits may differ
    gx, goff, gmask = kernel_backward(grad_cols, x, offset, mask, geo, need_x=False)
    assert gx.numel() == 0, gx.shape
    _close(goff, want[1], 0.0, "need_x=False grad offset")
    _close(gmask, want[2], 0.0, "need_x=False grad mask")


def _close(got, want, tol, label):
    torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol, msg=lambda m: f"{label}: {m}")


def check_columns_fp32(device: str) -> None:
    x, offset, mask, geo = make_inputs(device)
    want = oracle_columns(x, offset, mask, geo)
    _close(kernel_columns(x, offset, mask, geo), want, TOL[torch.float32], "3x3")


_GEOMETRIES = [
    dict(kernel=(3, 3), stride=(2, 2), padding=(1, 1), dilation=(1, 1)),
    dict(kernel=(3, 3), stride=(1, 1), padding=(2, 2), dilation=(2, 2)),
    dict(kernel=(1, 3), stride=(1, 2), padding=(0, 1), dilation=(1, 1)),
    dict(kernel=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1), G=3),
    dict(kernel=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1), H=1, W=5),
    dict(kernel=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1), spread=40.0),  # far outside
    dict(kernel=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1), C=37, H=11, W=13),  # > blocks
]


def check_geometries(device: str) -> None:
    """Strides, dilations, paddings, non-square kernels, offset groups, sides of 1, no mask."""
    for i, kw in enumerate(_GEOMETRIES):
        x, offset, mask, geo = make_inputs(device, seed=i, **kw)
        for m in (mask, None):
            want = oracle_columns(x, offset, m, geo)
            _close(kernel_columns(x, offset, m, geo), want, TOL[torch.float32], f"{kw} mask={m is not None}")


def check_low_precision(device: str) -> None:
    """bf16/fp16 inputs and columns: the fp32 oracle on the same rounded inputs, rounded once."""
    for dtype in (torch.bfloat16, torch.float16):
        x, offset, mask, geo = make_inputs(device, dtype=dtype)
        got = kernel_columns(x, offset, mask, geo, dtype)
        assert got.dtype == dtype, got.dtype
        _close(got, oracle_columns(x, offset, mask, geo, dtype), TOL[dtype], str(dtype))
    # fp32 input, bf16 columns (the autocast case: fp32 activations, bf16 GEMM)
    x, offset, mask, geo = make_inputs(device)
    got = kernel_columns(x, offset, mask, geo, torch.bfloat16)
    _close(got, oracle_columns(x, offset, mask, geo, torch.bfloat16), TOL[torch.bfloat16], "fp32 -> bf16")


def check_strided_layouts(device: str) -> None:
    """Channels-last input and offsets read through their strides: the same columns as contiguous ones."""
    x, offset, mask, geo = make_inputs(device, C=5)
    want = kernel_columns(x, offset, mask, geo)
    cl = [t.contiguous(memory_format=torch.channels_last) for t in (x, offset, mask)]
    torch.testing.assert_close(kernel_columns(*cl, geo), want, atol=0, rtol=0)


def _channels_last(*tensors):
    return [t.contiguous(memory_format=torch.channels_last) for t in tensors]


def check_pixel_major_columns(device: str) -> None:
    """Pixel-major columns ``[B, L, K*C]`` (the channels-last path's layout) are the channel-major oracle's
    values rearranged: every geometry, NCHW and channels-last inputs, with and without the mask, bf16."""
    for i, kw in enumerate(_GEOMETRIES):  # (interpreter time: one input layout per geometry, in turn)
        x, offset, mask, geo = make_inputs(device, seed=i, **kw)
        K, C = geo.kernel[0] * geo.kernel[1], x.shape[1]
        inputs = _channels_last(x, offset) if i % 2 else (x, offset)
        for m in (mask, None) if i < 2 else (mask,):
            want = dcn.to_pixel_major(oracle_columns(x, offset, m, geo), C, K)
            got = kernel_columns(*inputs, m, geo, pixel_major=True)
            _close(got, want, TOL[torch.float32], f"{kw} channels-last={i % 2} mask={m is not None}")
    x, offset, mask, geo = make_inputs(device, dtype=torch.bfloat16)
    got = kernel_columns(*_channels_last(x, offset, mask), geo, torch.bfloat16, pixel_major=True)
    want = dcn.to_pixel_major(oracle_columns(x, offset, mask, geo, torch.bfloat16), x.shape[1], 9)
    _close(got, want, TOL[torch.bfloat16], "bf16 pixel-major")


def check_pixel_major_backward(device: str) -> None:
    """The backward kernel over a pixel-major columns' gradient equals it over the same gradient in the
    channel-major layout (offset groups, blocks of channels); a channels-last input's gradient comes back
    channels-last."""
    for i, kw in enumerate((dict(G=3), dict(C=37, H=11, W=13), dict(stride=(2, 2)))):
        x, offset, mask, geo = make_inputs(device, **kw)
        grad_cols = _grad_cols(x, offset, geo)  # [B, C*K, L]
        pixel_major = dcn.to_pixel_major(grad_cols, x.shape[1], geo.kernel[0] * geo.kernel[1])
        want = kernel_backward(grad_cols, x, offset, mask, geo)
        inputs = _channels_last(x, offset, mask) if i % 2 == 0 else (x, offset, mask)
        got = kernel_backward(pixel_major, *inputs, geo, pixel_major=True)
        for a, b, name in zip(got, want, ("x", "offset", "mask")):
            _close(a, b, 1e-5, f"{kw} pixel-major grad {name}")  # atomics: the last bits may differ
        assert dcn.is_channels_last(got[0]) == (i % 2 == 0), got[0].stride()


def check_channels_last_end_to_end(device: str) -> None:
    """``deform_conv2d_sampled`` on channels-last inputs and weight takes the pixel-major path (its output
    channels-last, no copy) and matches torchvision: output and every gradient, the input gradient
    channels-last; the output may be modified in place before backward."""
    x, offset, mask, _ = make_inputs(device, C=5, H=6, W=7)
    gen = torch.Generator().manual_seed(2)
    weight = (torch.randn(4, 5, 3, 3, generator=gen) * 0.3).to(device)
    bias = torch.randn(4, generator=gen).to(device)
    leaves = [t.clone().requires_grad_() for t in (*_channels_last(x, offset, mask, weight), bias)]
    with kernels("triton"):
        got = dcn.deform_conv2d_sampled(leaves[0], leaves[1], leaves[3], leaves[4], padding=1, mask=leaves[2])
        assert dcn.is_channels_last(got), got.stride()
        ref_leaves = [t.clone().requires_grad_() for t in (x, offset, mask, weight, bias)]
        want = torchvision.ops.deform_conv2d(
            ref_leaves[0], ref_leaves[1], ref_leaves[3], ref_leaves[4], padding=1, mask=ref_leaves[2]
        )
        _close(got, want, 1e-4, "channels-last output")
        grad_out = torch.randn_like(want)
        grads = torch.autograd.grad(got.relu_(), leaves, grad_out)  # in place, as the folded blocks do
        ref_grads = torch.autograd.grad(want.relu(), ref_leaves, grad_out)
    for name, a, b in zip(("x", "offset", "mask", "weight", "bias"), grads, ref_grads):
        _close(a, b, 1e-3, f"channels-last grad {name}")
    assert dcn.is_channels_last(grads[0]), grads[0].stride()
    # under bf16 autocast (bf16 columns and GEMMs): the channel-major path's result, to bf16 rounding
    results = []
    for inputs in ((x, offset, mask, weight, bias), (*_channels_last(x, offset, mask, weight), bias)):
        leaves = [t.clone().requires_grad_() for t in inputs]
        with kernels("triton"), torch.autocast(device, dtype=torch.bfloat16):
            out = dcn.deform_conv2d_sampled(
                leaves[0], leaves[1], leaves[3], leaves[4], padding=1, mask=leaves[2]
            )
        assert out.dtype == torch.bfloat16, out.dtype
        results.append([out, *torch.autograd.grad(out.float().square().sum(), leaves)])
    for name, a, b in zip(("output", "x", "offset", "mask", "weight", "bias"), results[1], results[0]):
        atol = 2e-2 * b.float().abs().max().item()
        torch.testing.assert_close(
            a.float(), b.float(), atol=atol, rtol=2e-2, msg=lambda m, name=name: f"bf16 {name}: {m}"
        )


def check_nchw_pixel_major(device: str) -> None:
    """``NCHW_PIXEL_MAJOR``: NCHW inputs through the pixel-major kernels (a channels-last copy of the
    input): the output and the input gradient stay NCHW, the columns are pixel-major, and output and
    every gradient match torchvision."""
    from bevforge.ops.dcn import triton_columns

    x, offset, mask, _ = make_inputs(device, C=5, H=6, W=7)
    gen = torch.Generator().manual_seed(4)
    weight = (torch.randn(4, 5, 3, 3, generator=gen) * 0.3).to(device)
    bias = torch.randn(4, generator=gen).to(device)
    leaves = [t.clone().requires_grad_() for t in (x, offset, mask, weight, bias)]
    ref_leaves = [t.clone().requires_grad_() for t in (x, offset, mask, weight, bias)]
    launches, real = [], triton_columns._dcn_columns_kernel
    saved = dcn.NCHW_PIXEL_MAJOR
    try:
        dcn.NCHW_PIXEL_MAJOR = True
        triton_columns._dcn_columns_kernel = _Counting(real, launches)
        with kernels("triton"):
            got = dcn.deform_conv2d_sampled(
                leaves[0], leaves[1], leaves[3], leaves[4], padding=1, mask=leaves[2]
            )
            grad_out = torch.randn_like(got)
            grads = torch.autograd.grad(got.relu_(), leaves, grad_out)
    finally:
        dcn.NCHW_PIXEL_MAJOR = saved
        triton_columns._dcn_columns_kernel = real
    assert got.is_contiguous() and grads[0].is_contiguous(), (got.stride(), grads[0].stride())
    assert [args[3].shape[-1] for _, args in launches] == [5 * 9] * 2, "pixel-major columns [B, L, K*C]"
    want = torchvision.ops.deform_conv2d(
        ref_leaves[0], ref_leaves[1], ref_leaves[3], ref_leaves[4], padding=1, mask=ref_leaves[2]
    )
    _close(got, want.relu(), 1e-4, "NCHW pixel-major output")
    ref_grads = torch.autograd.grad(want.relu(), ref_leaves, grad_out)
    for name, a, b in zip(("x", "offset", "mask", "weight", "bias"), grads, ref_grads):
        _close(a, b, 1e-3, f"NCHW pixel-major grad {name}")


def check_channels_last_backbone(device: str) -> None:
    """An R50 (caffe, DCN in stages 3-4, frozen BNs folded) in channels-last as ``train.channels_last``
    runs it: every stage's output stays channels-last through the DCN layers (the pixel-major path, no
    layout switch) and outputs and gradients match the NCHW model on the reference path."""
    from bevforge.models.backbone import ModulatedDeformConv2d, ResNetBackbone

    kwargs = dict(depth=50, out_indices=(1, 2, 3), frozen_stages=1, dcn_stages=(False, False, True, True),
                  style="caffe", dcn_impl="sampled")  # fmt: skip
    torch.manual_seed(0)
    nchw = ResNetBackbone(**kwargs).to(device).train()
    with torch.no_grad():  # offsets and masks far from their zero init, so the taps move
        for name, p in nchw.named_parameters():
            if "conv_offset" in name:
                p.normal_(0.0, 0.05)
    cl = ResNetBackbone(**kwargs).to(device).train()
    cl.load_state_dict(nchw.state_dict())
    cl.to(memory_format=torch.channels_last)
    x = torch.randn(1, 3, 32, 64, generator=torch.Generator().manual_seed(1)).to(device)
    dcn_outputs = []
    for m in cl.modules():
        if isinstance(m, ModulatedDeformConv2d):
            m.register_forward_hook(lambda mod, args, out: dcn_outputs.append(dcn.is_channels_last(out)))
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    try:  # fp32 convolutions and GEMMs on CUDA too: 50 layers of TF32 would differ by more than the kernel
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        with kernels("reference"):
            want = nchw(x)
            sum((o**2).sum() for o in want).backward()
        with kernels("triton"):
            got = cl(x.contiguous(memory_format=torch.channels_last))
            assert dcn_outputs == [True] * 9, dcn_outputs  # the 6 + 3 DCN layers of stages 3 and 4
            assert all(dcn.is_channels_last(o) for o in got), [o.stride() for o in got]
            sum((o**2).sum() for o in got).backward()
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32
    for a, b in zip(got, want, strict=True):
        _close(a, b, 1e-4 * b.abs().max().item(), "stage output")
    grads = {n: p.grad for n, p in nchw.named_parameters() if p.grad is not None}
    assert any("conv_offset" in n for n in grads), sorted(grads)
    for name, p in cl.named_parameters():
        if name in grads:
            _close(p.grad, grads[name], 1e-3 * grads[name].abs().max().item(), f"grad {name}")


def check_channels_last_compiles(device: str) -> None:
    """``torch.compile`` (``aot_eager``: dynamo + AOTAutograd, no code generation) traces the pixel-major
    path in one graph, the custom ops opaque; output and every gradient equal eager's."""
    x, offset, mask, _ = make_inputs(device, C=4)
    weight = torch.randn(5, 4, 3, 3, generator=torch.Generator().manual_seed(3)).to(device)

    def fn(x, offset, mask, weight):
        return dcn.deform_conv2d_sampled(x, offset, weight, padding=1, mask=mask)

    results = []
    with kernels("triton"):
        for run in (fn, torch.compile(fn, backend="aot_eager", fullgraph=True)):
            leaves = [t.clone().requires_grad_() for t in _channels_last(x, offset, mask, weight)]
            out = run(*leaves)
            assert dcn.is_channels_last(out), out.stride()
            results.append([out, *torch.autograd.grad(out.square().sum(), leaves)])
        torch._dynamo.reset()
    for name, got, want in zip(("output", "x", "offset", "mask", "weight"), results[1], results[0]):
        _close(got, want, 1e-5, f"compiled {name}")


def check_deform_conv_end_to_end(device: str) -> None:
    """``deform_conv2d_sampled`` (dispatching to the kernel) vs torchvision: output and all gradients."""
    x, offset, mask, _ = make_inputs(device, C=4, G=2)
    gen = torch.Generator().manual_seed(1)
    weight = (torch.randn(6, 2, 3, 3, generator=gen) * 0.3).to(device)  # 2 weight groups
    bias = torch.randn(6, generator=gen).to(device)
    leaves = [t.clone().requires_grad_() for t in (x, offset, mask, weight, bias)]
    got = dcn.deform_conv2d_sampled(leaves[0], leaves[1], leaves[3], leaves[4], padding=1, mask=leaves[2])
    ref_leaves = [t.clone().requires_grad_() for t in (x, offset, mask, weight, bias)]
    want = torchvision.ops.deform_conv2d(
        ref_leaves[0], ref_leaves[1], ref_leaves[3], ref_leaves[4], padding=1, mask=ref_leaves[2]
    )
    _close(got, want, 1e-4, "output")
    grad_out = torch.randn_like(want)
    grads = torch.autograd.grad(got, leaves, grad_out)
    ref_grads = torch.autograd.grad(want, ref_leaves, grad_out)
    for name, a, b in zip(("x", "offset", "mask", "weight", "bias"), grads, ref_grads):
        _close(a, b, 1e-3, f"grad {name}")


def check_dispatch_picks_kernel(device: str) -> None:
    """Under auto the forward columns and the backward come from the kernels (counted launches), under
    reference never; ``BACKWARD_KERNEL = False`` keeps the sampled backward (the bench's comparison)."""
    from bevforge.ops.dcn import triton_backward, triton_columns

    x, offset, mask, geo = make_inputs(device, C=3)
    weight = torch.randn(4, 3, 3, 3, device=device)
    leaves = [t.clone().requires_grad_() for t in (x, offset, mask, weight)]
    fwd, bwd = [], []
    originals = triton_columns._dcn_columns_kernel, triton_backward._dcn_backward_kernel
    saved = dcn.NCHW_PIXEL_MAJOR
    try:
        triton_columns._dcn_columns_kernel = _Counting(originals[0], fwd)
        triton_backward._dcn_backward_kernel = _Counting(originals[1], bwd)
        # (choice, backward kernel on, (columns launches: forward [+ weight grad], backward launches));
        # the sampled backward takes the weight grad's columns from its own samples
        runs = (("auto", True, (2, 1)), ("reference", True, (0, 0)), ("triton", False, (1, 0)))
        # NCHW: channel-major columns, or pixel-major ones with NCHW_PIXEL_MAJOR; channels-last: pixel-major
        for channels_last, nchw_pixel_major in ((False, False), (False, True), (True, False)):
            dcn.NCHW_PIXEL_MAJOR = nchw_pixel_major
            inputs = [t.detach().contiguous(memory_format=torch.channels_last) for t in leaves]
            inputs = [t.requires_grad_() for t in inputs] if channels_last else leaves
            for choice, on, want in runs:
                fwd.clear(), bwd.clear()
                dcn.BACKWARD_KERNEL = on
                with kernels(choice):
                    x_, offset_, mask_, weight_ = inputs
                    dcn.deform_conv2d_sampled(x_, offset_, weight_, padding=1, mask=mask_).sum().backward()
                assert (len(fwd), len(bwd)) == want, (channels_last, choice, on, len(fwd), len(bwd))
                pixel_major = {args[3].shape[-1] == 3 * 9 for _, args in fwd}  # columns [B, L, K*C]?
                layout = channels_last or nchw_pixel_major
                assert pixel_major <= {layout}, (channels_last, nchw_pixel_major, choice, pixel_major)
    finally:
        triton_columns._dcn_columns_kernel, triton_backward._dcn_backward_kernel = originals
        dcn.BACKWARD_KERNEL, dcn.NCHW_PIXEL_MAJOR = True, saved


class _Counting:
    """``kernel[grid](...)`` that records each launch and runs the real kernel."""

    def __init__(self, kernel, calls):
        self.kernel, self.calls = kernel, calls

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.calls.append((grid, args))
            return self.kernel[grid](*args, **kwargs)

        return launch


def check_opcheck(device: str) -> None:
    from bevforge.ops.dcn.triton_backward import dcn_backward_op
    from bevforge.ops.dcn.triton_columns import dcn_columns_op

    x, offset, mask, geo = make_inputs(device, B=1, C=3, H=4, W=5)
    geometry = [list(v) for v in geo]
    grad_cols = _grad_cols(x, offset, geo)
    pixel_major_grad = dcn.to_pixel_major(grad_cols, x.shape[1], 9)
    cl = _channels_last(x, offset)
    for m in (mask, None):
        torch.library.opcheck(dcn_columns_op, (x, offset, m, *geometry, torch.float32))
        torch.library.opcheck(dcn_columns_op, (*cl, m, *geometry, torch.float32, True))
        for need_x in (True, False):
            # atomics: the input gradient's last bits may differ between the opcheck's repeated runs
            for args in ((grad_cols, x, offset, m, *geometry, need_x),
                         (pixel_major_grad, *cl, m, *geometry, need_x, True)):  # fmt: skip
                utils = ("test_schema", "test_faketensor", "test_aot_dispatch_dynamic")
                torch.library.opcheck(dcn_backward_op, args, test_utils=utils)


def check_deterministic_mode_alert(device: str) -> None:
    """Under torch.use_deterministic_algorithms(True) the backward kernel raises (warns with warn_only), as
    PyTorch's own atomics-based backwards do, when it sums the input gradient with atomics; without the
    input gradient (no atomics) it runs silently."""
    import warnings

    x, offset, mask, geo = make_inputs(device, B=1, C=3, H=4, W=5)
    grad_cols = _grad_cols(x, offset, geo)
    try:
        torch.use_deterministic_algorithms(True)
        try:
            kernel_backward(grad_cols, x, offset, mask, geo)
        except RuntimeError as e:
            assert "bevforge::dcn_backward" in str(e) and "BEVFORGE_KERNELS=reference" in str(e), e
        else:
            raise AssertionError("no error under torch.use_deterministic_algorithms(True)")
        kernel_backward(grad_cols, x, offset, mask, geo, need_x=False)
        torch.use_deterministic_algorithms(True, warn_only=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            kernel_backward(grad_cols, x, offset, mask, geo)
        messages = [str(w.message) for w in caught]
        assert any("bevforge::dcn_backward" in m for m in messages), messages
    finally:
        torch.use_deterministic_algorithms(False)


CASES = {
    "columns_fp32": check_columns_fp32,
    "geometries": check_geometries,
    "low_precision": check_low_precision,
    "backward_geometries": check_backward_geometries,
    "backward_low_precision_and_layouts": check_backward_low_precision_and_layouts,
    "strided_layouts": check_strided_layouts,
    "pixel_major_columns": check_pixel_major_columns,
    "pixel_major_backward": check_pixel_major_backward,
    "channels_last_end_to_end": check_channels_last_end_to_end,
    "nchw_pixel_major": check_nchw_pixel_major,
    "channels_last_backbone": check_channels_last_backbone,
    "channels_last_compiles": check_channels_last_compiles,
    "deform_conv_end_to_end": check_deform_conv_end_to_end,
    "dispatch_picks_kernel": check_dispatch_picks_kernel,
    "opcheck": check_opcheck,
    "deterministic_mode_alert": check_deterministic_mode_alert,
}


if __name__ == "__main__":
    sys.exit(run_cases(CASES, sys.argv[1:]))
