"""Where does a recipe's GPU time go? Per-part forward times and the hottest CUDA ops.

    PYTHONPATH=src python3 benchmarks/profile_parts.py configs/bevformer_base.py --amp bf16 [--out FILE]
        [--channels-last] [--set data.batch_size=8 train.history_graph=true train.frame_graph=true]

The speed options given with ``--set`` apply as in training (``apply_speed_options``: the graphs replay in
the profiled step, after two warm-up steps); channels-last only with ``--channels-last``.

1. Inference (eval mode, no grad): forward time of each model part (backbone, neck, encoder, heads) and
   of each attention/FFN module class inside them, from CUDA events in forward pre/post hooks, averaged
   over ``--iters`` frames after a warm-up.
2. One training step of the trainer's own ``Stepper`` on a random batch of the recipe's training shapes
   (``bench train --fake-data``) under ``torch.profiler``: the ``--top`` ops by self CUDA time.

Random weights (no checkpoint needed); runs on CPU too (times are then wall-clock, for a dry run).
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import torch
from torch import nn


class PartTimer:
    """Forward-time accumulator per module name / class via pre/post hooks (CUDA events on GPU)."""

    def __init__(self, model: nn.Module, device: torch.device) -> None:
        self.device = device
        self.spans: list[tuple[str, object, object]] = []
        self.handles = []
        parts = {f"part {n}": m for n, m in model.named_children()}
        watched = ("TemporalSelfAttention", "SpatialCrossAttention", "MSDeformAttn", "FFN",
                   "MultiheadAttention", "ModulatedDeformConv2d", "Bottleneck", "BasicBlock")  # fmt: skip
        for name, mod in model.named_modules():
            cls = type(mod).__name__
            if cls in watched:
                parts[f"{name}"] = mod
        for key, mod in parts.items():
            label = key if key.startswith("part ") else f"class {type(mod).__name__}"
            self.handles.append(mod.register_forward_pre_hook(self._pre(label)))
            self.handles.append(mod.register_forward_hook(self._post(label)))
        self.open: dict[str, list[object]] = collections.defaultdict(list)

    def _now(self) -> object:
        if self.device.type == "cuda":
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            return ev
        return time.perf_counter()

    def _pre(self, label: str):
        def hook(_mod, _inp):
            self.open[label].append(self._now())

        return hook

    def _post(self, label: str):
        def hook(_mod, _inp, _out):
            self.spans.append((label, self.open[label].pop(), self._now()))

        return hook

    def totals_ms(self) -> dict[str, float]:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        out: dict[str, float] = collections.defaultdict(float)
        for label, a, b in self.spans:
            out[label] += a.elapsed_time(b) if self.device.type == "cuda" else 1000.0 * (b - a)  # type: ignore
        return out

    def reset(self) -> None:
        self.spans.clear()

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


#: CUDA runtime / driver calls in which the host can wait for the GPU (a copy to or from pageable memory,
#: a sync), and those that launch work
_WAITS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy",
          "cudaMemcpyAsync")  # fmt: skip
_LAUNCHES = (
    "cudaLaunchKernel",
    "cudaLaunchKernelExC",
    "cuLaunchKernel",
    "cuLaunchKernelEx",
    "cudaGraphLaunch",
)


def host_side_summary(averages, step_ms: float) -> str:
    """Where the profiled step's host time went, from the CUDA runtime rows of the profile: the calls that
    wait for the GPU (syncs, blocking copies: a step that waits there is sync-bound) and the launches
    (count and host time: a step whose host time is mostly launches and the Python between them is
    launch-bound). Empty without CUDA rows."""
    rows = {e.key: e for e in averages if e.key in _WAITS + _LAUNCHES}
    if not rows:
        return ""
    waits = ", ".join(
        f"{k} {rows[k].count} x = {rows[k].cpu_time_total / 1e3:.1f} ms" for k in _WAITS if k in rows
    )
    launches = sum(rows[k].count for k in _LAUNCHES if k in rows)
    launch_ms = sum(rows[k].cpu_time_total for k in _LAUNCHES if k in rows) / 1e3
    return (
        f"step wall under the profiler {step_ms:.1f} ms; host waits on the GPU: {waits or 'none'}; "
        f"launches: {launches} calls, {launch_ms:.1f} ms of host time"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config")
    p.add_argument("--amp", choices=("bf16", "fp16", "off"), default="bf16")
    p.add_argument("--set", dest="overrides", nargs="*", default=[])
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--no-train", action="store_true")
    p.add_argument(
        "--channels-last", action="store_true", help="backbone + neck channels-last (train.channels_last)"
    )
    p.add_argument("--out", default="")
    args = p.parse_args(argv)

    from bevforge.bench.train import FakeLoader
    from bevforge.config import load_config
    from bevforge.data.device_images import finish_images
    from bevforge.models.build import build_model

    cfg = load_config(args.config, ["model.backbone.pretrained=", *args.overrides])
    cfg.train.amp = args.amp
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from bevforge.train.setup import set_tf32

    set_tf32(cfg.train.tf32)  # as the trainer and the benches do
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": torch.float32}[args.amp]
    lines: list[str] = [f"# profile {args.config} amp {args.amp} on {device} "
                        f"({torch.cuda.get_device_name(0) if device.type == 'cuda' else 'cpu'})"
                        + (f", --set {' '.join(args.overrides)}" if args.overrides else "")]  # fmt: skip
    torch.manual_seed(0)
    from bevforge.train.setup import apply_speed_options

    # the speed options of --set (train.history_graph, train.frame_graph, ...); channels-last by the flag only
    cfg.train.channels_last = bool(args.channels_last)
    model = apply_speed_options(build_model(cfg).to(device), cfg.train).eval()
    if args.channels_last:
        lines[0] += ", channels-last backbone + neck"
    batch = finish_images(next(iter(FakeLoader(cfg, num=1))).to(device), cfg.data)  # images_on_device
    # inference: the current frame only (what one FPS frame costs), no temporal state
    t_last = batch.images.shape[1] - 1
    frame = batch.frame(t_last)  # images [B, 1, N, 3, H, W]
    timer = PartTimer(model, device)
    amp_ctx = lambda: torch.autocast(device.type, dtype=dtype, enabled=args.amp != "off")  # noqa: E731
    with torch.no_grad(), amp_ctx():
        for _ in range(2):
            model(frame, None)
        timer.reset()
        t0 = time.perf_counter()
        for _ in range(args.iters):
            model(frame, None)
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall = 1000.0 * (time.perf_counter() - t0) / args.iters
    totals = timer.totals_ms()
    timer.remove()
    lines += ["", f"## inference forward, mean of {args.iters} frames: {wall:.1f} ms wall", "",
              "| part / module class | ms per frame | share |", "|---|---|---|"]  # fmt: skip
    for label, ms in sorted(totals.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {label} | {ms / args.iters:.2f} | {100 * ms / args.iters / wall:.0f}% |")

    if not args.no_train:
        from bevforge.losses.build import build_criterion
        from bevforge.train.optim import build_optimizer, build_scheduler
        from bevforge.train.step import Stepper

        model.train()
        criterion = build_criterion(cfg).to(device)
        opt = build_optimizer(model, cfg.train, device, cfg.train.lr)
        sched = build_scheduler(opt, cfg.train, 100)
        stepper = Stepper(model, criterion, opt, sched, device=device, amp=args.amp,
                          grad_clip=cfg.train.grad_clip, accum_steps=1, max_nan_steps=0)  # fmt: skip
        for _ in range(2):
            stepper.forward_backward(batch)
            stepper.optimizer_step()
        acts = [torch.profiler.ProfilerActivity.CPU]
        if device.type == "cuda":
            acts.append(torch.profiler.ProfilerActivity.CUDA)
            torch.cuda.synchronize()
        with torch.profiler.profile(activities=acts) as prof:
            t0 = time.perf_counter()
            stepper.forward_backward(batch)
            stepper.optimizer_step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            step_ms = 1000.0 * (time.perf_counter() - t0)
        key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
        table = prof.key_averages().table(sort_by=key, row_limit=args.top, max_name_column_width=60)
        lines += ["", "## one training step (queue of the recipe), top ops", "", "```", table, "```"]
        lines += ["", host_side_summary(prof.key_averages(), step_ms)]
        # which tensors: the same step again with input shapes recorded (their overhead kept out of the
        # table above); which lines: benchmarks/op_census.py run on the GPU (its strided-pointwise list)
        with torch.profiler.profile(activities=acts, record_shapes=True) as prof:
            stepper.forward_backward(batch)
            stepper.optimizer_step()
            if device.type == "cuda":
                torch.cuda.synchronize()
        by_shape = prof.key_averages(group_by_input_shape=True).table(
            sort_by=key, row_limit=args.top, max_name_column_width=40, max_shapes_column_width=80
        )
        lines += ["", "## the same, by input shapes", "", "```", by_shape, "```"]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
