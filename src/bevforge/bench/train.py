"""`bevforge bench train CONFIG`: training throughput of a recipe with its real data loader.

Warm-up iterations (not timed), then ``--iters`` timed iterations of the trainer's own step
(``bevforge.train.step.Stepper``): samples/s, step time, the share of time spent waiting for data and
peak GPU memory. A row (device, commit, command, numbers) is appended to
``benchmarks/results/train.md``.
"""

from __future__ import annotations

import argparse
import datetime
import math
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from bevforge.config import Config

RESULTS = Path("benchmarks/results/train.md")
HEADER = (
    "| date (UTC) | device | commit | command | amp | global batch | samples/s | step ms | data share | "
    "peak mem GiB |\n|---|---|---|---|---|---|---|---|---|---|\n"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="recipe name or path")
    p.add_argument("--set", dest="overrides", nargs="*", action="extend", default=[], metavar="KEY=VALUE")
    p.add_argument("--amp", choices=("bf16", "fp16", "off", "auto"), default=None)
    p.add_argument("--grad-ckpt", action="store_true")
    p.add_argument("--warmup", type=int, default=5, help="untimed iterations first")
    p.add_argument("--iters", type=int, default=20, help="timed iterations")
    p.add_argument("--out", default=str(RESULTS), help="markdown file the result row is appended to")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


def git_commit() -> str:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10)  # fmt: skip
        return (
            sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
            if sha.returncode == 0
            else "unknown"
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def benchmark(
    cfg: Config,
    *,
    warmup: int,
    iters: int,
    model: nn.Module | None = None,
    criterion: nn.Module | None = None,
    loader: DataLoader | None = None,
) -> dict[str, Any]:
    """Time ``iters`` training iterations after ``warmup``; returns the numbers."""
    from bevforge.train.distributed import init_distributed
    from bevforge.train.optim import build_optimizer, build_scheduler
    from bevforge.train.setup import build_parts, seed_everything, unwrap, wrap_model
    from bevforge.train.step import Stepper, resolve_amp

    info = init_distributed()
    seed_everything(cfg.train.seed + info.rank, cfg.train.deterministic)
    device, amp = info.device, resolve_amp(cfg.train.amp, info.device)
    model, criterion, loader = build_parts(cfg, info, model, criterion, loader)
    model = wrap_model(model, cfg, info, lambda m: print(f"warning: {m}"))
    optimizer = build_optimizer(unwrap(model), cfg.train, device, cfg.train.lr)
    scheduler = build_scheduler(optimizer, cfg.train, warmup + iters)
    stepper = Stepper(model, criterion.to(device), optimizer, scheduler, device=device, amp=amp,
                      grad_clip=cfg.train.grad_clip, accum_steps=1, max_nan_steps=0)  # fmt: skip
    model.train()

    def batches():
        while True:
            yield from loader

    it = batches()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        stepper.forward_backward(next(it).to(device))
        stepper.optimizer_step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    data_s, samples = 0.0, 0
    t0 = time.perf_counter()
    for _ in range(iters):
        t_data = time.perf_counter()
        batch = next(it)
        data_s += time.perf_counter() - t_data
        samples += batch.batch_size
        stepper.forward_backward(batch.to(device))
        stepper.optimizer_step()
    sync()
    total = time.perf_counter() - t0
    return {
        "device": device_name(device),
        "amp": amp,
        "global_batch": (loader.batch_size or cfg.data.batch_size) * info.world_size,
        "samples_per_s": samples * info.world_size / total,
        "step_ms": 1000.0 * total / max(iters, 1),
        "data_share": data_s / total if total > 0 else math.nan,
        "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "is_main": info.is_main,
    }


def append_result(path: str | Path, res: dict[str, Any], command: str, commit: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mem = f"{res['peak_mem_gib']:.2f}" if res.get("peak_mem_gib") is not None else "-"
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")
    row = (
        f"| {now} | {res['device']} | {commit} | `{command}` | {res['amp']} | {res['global_batch']} | "
        f"{res['samples_per_s']:.2f} | {res['step_ms']:.1f} | {100 * res['data_share']:.0f}% | {mem} |\n"
    )
    with open(path, "a", encoding="utf-8") as f:
        if f.tell() == 0:
            f.write("# Training throughput (`bevforge bench train`)\n\n" + HEADER)
        f.write(row)
    return path


def run(args: argparse.Namespace) -> int:
    from bevforge.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.amp is not None:
        cfg.train.amp = args.amp
    if args.grad_ckpt:
        cfg.train.grad_ckpt = True
    res = benchmark(cfg, warmup=args.warmup, iters=args.iters)
    if not res["is_main"]:
        return 0
    print(
        f"{res['device']}: {res['samples_per_s']:.2f} samples/s, {res['step_ms']:.1f} ms/step, "
        f"data {100 * res['data_share']:.0f}% of the time, peak mem "
        + (f"{res['peak_mem_gib']:.2f} GiB" if res["peak_mem_gib"] is not None else "n/a (CPU)")
    )
    command = "bevforge bench train " + shlex.join(sys.argv[3:] if len(sys.argv) > 3 else [args.config])
    print(f"appended to {append_result(args.out, res, command, git_commit())}")
    return 0
