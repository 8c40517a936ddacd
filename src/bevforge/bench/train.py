"""`bevforge bench train CONFIG`: training throughput of a recipe with its real data loader.

Warm-up iterations (not timed), then ``--iters`` timed iterations of the trainer's own step
(``bevforge.train.step.Stepper``): samples/s, step time, the share of time spent waiting for data and
peak GPU memory. A section (device, commit, command, numbers; ``bevforge.bench.results``) goes to
``benchmarks/results/train.md``.

``--compile MODE`` and ``--channels-last`` (``train.compile`` / ``train.channels_last``) add variants:
the eager baseline runs first, then channels-last, then the compiled model (with channels-last when both
are given), each on a fresh model with the same seed, one row each with the speed-up over eager.
``--no-baseline`` runs only the last variant. Compilation happens in the warm-up iterations.
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from bevforge.config import Config

RESULTS = Path("benchmarks/results/train.md")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="recipe name or path")
    p.add_argument("--set", dest="overrides", nargs="*", action="extend", default=[], metavar="KEY=VALUE")
    p.add_argument("--amp", choices=("bf16", "fp16", "off", "auto"), default=None)
    p.add_argument("--grad-ckpt", action="store_true", help="train.grad_ckpt: checkpoint encoder + backbone")
    p.add_argument("--warmup", type=int, default=5, help="untimed iterations first")
    p.add_argument("--iters", type=int, default=20, help="timed iterations")
    p.add_argument("--out", default=str(RESULTS), help="markdown file the result row is appended to")
    p.add_argument(
        "--compile",
        default="",
        choices=("", "default", "reduce-overhead", "max-autotune"),
        help="also time the model under torch.compile with this mode (train.compile)",
    )
    p.add_argument("--channels-last", action="store_true", help="also time a channels-last backbone + neck")
    p.add_argument("--no-baseline", action="store_true", help="time only the last variant, not eager")
    p.add_argument(
        "--explain",
        action="store_true",
        help="instead of timing: torch._dynamo.explain graph breaks of the whole model and of each part",
    )
    p.add_argument(
        "--busy-steps",
        type=int,
        default=2,
        help="CUDA: steps after the timed ones under the profiler, for the GPU-busy share (0: skip)",
    )
    p.add_argument(
        "--fake-data",
        action="store_true",
        help="random batches of the recipe's shapes instead of the data loader (no dataset needed; "
        "the data share is then ~0)",
    )


def variants(compile_mode: str, channels_last: bool, baseline: bool = True) -> list[tuple[str, bool, str]]:
    """``(label, train.channels_last, train.compile)`` to time, eager first."""
    out = [("eager", False, "")]
    if channels_last:
        out.append(("channels-last", True, ""))
    if compile_mode:
        label = f"compile {compile_mode}" + (" + channels-last" if channels_last else "")
        out.append((label, channels_last, compile_mode))
    return out if baseline or len(out) == 1 else out[-1:]


class FakeLoader:
    """``num`` random batches of the recipe's training shapes, repeated (``--fake-data``).

    ``B`` = ``data.batch_size``, ``T`` = ``data.queue_length``, ``N`` cameras of a nuScenes-like ring
    (:func:`bevforge.export.rig.rig_lidar2img`), images of evaluation's geometry (``data.input_size``, e.g.
    BEVDet's 256 x 704 resize + crop, or the ``data.img_scale`` resize; padded to ``data.pad_divisor``), 30
    random boxes per sample inside the point-cloud range. Pinned on a CUDA machine, as the real loader's
    batches (``pin_memory``): a pageable copy of a base batch's 0.4 GB of fp32 images is synchronous.
    """

    def __init__(self, cfg: Config, num: int = 4, seed: int = 0) -> None:
        from bevforge.data.transforms import PHOTOMETRIC_IDENTITY, draw_photometric
        from bevforge.export.rig import input_hw, rig_lidar2img
        from bevforge.structures.batch import Batch

        d, m = cfg.data, cfg.model
        b, t, n = d.batch_size, d.queue_length, len(d.cameras)
        h, w = input_hw(cfg)
        lidar2img = rig_lidar2img(cfg)[0]  # [N, 4, 4] lidar -> input pixels
        g = torch.Generator().manual_seed(seed)
        lo, hi = torch.tensor(d.point_cloud_range[:3]), torch.tensor(d.point_cloud_range[3:])
        self.batch_size = b
        self.batches = []
        for i in range(num):
            centres = lo + (hi - lo) * (0.1 + 0.8 * torch.rand(b, 30, 3, generator=g))  # [B, M, 3] metres
            sizes = torch.tensor([4.0, 2.0, 1.6]).expand(b, 30, 3)  # [B, M, 3] l, w, h
            yaw = (torch.rand(b, 30, 1, generator=g) * 2 - 1) * math.pi  # [B, M, 1]
            boxes = torch.cat((centres, sizes, yaw, torch.zeros(b, 30, 2)), dim=-1)  # [B, M, 9]
            can_bus = torch.zeros(b, t, 18)
            can_bus[:, :, 0] = torch.arange(t, dtype=torch.float32)  # 1 m forward per frame
            extra = self._depth_targets(cfg, b, n, (h, w), g)
            if d.images_on_device:  # uint8 images + photometric draws, finished in the timed step
                images = torch.randint(0, 256, (b, t, n, 3, h, w), generator=g, dtype=torch.uint8)
                rng = np.random.default_rng(seed + i)
                identity = np.array(PHOTOMETRIC_IDENTITY, dtype=np.float32)
                draws = [draw_photometric(rng) if d.photometric_aug else identity for _ in range(b * t * n)]
                extra["photometric"] = torch.from_numpy(np.stack(draws)).view(b, t, n, -1)  # [B, T, N, 6]
            else:
                images = torch.randn(b, t, n, 3, h, w, generator=g)  # [B, T, N, 3, H, W]
            self.batches.append(
                Batch(
                    images=images,
                    lidar2img=lidar2img.expand(b, t, n, 4, 4).clone(),
                    can_bus=can_bus,
                    ego2global=torch.eye(4, dtype=torch.float64).expand(b, t, 4, 4).clone(),
                    lidar2ego=torch.eye(4, dtype=torch.float64).expand(b, t, 4, 4).clone(),
                    frame_valid=torch.ones(b, t, dtype=torch.bool),
                    scene_tokens=[[f"fake{i}_{j}"] * t for j in range(b)],
                    sample_tokens=[f"fake{i}_{j}" for j in range(b)],
                    timestamps=torch.zeros(b, t, dtype=torch.int64),
                    img_hw=(h, w),
                    gt_boxes=list(boxes),
                    gt_labels=list(torch.randint(0, len(d.classes), (b, 30), generator=g)),
                    seg_target=torch.zeros(b, len(d.seg_classes), m.bev_h, m.bev_w) if d.with_seg else None,
                    **extra,
                )
            )
        if torch.cuda.is_available():  # as the real loader (pin_memory): async copies, not pageable ones
            self.batches = [batch.pin_memory() for batch in self.batches]

    @staticmethod
    def _depth_targets(cfg: Config, b: int, n: int, image_hw: tuple[int, int], g: torch.Generator) -> dict:
        """``{"depth_gt": [B, N, fH, fW]}`` random lidar depths (metres, ~70 % of the cells without a
        point: 0) when BEVDet trains with depth supervision (``model.bevdet.depth_loss_weight > 0``) and
        ``Batch`` has the field; else ``{}``."""
        from dataclasses import fields

        from bevforge.structures.batch import Batch

        b_cfg = cfg.model.bevdet
        wanted = cfg.model.arch == "bevdet" and float(getattr(b_cfg, "depth_loss_weight", 0.0)) > 0
        if not wanted or "depth_gt" not in {f.name for f in fields(Batch)}:
            return {}
        stride = b_cfg.feat_downsample
        shape = (b, n, image_hw[0] // stride, image_hw[1] // stride)
        lo, hi = float(b_cfg.depth_bins[0]), float(b_cfg.depth_bins[1])
        depth = lo + (hi - lo) * torch.rand(shape, generator=g)  # [B, N, fH, fW] metres
        return {"depth_gt": torch.where(torch.rand(shape, generator=g) < 0.3, depth, torch.zeros(()))}

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def benchmark(
    cfg: Config,
    *,
    warmup: int,
    iters: int,
    model: nn.Module | None = None,
    criterion: nn.Module | None = None,
    loader: DataLoader | None = None,
    busy_steps: int = 2,
) -> dict[str, Any]:
    """Time ``iters`` training iterations after ``warmup``; returns the numbers. On CUDA, ``busy_steps``
    more iterations under the profiler give the share of the time the GPU was busy (:func:`gpu_busy`)."""
    from bevforge.data.device_images import finish_images
    from bevforge.train.distributed import init_distributed
    from bevforge.train.optim import build_optimizer, build_scheduler
    from bevforge.train.setup import build_parts, seed_everything, set_tf32, unwrap, wrap_model
    from bevforge.train.step import Stepper, resolve_amp
    from bevforge.train.trainer import prefetched

    info = init_distributed()
    seed_everything(cfg.train.seed + info.rank, cfg.train.deterministic)
    set_tf32(cfg.train.tf32)
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

    it = iter(prefetched(batches(), loader, device))  # as the trainer: prefetched with loader workers
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        stepper.forward_backward(finish_images(next(it).to(device), cfg.data))
        stepper.optimizer_step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    data_s, samples = 0.0, 0

    def step() -> None:
        nonlocal data_s, samples
        t_data = time.perf_counter()
        batch = next(it)
        data_s += time.perf_counter() - t_data
        samples += batch.batch_size
        stepper.forward_backward(finish_images(batch.to(device), cfg.data))
        stepper.optimizer_step()

    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    sync()
    total = time.perf_counter() - t0
    timed_samples, timed_data_s = samples, data_s  # the profiled steps below are not timed
    cuda = device.type == "cuda"
    peak_alloc = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
    peak_reserved = torch.cuda.max_memory_reserved(device) / 2**30 if cuda else None
    busy, busy_note = gpu_busy(step, busy_steps) if cuda and busy_steps else (None, "")
    return {
        "device": str(device),
        "amp": amp,
        "global_batch": (loader.batch_size or cfg.data.batch_size) * info.world_size,
        "samples_per_s": timed_samples * info.world_size / total,
        "step_ms": 1000.0 * total / max(iters, 1),
        "data_share": timed_data_s / total if total > 0 else math.nan,
        "peak_mem_gib": peak_alloc,
        # what the caching allocator held at most (what nvidia-smi shows, fragmentation included)
        "peak_reserved_gib": peak_reserved,
        "is_main": info.is_main,
        "graphs": graph_outcomes(unwrap(model)),
        "gpu_busy": busy,
        "gpu_busy_note": busy_note,
    }


def busy_us(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of ``(start, end)`` intervals (overlapping kernels of several streams count
    once)."""
    total, reach = 0.0, -math.inf
    for start, end in sorted(intervals):
        if end <= reach:
            continue
        total += end - max(start, reach)
        reach = end
    return total


#: the profiler's device activities that are work (not the annotations and sync waits on the GPU timeline)
_BUSY_ACTIVITIES = ("kernel", "gpu_memcpy", "gpu_memset")


def gpu_busy(step: Any, steps: int) -> tuple[float | None, str]:
    """The share of the wall time of ``steps`` calls of ``step`` in which the GPU ran anything (kernels,
    copies, memsets of any stream, from the profiler's CUDA activity): near 100 % the step is GPU-bound,
    well below it the GPU waits for the host (launches, syncs, data). (None, why) when the profiler
    fails or records no device activity; the profiler's own host overhead makes a host-bound step look a
    little less busy than it is."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    try:
        torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            torch.cuda.synchronize()
            wall_us = 1e6 * (time.perf_counter() - t0)
        spans = [
            (e.time_range.start, e.time_range.end)
            for e in prof.events()
            if e.device_type == DeviceType.CUDA
            and (getattr(e, "activity_type", None) or "kernel") in _BUSY_ACTIVITIES
            and e.time_range.end > e.time_range.start
        ]
    except Exception as e:  # a profiler that cannot start (CUPTI in use, missing): the row says why
        return None, f"profiler failed: {type(e).__name__}: {str(e)[:80]}"
    if not spans:
        return None, "no GPU activity in the profile (CUPTI unavailable?)"
    return min(busy_us(spans) / wall_us, 1.0), ""


def graph_outcomes(model: nn.Module) -> list[str]:
    """The graph holders of ``model`` as result-row labels (``GraphHolder.outcome``: a capture that fell
    back to eager, or no replay, is said)."""
    holders = (("history_graph", "history graph"), ("frame_graph", "frame graph"))
    return [h.outcome(label) for attr, label in holders if (h := getattr(model, attr, None)) is not None]


def fused_convs_label(device: str) -> str:
    """``model.backbone.fuse_conv_relu`` in a result row, read after the run: cuDNN's calls run on CUDA
    only, and a fused call that failed and fell back to the plain convs says so."""
    from bevforge.models import fused_conv

    if not device.startswith("cuda"):
        return f"fused convs (CUDA only: plain on {device})"
    failed = fused_conv.FUSED_DISABLED
    return "fused convs" if failed is None else f"fused convs FELL BACK ({failed[:80]})"


def option_labels(cfg: Config, device: str, graphs: list[str] | None = None) -> list[str]:
    """The speed options a result row ran with beyond its variant (``graphs``: :func:`graph_outcomes` of the
    run, else the graph options as set)."""
    if graphs is None:
        graphs = ["history graph"] if cfg.train.history_graph else []
        graphs += ["frame graph"] if cfg.train.frame_graph else []
    labels = list(graphs)
    if cfg.model.backbone.fuse_conv_relu:
        labels.append(fused_convs_label(device))
    # the SCA: "auto" (the default) runs one kernel over the cameras where the kernels run
    if cfg.model.arch == "bevformer" and cfg.model.sca_fuse_cameras != "auto":
        labels.append("SCA per-camera gather" if cfg.model.sca_fuse_cameras == "off" else "SCA over cameras")
    return labels


def explain_graph_breaks(model: nn.Module, batch: Any, max_reasons: int = 4) -> list[dict[str, Any]]:
    """``torch._dynamo.explain`` of ``model(batch, None)`` (training mode) and of each direct child with
    parameters (the parts ``train.compile`` compiles) on the inputs it gets in that forward.

    Returns one row per target: ``part``, ``graphs``, ``breaks``, ``reasons`` (the first ``max_reasons``
    distinct ``reason @ file:line``).
    """
    import torch._dynamo as dynamo

    model.train()
    parts = {name: child for name, child in model.named_children() if any(True for _ in child.parameters())}
    calls: dict[str, tuple[tuple, dict]] = {}

    def record(name: str):
        def hook(_module: nn.Module, args: tuple, kwargs: dict) -> None:  # None: the inputs unchanged
            calls.setdefault(name, (args, kwargs))

        return hook

    hooks = [child.register_forward_pre_hook(record(name), with_kwargs=True) for name, child in parts.items()]
    try:
        model(batch, None)  # eager: record each part's first inputs
    finally:
        for h in hooks:
            h.remove()
    targets = [("model", model, (batch, None), {})]
    targets += [(name, parts[name], *calls[name]) for name in parts if name in calls]
    rows = []
    for name, fn, args, kwargs in targets:
        dynamo.reset()
        out = dynamo.explain(fn)(*args, **kwargs)
        reasons: list[str] = []
        for r in out.break_reasons:
            frame = r.user_stack[-1] if r.user_stack else None
            where = f" @ {Path(frame.filename).name}:{frame.lineno}" if frame else ""
            text = r.reason.splitlines()[0][:100] + where
            if text not in reasons:
                reasons.append(text)
        rows.append(
            {
                "part": name,
                "graphs": out.graph_count,
                "breaks": out.graph_break_count,
                "reasons": reasons[:max_reasons],
            }
        )
    dynamo.reset()
    return rows


def busy_cell(res: dict[str, Any]) -> str:
    """The GPU-busy share of a result, or ``-`` with why it is missing (CPU, not measured, failed)."""
    if res.get("gpu_busy") is not None:
        return f"{100 * res['gpu_busy']:.0f}%"
    note = res.get("gpu_busy_note", "")
    return f"- ({note})" if note else "-"


def result_body(res: dict[str, Any] | list[dict[str, Any]], config: str) -> str:
    """The markdown table of one run or of several variants (``res["variant"]``; the section header
    comes from ``bevforge.bench.results``). The last column is the speed-up over the first row."""
    rows = res if isinstance(res, list) else [res]
    lines = [
        "| recipe | amp | global batch | samples/s | step ms | data share | GPU busy "
        "| peak mem GiB (reserved) | variant | vs first |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        mem = f"{r['peak_mem_gib']:.2f}" if r.get("peak_mem_gib") is not None else "-"
        if r.get("peak_reserved_gib") is not None:
            mem += f" ({r['peak_reserved_gib']:.2f})"
        ratio = r["samples_per_s"] / rows[0]["samples_per_s"] if rows[0]["samples_per_s"] > 0 else math.nan
        lines.append(
            f"| {config} | {r['amp']} | {r['global_batch']} | {r['samples_per_s']:.2f} | "
            f"{r['step_ms']:.1f} | {100 * r['data_share']:.0f}% | {busy_cell(r)} | {mem} | "
            f"{r.get('variant', 'eager')} | {ratio:.2f}x |"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from bevforge.config import load_config

    cfg = load_config(args.config, args.overrides)  # ConfigError: reported by cli/main.py
    if cfg.model.backbone.pretrained:  # speed does not depend on the weights; no weight file needed
        print(f"note: model.backbone.pretrained={cfg.model.backbone.pretrained!r} ignored (random init)")
        cfg.model.backbone.pretrained = ""
    if args.amp is not None:
        cfg.train.amp = args.amp
    if args.grad_ckpt:
        cfg.train.grad_ckpt = True
    if args.explain:
        from bevforge.data.device_images import finish_images
        from bevforge.models.build import build_model

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the MSDA path differs
        torch.manual_seed(cfg.train.seed)
        batch = finish_images(next(iter(FakeLoader(cfg, num=1))).to(device), cfg.data)  # uint8 recipes
        print(f"torch._dynamo.explain on {device} (training mode, fp32, one random batch):")
        for row in explain_graph_breaks(build_model(cfg).to(device), batch):
            print(f"{row['part']}: {row['graphs']} graphs, {row['breaks']} breaks")
            for reason in row["reasons"]:
                print(f"    {reason}")
        return 0
    # --set train.compile=... / train.channels_last=true count as the flags
    compile_mode = args.compile or cfg.train.compile
    results = []
    for label, channels_last, mode in variants(
        compile_mode, args.channels_last or cfg.train.channels_last, not args.no_baseline
    ):
        vcfg = copy.deepcopy(cfg)
        vcfg.train.channels_last, vcfg.train.compile = channels_last, mode
        loader = FakeLoader(vcfg) if args.fake_data else None
        res = benchmark(  # type: ignore[arg-type]
            vcfg, warmup=args.warmup, iters=args.iters, loader=loader, busy_steps=args.busy_steps
        )
        labels = [label, *option_labels(vcfg, res["device"], res.get("graphs"))]
        res["variant"] = ", ".join(labels) + (" (fake data)" if args.fake_data else "")
        results.append(res)
        if not res["is_main"]:
            continue
        from bevforge.bench.results import device_name

        print(
            f"{device_name(res['device'])} [{label}]: {res['samples_per_s']:.2f} samples/s, "
            f"{res['step_ms']:.1f} ms/step, data {100 * res['data_share']:.0f}% of the time, GPU busy "
            f"{busy_cell(res)}, peak mem "
            + (
                f"{res['peak_mem_gib']:.2f} GiB ({res['peak_reserved_gib']:.2f} reserved)"
                if res["peak_mem_gib"] is not None
                else "n/a (CPU)"
            )
        )
    if not results[0]["is_main"]:
        return 0
    from bevforge.bench.results import append_result

    body = result_body(results, args.config)
    print(body)
    path = append_result(args.out, f"train {args.config}", results[0]["device"], body)
    print(f"appended to {path}")
    return 0
