"""Time one DCNv2 layer: torchvision vs sampled (grid_sample columns) vs the Triton columns kernel with the
sampled backward vs both Triton kernels (vs, for NCHW inputs, both through the pixel-major columns:
``triton-pm``), forward + backward and forward alone (inference): ``python -m bevforge.ops.dcn.bench``.

Defaults: an R101 stage-3 DCN of BEVFormer-base (256 -> 256 channels, 3x3, stride 1, the 58 x 100
stride-16 map of a 928 x 1600 image, 6 cameras). Prints ms per forward+backward and per forward, the ratios
against torchvision, plus the largest output difference to torchvision (same weights, random offsets and
masks). The sampled variants differ only in where the columns and the backward come from
(``BEVFORGE_KERNELS=reference``; ``triton`` with ``sampled.BACKWARD_KERNEL`` off; ``triton``, the default
``auto`` path on CUDA); the Triton ones run only on CUDA.

``--channels-last``: the input, offsets, mask and weight channels-last (``train.channels_last``), where
the Triton variants take the pixel-major columns and write the output channels-last.

``--out FILE`` appends the printed table to a results file (``benchmarks/results/kernel.md``: device,
commit, command). ``--sweep`` then times the two Triton kernels at other launch constants (``BLOCK_C``
channels x ``BLOCK_L`` output pixels per program, warps; :data:`SWEEP` per column layout, the default
first) and checks each against the default's output and input gradient: what to set as the defaults
(``LAUNCH`` in ``triton_columns.py`` / ``triton_backward.py``) on a new GPU.
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext

import torch
import torchvision

from bevforge.ops.dcn import sampled
from bevforge.ops.dcn.sampled import deform_conv2d_sampled
from bevforge.ops.dispatch import interpreting, kernels

_AMP = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


#: variant -> (function, BEVFORGE_KERNELS while it runs, Triton backward kernel on, NCHW input through the
#: pixel-major kernels: ``sampled.NCHW_PIXEL_MAJOR``; ``triton-pm`` is timed for NCHW inputs only, as
#: channels-last inputs take that path anyway)
IMPLS = {
    "torchvision": (torchvision.ops.deform_conv2d, None, True, False),
    "sampled-grid": (deform_conv2d_sampled, "reference", True, False),
    "triton-fwd": (deform_conv2d_sampled, "triton", False, False),
    "triton-fwd+bwd": (deform_conv2d_sampled, "triton", True, False),
    "triton-pm": (deform_conv2d_sampled, "triton", True, True),
}


def time_impl(
    impl: str,
    inputs: tuple[torch.Tensor, ...],
    amp: str,
    iters: int,
    warmup: int,
    backward: bool = True,
) -> tuple[float, torch.Tensor]:
    """Mean ms of forward (+ backward) over ``iters`` runs (after ``warmup``) and the last output."""
    x, offset, mask, weight = inputs
    fn, choice, backward_kernel, nchw_pixel_major = IMPLS[impl]
    device = x.device
    ctx = torch.autocast(device.type, dtype=_AMP[amp]) if _AMP[amp] else nullcontext()
    out = x
    elapsed = 0.0
    saved = sampled.BACKWARD_KERNEL, sampled.NCHW_PIXEL_MAJOR
    sampled.BACKWARD_KERNEL, sampled.NCHW_PIXEL_MAJOR = backward_kernel, nchw_pixel_major
    try:
        with kernels(choice):
            for i in range(warmup + iters):
                for t in inputs:
                    t.grad = None
                _sync(device)
                start = time.perf_counter()
                with ctx, torch.set_grad_enabled(backward):
                    out = fn(x, offset, weight, None, stride=1, padding=1, dilation=1, mask=mask)
                if backward:
                    out.float().square().mean().backward()
                _sync(device)
                if i >= warmup:
                    elapsed += time.perf_counter() - start
    finally:
        sampled.BACKWARD_KERNEL, sampled.NCHW_PIXEL_MAJOR = saved
    return 1000.0 * elapsed / max(iters, 1), out.detach().float()


def time_offset_conv(x: torch.Tensor, amp: str, iters: int, warmup: int, emit=print) -> None:
    """The DCN's offset/mask predictor is a 3x3 conv to 27 channels (2 x 9 offsets + 9 masks), a count
    tensor cores do not tile (multiples of 8): ``emit`` its forward + backward time against the same conv
    to 32 channels (what zero-padding its weight would run), in ``x``'s layout."""
    device, C = x.device, x.shape[1]
    ctx = torch.autocast(device.type, dtype=_AMP[amp]) if _AMP[amp] else nullcontext()
    xi = x.detach().requires_grad_()
    times = {}
    for channels in (27, 32):
        conv = torch.nn.Conv2d(C, channels, 3, padding=1).to(device)
        if sampled.is_channels_last(x):
            conv = conv.to(memory_format=torch.channels_last)
        elapsed = 0.0
        for i in range(warmup + iters):
            _sync(device)
            start = time.perf_counter()
            with ctx:
                out = conv(xi)
            out.float().square().mean().backward()
            _sync(device)
            if i >= warmup:
                elapsed += time.perf_counter() - start
        times[channels] = 1000.0 * elapsed / max(iters, 1)
    emit(f"  offset conv 3x3 {C} -> 27 channels (forward + backward): {times[27]:.2f} ms; -> 32: "
         f"{times[32]:.2f} ms ({times[27] / times[32]:.2f}x)")  # fmt: skip


#: column layout (pixel-major?) -> the (BLOCK_C, BLOCK_L, num_warps) launch constants ``--sweep`` tries
#: (the kernels' ``LAUNCH`` default first): channel-major tiles run along pixels, pixel-major along channels
SWEEP = {
    False: ((16, 64, 4), (8, 128, 4), (16, 128, 4), (32, 64, 4), (16, 128, 8), (32, 128, 8), (8, 256, 8)),
    True: ((64, 16, 4), (32, 32, 4), (64, 32, 4), (128, 16, 4), (128, 32, 8), (256, 8, 8), (32, 64, 4)),
}


def sweep(inputs: tuple[torch.Tensor, ...], amp: str, iters: int, warmup: int, emit=print) -> None:
    """Time the columns kernel (forward) and the backward kernel (forward + backward) at each of
    :data:`SWEEP` of the inputs' column layout; ``emit`` ms, the speed-up on the default and the largest
    difference to its results."""
    from bevforge.ops.dcn import triton_backward, triton_columns

    x = inputs[0]
    pixel_major = sampled.is_channels_last(x)
    for label, module, impl, backward in (
        ("columns kernel, forward", triton_columns, "triton-fwd", False),
        ("backward kernel, forward + backward", triton_backward, "triton-fwd+bwd", True),
    ):
        default = module.LAUNCH[pixel_major]
        layout = "pixel-major" if pixel_major else "channel-major"
        emit(f"  sweep: {label}, {layout} columns (BLOCK_C, BLOCK_L, warps)")
        first_ms, first = None, None
        try:
            for config in SWEEP[pixel_major]:
                module.LAUNCH[pixel_major] = config
                ms, out = time_impl(impl, inputs, amp, iters, warmup, backward)
                result = out if not backward else x.grad.detach().float()  # the input gradient
                first_ms, first = first_ms or ms, first if first is not None else result
                diff = (result - first).abs().max().item()
                emit(f"    {str(config):16s} {ms:9.2f} ms   ({first_ms / ms:.2f}x)   max |diff| {diff:.3g}")
        finally:
            module.LAUNCH[pixel_major] = default


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=6)
    parser.add_argument("--channels", type=int, default=256, help="input = output channels")
    parser.add_argument("--hw", type=int, nargs=2, default=(58, 100), metavar=("H", "W"))
    parser.add_argument("--amp", choices=sorted(_AMP), default="bf16" if torch.cuda.is_available() else "off")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--channels-last", action="store_true", help="inputs and weight channels-last")
    parser.add_argument("--sweep", action="store_true", help="also time the Triton kernels' launch constants")
    parser.add_argument("--out", default="", help="append the table to this results file (markdown)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    B, C, (H, W) = args.batch, args.channels, args.hw
    x = torch.randn(B, C, H, W, generator=gen)
    offset = torch.randn(B, 18, H, W, generator=gen) * 2.0
    mask = torch.rand(B, 9, H, W, generator=gen)
    weight = torch.randn(C, C, 3, 3, generator=gen) * (C * 9) ** -0.5
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    inputs = tuple(t.to(device, memory_format=fmt).requires_grad_() for t in (x, offset, mask, weight))
    triton_ok = device.type == "cuda" or interpreting()  # the interpreter: a CPU check of this script
    impls = [i for i in IMPLS if not i.startswith("triton") or triton_ok]
    impls = [i for i in impls if i != "triton-pm" or not args.channels_last]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    layout = "channels-last" if args.channels_last else "NCHW"
    lines: list[str] = []

    def emit(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    emit(f"DCNv2 [{B}, {C}, {H}, {W}] 3x3 {layout}, amp {args.amp}, {name}")
    for backward in (True, False):
        results = {i: time_impl(i, inputs, args.amp, args.iters, args.warmup, backward) for i in impls}
        ms_tv, out_tv = results["torchvision"]
        emit(f"  {'forward + backward' if backward else 'forward (no grad)'}")
        for impl, (ms, out) in results.items():
            diff = (out - out_tv).abs().max().item()
            emit(f"    {impl:16s} {ms:9.2f} ms   ({ms_tv / ms:.2f}x)   max |out - torchvision| {diff:.3g}")
    emit(f"  (max |out| {out_tv.abs().max().item():.3g})")
    time_offset_conv(inputs[0], args.amp, args.iters, args.warmup, emit)
    if args.sweep and triton_ok:
        sweep(inputs, args.amp, args.iters, args.warmup, emit)
    if args.out:
        from bevforge.bench.results import append_result

        body = "```\n" + "\n".join(lines) + f"\n```\n\nmean of {args.iters} runs after {args.warmup} warm-up"
        print(f"appended to {append_result(args.out, f'DCNv2 op, {layout}', str(device), body)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
