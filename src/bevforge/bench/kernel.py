"""`bevforge bench kernel`: MSDA reference (grid_sample) vs the Triton kernel, forward and forward+backward.

Shape letters: B batch (x cameras / x BEV queue), S value tokens, M heads, D channels per head,
Q queries, L levels, P points per level. The shapes are those of BEVFormer-base (928x1600 images,
FPN strides 8/16/32/64, 200x200 BEV, 256 channels = 8 heads x 32):

- ``base-sca``: spatial cross-attention, value = 6 cameras x 4 FPN levels (116x200, 58x100, 29x50,
  15x25), 10 000 queries per camera (~40 000 BEV queries x ~1.5 camera hits / 6 cameras, padded to the
  max as the official rebatching does), 8 points per level (official: 4 Z anchors x 2 points).
- ``base-tsa``: temporal self-attention, value = 2 (prev BEV + current BEV queue) x 200x200, 1 level,
  40 000 queries, 4 points.
- ``decoder``: detection decoder cross-attention, 900 queries on the 200x200 BEV, 1 level, 4 points.
- ``tiny``: a small smoke shape.

Where the model gives the sampling points as offsets around fixed reference points (the SCA: 4 pillar
points per query for all levels; the TSA: one per level), the table also times the two Triton paths of
forward+backward at bf16-like offsets: the locations formed by ``addcdiv`` and then the kernel
(``bevforge::msda``), and the kernel forming them itself (``bevforge::msda_offsets``), the models' path.
The decoder's reference points train, so it keeps the locations path (no column). ``--sweep`` then times
the offsets path at other launch constants of the MSDA kernels (``triton_msda.LAUNCH``: BLOCK_Q queries x
num_warps), forward and backward apart, on the SCA/TSA shapes.

BEV pooling (``ops/bev_pool``, BEVDet's Lift-Splat splat), reference (gather + scatter_add) vs the Triton
kernel, with letters B batch, N cameras, D depth bins, fH x fW feature map, C channels, H x W BEV cells:

- ``bevdet-pool``: BEVDet-R50 (256x704 input, stride 16 -> 16x44, 59 depth bins 1..60 m, 64 context
  channels, 128x128 BEV of 0.8 m over +-51.2 m) on a ring of 6 pinhole cameras (``frustum_cells``);
- ``bevpool-tiny``: a small smoke shape of the same rig.
  Only ``--shape bevdet-pool`` / ``bevpool-tiny`` run it (``all`` stays the MSDA shapes).

DCNv2 (the R101 backbone's deformable convs, :mod:`bevforge.ops.dcn.bench`): torchvision vs the sampled
path vs its Triton kernels, forward + backward and forward, ``--channels-last`` for the pixel-major path:

- ``dcn-stage3`` / ``dcn-stage4``: BEVFormer-base's stage-3 (256 channels, 58x100) and stage-4 (512,
  29x50) DCN on 6 cameras; ``dcn-tiny``: a small smoke shape. ``--dtype`` is the autocast dtype (fp32:
  none); means over the runs.

The spatial cross-attention module, its hit gather vs one kernel over the cameras, on the recipe's real
rig (:mod:`bevforge.bench.sca`): ``sca-base``, ``sca-tiny``, ``sca-smoke`` (``--dtype bf16``: autocast).

Medians over ``--iters`` timed runs after ``--warmup`` runs (CUDA events on GPU). The table is appended
to ``benchmarks/results/kernel.md`` with the device, commit and command.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bevforge.bench.results import append_result
from bevforge.ops import bev_pool as bev_pool_ops
from bevforge.ops.msda import msda_reference, triton_import_error, triton_ineligible_reason
from bevforge.ops.msda.shapes import level_start_index

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class MsdaShape:
    name: str
    B: int
    levels: tuple[tuple[int, int], ...]  # (H_l, W_l)
    Q: int
    M: int = 8
    D: int = 32
    P: int = 4
    #: reference rows (L_r, Z) of the offsets path: (1, Z) one row of Z points for every level (SCA),
    #: (L, 1) one point per level (TSA); None: the shape's reference points train (locations only)
    ref_rows: tuple[int, int] | None = None


SHAPES: dict[str, MsdaShape] = {
    "tiny": MsdaShape("tiny", B=1, levels=((16, 16), (8, 8)), Q=256, ref_rows=(1, 2)),
    "base-sca": MsdaShape(
        "base-sca", B=6, levels=((116, 200), (58, 100), (29, 50), (15, 25)), Q=10000, P=8, ref_rows=(1, 4)
    ),
    "base-tsa": MsdaShape("base-tsa", B=2, levels=((200, 200),), Q=40000, ref_rows=(1, 1)),
    "decoder": MsdaShape("decoder", B=1, levels=((200, 200),), Q=900),
}


@dataclass(frozen=True)
class BevPoolShape:
    name: str
    B: int
    N: int
    D: int
    fH: int
    fW: int
    C: int
    H: int
    W: int


#: DCNv2 layer shapes (images, channels in = out, H, W)
DCN_SHAPES: dict[str, tuple[int, int, int, int]] = {
    "dcn-stage3": (6, 256, 58, 100),
    "dcn-stage4": (6, 512, 29, 50),
    "dcn-tiny": (1, 8, 6, 7),
}

#: the spatial cross-attention module, hit gather vs fused over cameras (:mod:`bevforge.bench.sca`)
SCA_SHAPE_NAMES = ("sca-base", "sca-tiny", "sca-smoke")

BEV_POOL_SHAPES: dict[str, BevPoolShape] = {
    "bevdet-pool": BevPoolShape("bevdet-pool", B=1, N=6, D=59, fH=16, fW=44, C=64, H=128, W=128),
    "bevpool-tiny": BevPoolShape("bevpool-tiny", B=1, N=6, D=8, fH=4, fW=11, C=16, H=32, W=32),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--shape",
        choices=[*SHAPES, "all", *BEV_POOL_SHAPES, *DCN_SHAPES, *SCA_SHAPE_NAMES],
        default="all",
        help="which MSDA shape (default all = every MSDA shape), or a BEV pooling, DCNv2 or SCA shape",
    )
    p.add_argument(
        "--channels-last",
        action="store_true",
        help="DCNv2 shapes: channels-last inputs (pixel-major columns)",
    )
    p.add_argument(
        "--sweep",
        action="store_true",
        help="MSDA shapes: also time the kernels' launch constants (BLOCK_Q x warps) on the offsets path; "
        "SCA shapes: the camera kernels' on the fused path",
    )
    p.add_argument("--dtype", choices=[*DTYPES, "all"], default="fp32", help="input dtype (default fp32)")
    p.add_argument("--iters", type=int, default=20, help="timed iterations (median reported)")
    p.add_argument("--warmup", type=int, default=5, help="untimed iterations first (compile, caches)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default="benchmarks/results/kernel.md", help="markdown file to append to")


def make_inputs(shape: MsdaShape, device: str, dtype: torch.dtype, seed: int = 0):
    """(value, spatial_shapes, level_start_index, locations, weights) with softmaxed weights."""
    g = torch.Generator(device=device).manual_seed(seed)
    L = len(shape.levels)
    S = sum(h * w for h, w in shape.levels)
    spatial = torch.tensor(shape.levels, dtype=torch.long, device=device)  # [L, 2]
    start = level_start_index(spatial)  # [L]
    value = torch.randn(shape.B, S, shape.M, shape.D, device=device, generator=g, dtype=dtype)
    locs = torch.rand(shape.B, shape.Q, shape.M, L, shape.P, 2, device=device, generator=g, dtype=dtype)
    logits = torch.randn(shape.B, shape.Q, shape.M, L * shape.P, device=device, generator=g)
    # [B, Q, M, L*P] -> [B, Q, M, L, P]
    weights = logits.softmax(-1).view(shape.B, shape.Q, shape.M, L, shape.P).to(dtype)
    return value, spatial, start, locs, weights


def make_offsets(shape: MsdaShape, device: str, dtype: torch.dtype, seed: int = 1):
    """``(reference [B, Q, L_r, Z, 2] fp32 in [0, 1], offsets [B, Q, M, L, P, 2] in cells, N(0, 2))``."""
    assert shape.ref_rows is not None, shape
    g = torch.Generator(device=device).manual_seed(seed)
    L = len(shape.levels)
    reference = torch.rand(shape.B, shape.Q, *shape.ref_rows, 2, device=device, generator=g)
    offsets = torch.randn(shape.B, shape.Q, shape.M, L, shape.P, 2, device=device, generator=g) * 2
    return reference, offsets.to(dtype)


def time_median_ms(fn: Callable[[], object], warmup: int, iters: int, device: str) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device.startswith("cuda"):
            t0, t1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            t0.record()
            fn()
            t1.record()
            torch.cuda.synchronize()
            times.append(t0.elapsed_time(t1))
        else:
            s = time.perf_counter()
            fn()
            times.append((time.perf_counter() - s) * 1e3)
    return statistics.median(times)


def _fwd_bwd(fn, value, spatial, start, locs, weights, grad_out) -> Callable[[], object]:
    leaves = [t.detach().requires_grad_() for t in (value, locs, weights)]

    def step():
        out = fn(leaves[0], spatial, start, leaves[1], leaves[2])
        return torch.autograd.grad(out, leaves, grad_out)

    return step


def bench_shape(shape: MsdaShape, dtype: torch.dtype, device: str, warmup: int, iters: int) -> dict:
    """Median ms of reference/Triton forward and forward+backward, max |diff| of the outputs."""
    args = make_inputs(shape, device, dtype)
    row: dict = {"shape": shape, "dtype": dtype}
    with torch.no_grad():
        ref_out = msda_reference(*args)
        # the accuracy column compares with the fp32 reference on the same (rounded) inputs
        ref_fp32 = msda_reference(*[a.float() if a.is_floating_point() else a for a in args])
    grad_out = torch.randn_like(ref_out)
    row["ref_fwd"] = time_median_ms(lambda: msda_reference(*args), warmup, iters, device)
    row["ref_fb"] = time_median_ms(_fwd_bwd(msda_reference, *args, grad_out), warmup, iters, device)
    reason = triton_import_error() or triton_ineligible_reason(args[0], args[3], args[4])
    row["triton_note"] = reason or ""
    if reason is None:
        from bevforge.ops.msda.op import msda_op

        with torch.no_grad():
            row["max_diff"] = (msda_op(*args).float() - ref_fp32).abs().max().item()
            row["ref_diff"] = (ref_out.float() - ref_fp32).abs().max().item()
        row["tri_fwd"] = time_median_ms(lambda: msda_op(*args), warmup, iters, device)
        row["tri_fb"] = time_median_ms(_fwd_bwd(msda_op, *args, grad_out), warmup, iters, device)
        if shape.ref_rows is not None:
            row["loc_fb"], row["off_fb"] = _time_offsets_paths(shape, args, grad_out, warmup, iters, device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return row


def _time_offsets_paths(shape: MsdaShape, args, grad_out, warmup: int, iters: int, device: str):
    """Median ms of forward+backward from offsets: locations by ``addcdiv`` then the kernel, and the
    offsets op (``bevforge::msda_offsets``) forming them inside the kernel."""
    from bevforge.ops.msda.op import msda_offsets_op, msda_op
    from bevforge.ops.msda.shapes import offset_locations

    value, spatial, start, _, weights = args
    reference, offsets = make_offsets(shape, device, value.dtype)

    def via_locations(v, sp, st, off, w):
        return msda_op(v, sp, st, offset_locations(reference, off, shape.levels), w)

    def in_kernel(v, sp, st, off, w):
        return msda_offsets_op(v, sp, st, reference, off, w)

    inputs = (value, spatial, start, offsets, weights, grad_out)
    loc_fb = time_median_ms(_fwd_bwd(via_locations, *inputs), warmup, iters, device)
    return loc_fb, time_median_ms(_fwd_bwd(in_kernel, *inputs), warmup, iters, device)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None or b <= 0 else f"{a / b:.2f}x"


def format_table(rows: list[dict]) -> str:
    lines = [
        "| shape | dtype | B | S | Q | M x D | L | P | ref fwd ms | triton fwd ms | speedup | "
        "ref fwd+bwd ms | triton fwd+bwd ms | speedup | from offsets fwd+bwd ms: locations -> in kernel | "
        "max abs diff triton / ref vs fp32 ref |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s: MsdaShape = r["shape"]
        S = sum(h * w for h, w in s.levels)
        tf, tfb = r.get("tri_fwd"), r.get("tri_fb")
        diff = (
            f"{r['max_diff']:.2e} / {r['ref_diff']:.2e}"
            if "max_diff" in r
            else f"triton skipped: {r['triton_note']}"
        )
        loc, off = r.get("loc_fb"), r.get("off_fb")
        offsets = "n/a" if loc is None else f"{_fmt(loc)} -> {_fmt(off)} ({_ratio(loc, off)})"
        lines.append(
            f"| {s.name} | {str(r['dtype']).replace('torch.', '')} | {s.B} | {S} | {s.Q} | {s.M} x {s.D} | "
            f"{len(s.levels)} | {s.P} | {_fmt(r['ref_fwd'])} | {_fmt(tf)} | {_ratio(r['ref_fwd'], tf)} | "
            f"{_fmt(r['ref_fb'])} | {_fmt(tfb)} | {_ratio(r['ref_fb'], tfb)} | {offsets} | {diff} |"
        )
    return "\n".join(lines)


#: (BLOCK_Q, num_warps) the MSDA launch sweep tries, the kernels' default (None) first
MSDA_SWEEP: tuple[tuple[int, int] | None, ...] = (None, (32, 4), (64, 8), (32, 2), (128, 8), (16, 2), (32, 8))


def sweep_msda(shape: MsdaShape, dtype: torch.dtype, device: str, warmup: int, iters: int) -> list[dict]:
    """Median ms of the offsets op's forward and forward+backward at each :data:`MSDA_SWEEP` setting of
    ``triton_msda.LAUNCH`` (both kernels; the backward's time is the difference)."""
    from bevforge.ops.msda import triton_msda
    from bevforge.ops.msda.op import msda_offsets_op

    value, spatial, start, _, weights = make_inputs(shape, device, dtype)
    reference, offsets = make_offsets(shape, device, dtype)
    grad_out = torch.randn(shape.B, shape.Q, shape.M * shape.D, device=device)

    def op(v, sp, st, off, w):
        return msda_offsets_op(v, sp, st, reference, off, w)

    saved = dict(triton_msda.LAUNCH)
    rows = []
    try:
        for config in MSDA_SWEEP:
            triton_msda.LAUNCH.update(fwd=config, bwd=config)
            fwd = time_median_ms(lambda: op(value, spatial, start, offsets, weights), warmup, iters, device)
            step = _fwd_bwd(op, value, spatial, start, offsets, weights, grad_out)
            rows.append({"shape": shape, "dtype": dtype, "config": config, "fwd": fwd})
            rows[-1]["fb"] = time_median_ms(step, warmup, iters, device)
    finally:
        triton_msda.LAUNCH.update(saved)
    return rows


def format_sweep_table(rows: list[dict]) -> str:
    lines = [
        "| shape | dtype | BLOCK_Q x warps | fwd ms | fwd+bwd ms | bwd ms | fwd vs default | "
        "bwd vs default |",
        "|---|---|---|---|---|---|---|---|",
    ]
    default: dict = {}
    for r in rows:
        key = (r["shape"].name, r["dtype"])
        bwd = r["fb"] - r["fwd"]
        if r["config"] is None:
            default[key] = (r["fwd"], bwd)
        base_fwd, base_bwd = default.get(key, (None, None))
        label = "default (64 x 4 at D=32)" if r["config"] is None else f"{r['config'][0]} x {r['config'][1]}"
        lines.append(
            f"| {r['shape'].name} | {str(r['dtype']).replace('torch.', '')} | {label} | {_fmt(r['fwd'])} | "
            f"{_fmt(r['fb'])} | {_fmt(bwd)} | {_ratio(base_fwd, r['fwd'])} | {_ratio(base_bwd, bwd)} |"
        )
    return "\n".join(lines)


def frustum_cells(shape: BevPoolShape, device: str) -> torch.Tensor:
    """``cell_index [B, N, D, fH, fW]`` of a ring of N pinhole cameras (70 x 35 deg field of view, 1.5 m
    high, yaws 360/N apart), depth bins 1, 2, ... m, over a +-51.2 m grid and z in [-5, 3) m; -1 outside."""
    depth_m = torch.arange(shape.D, device=device, dtype=torch.float32) + 1.0  # [D]
    col = (torch.arange(shape.fW, device=device) + 0.5) / shape.fW - 0.5  # [fW] in (-0.5, 0.5)
    row = (torch.arange(shape.fH, device=device) + 0.5) / shape.fH - 0.5  # [fH], row 0 at the top
    yaw = torch.arange(shape.N, device=device) * (2 * torch.pi / shape.N)  # [N]
    azimuth = yaw[:, None] - col[None, :] * torch.deg2rad(torch.tensor(70.0))  # [N, fW]
    elevation = -row * torch.deg2rad(torch.tensor(35.0))  # [fH]
    # [D] x [N, fW] -> [N, D, 1, fW]; [D] x [fH] -> [1, D, fH, 1]
    x = depth_m[None, :, None, None] * torch.cos(azimuth)[:, None, None, :]
    y = depth_m[None, :, None, None] * torch.sin(azimuth)[:, None, None, :]
    z = 1.5 + depth_m[None, :, None, None] * torch.tan(elevation)[None, None, :, None]
    x, y, z = torch.broadcast_tensors(x, y, z)  # [N, D, fH, fW]
    col_i = torch.floor((x + 51.2) / (102.4 / shape.W)).long()
    row_i = torch.floor((y + 51.2) / (102.4 / shape.H)).long()
    inside = (col_i >= 0) & (col_i < shape.W) & (row_i >= 0) & (row_i < shape.H) & (z >= -5.0) & (z < 3.0)
    cells = torch.where(inside, row_i * shape.W + col_i, torch.full_like(col_i, -1))  # [N, D, fH, fW]
    return cells.unsqueeze(0).expand(shape.B, -1, -1, -1, -1).contiguous()  # [B, N, D, fH, fW]


def bench_bev_pool(shape: BevPoolShape, dtype: torch.dtype, device: str, warmup: int, iters: int) -> dict:
    """Median ms of the plan, reference/Triton forward and forward+backward, max |diff| of the outputs."""
    g = torch.Generator(device=device).manual_seed(0)
    cells = frustum_cells(shape, device)
    depth = torch.randn(cells.shape, device=device, generator=g).softmax(2).to(dtype)
    context = torch.randn(shape.B, shape.N, shape.fH, shape.fW, shape.C, device=device, generator=g).to(dtype)
    plan = bev_pool_ops.plan_bev_pool(cells, shape.H, shape.W)
    row: dict = {"shape": shape, "dtype": dtype, "points": plan.num_points, "cells": plan.num_intervals}
    row["plan"] = time_median_ms(lambda: bev_pool_ops.plan_bev_pool(cells, shape.H, shape.W), 1, 5, device)
    ref = bev_pool_ops.bev_pool_reference
    with torch.no_grad():
        ref_fp32 = ref(depth.float(), context.float(), plan)
        row["ref_diff"] = (ref(depth, context, plan).float() - ref_fp32).abs().max().item()
    grad_out = torch.randn_like(ref_fp32).to(dtype)

    def fwd_bwd(fn) -> Callable[[], object]:
        leaves = [depth.detach().requires_grad_(), context.detach().requires_grad_()]
        return lambda: torch.autograd.grad(fn(leaves[0], leaves[1], plan), leaves, grad_out)

    row["ref_fwd"] = time_median_ms(lambda: ref(depth, context, plan), warmup, iters, device)
    row["ref_fb"] = time_median_ms(fwd_bwd(ref), warmup, iters, device)
    reason = bev_pool_ops.triton_import_error() or bev_pool_ops.triton_ineligible_reason(depth, context, plan)
    row["triton_note"] = reason or ""
    if reason is None:
        from bevforge.ops.bev_pool.op import bev_pool_plan_op

        with torch.no_grad():
            row["max_diff"] = (bev_pool_plan_op(depth, context, plan).float() - ref_fp32).abs().max().item()
        row["tri_fwd"] = time_median_ms(lambda: bev_pool_plan_op(depth, context, plan), warmup, iters, device)
        row["tri_fb"] = time_median_ms(fwd_bwd(bev_pool_plan_op), warmup, iters, device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return row


def format_bev_pool_table(rows: list[dict]) -> str:
    lines = [
        "| shape | dtype | B x N | D | fH x fW | C | BEV | points | cells | plan ms | ref fwd ms | "
        "triton fwd ms | speedup | ref fwd+bwd ms | triton fwd+bwd ms | speedup | "
        "max abs diff triton / ref vs fp32 ref |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        s: BevPoolShape = r["shape"]
        tf, tfb = r.get("tri_fwd"), r.get("tri_fb")
        diff = (
            f"{r['max_diff']:.2e} / {r['ref_diff']:.2e}"
            if "max_diff" in r
            else f"triton skipped: {r['triton_note']}"
        )
        lines.append(
            f"| {s.name} | {str(r['dtype']).replace('torch.', '')} | {s.B} x {s.N} | {s.D} | "
            f"{s.fH} x {s.fW} | {s.C} | {s.H} x {s.W} | {r['points']} | {r['cells']} | {_fmt(r['plan'])} | "
            f"{_fmt(r['ref_fwd'])} | {_fmt(tf)} | {_ratio(r['ref_fwd'], tf)} | {_fmt(r['ref_fb'])} | "
            f"{_fmt(tfb)} | {_ratio(r['ref_fb'], tfb)} | {diff} |"
        )
    return "\n".join(lines)


def run_bev_pool(args: argparse.Namespace) -> int:
    dtypes = list(DTYPES.values()) if args.dtype == "all" else [DTYPES[args.dtype]]
    rows = []
    for dtype in dtypes:
        row = bench_bev_pool(BEV_POOL_SHAPES[args.shape], dtype, args.device, args.warmup, args.iters)
        print(format_bev_pool_table([row]).splitlines()[-1], flush=True)
        rows.append(row)
    table = format_bev_pool_table(rows)
    print(table)
    note = f"\n\nmedian of {args.iters} runs; plan = plan_bev_pool (cacheable while calibration is fixed)"
    path = append_result(args.out, "BEV pool kernel", args.device, table + note)
    print(f"appended to {path}")
    return 0


def run_dcn(args: argparse.Namespace) -> int:
    """The DCNv2 op bench (:mod:`bevforge.ops.dcn.bench`) at a named shape, once per dtype."""
    from bevforge.ops.dcn import bench as dcn_bench

    B, C, H, W = DCN_SHAPES[args.shape]
    amps = {"fp32": "off", "bf16": "bf16", "fp16": "fp16"}
    argv = ["--batch", str(B), "--channels", str(C), "--hw", str(H), str(W), "--device", args.device]
    argv += ["--iters", str(args.iters), "--warmup", str(args.warmup), "--out", args.out]
    argv += ["--channels-last"] if args.channels_last else []
    for dtype in DTYPES if args.dtype == "all" else [args.dtype]:
        if dcn_bench.main([*argv, "--amp", amps[dtype]]):
            return 1
    return 0


def run(args: argparse.Namespace) -> int:
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print(
            "error: --device cuda but CUDA is not available; use --device cpu (reference only)",
            file=sys.stderr,
        )
        return 2
    if args.shape in BEV_POOL_SHAPES:
        return run_bev_pool(args)
    if args.shape in DCN_SHAPES:
        return run_dcn(args)
    dtypes = list(DTYPES.values()) if args.dtype == "all" else [DTYPES[args.dtype]]
    if args.shape in SCA_SHAPE_NAMES:
        from bevforge.bench.sca import run_sca

        return run_sca(args, dtypes)
    shapes = list(SHAPES.values()) if args.shape == "all" else [SHAPES[args.shape]]
    rows = []
    for shape in shapes:
        for dtype in dtypes:
            row = bench_shape(shape, dtype, args.device, args.warmup, args.iters)
            print(format_table([row]).splitlines()[-1], flush=True)
            rows.append(row)
    table = format_table(rows)
    print(table)
    path = append_result(args.out, "MSDA kernel", args.device, table + f"\n\nmedian of {args.iters} runs")
    print(f"appended to {path}")
    if args.sweep:
        return run_msda_sweep(args, shapes, dtypes)
    return 0


def run_msda_sweep(args: argparse.Namespace, shapes: list[MsdaShape], dtypes: list[torch.dtype]) -> int:
    """The launch sweep of the offsets path (:func:`sweep_msda`) on the shapes that take it."""
    from bevforge.ops.msda import triton_import_error

    swept = [s for s in shapes if s.ref_rows is not None]
    reason = triton_import_error() or ("" if args.device.startswith("cuda") else "needs CUDA")
    if reason or not swept:
        print(f"MSDA launch sweep skipped: {reason or 'no shape with an offsets path'}")
        return 0
    rows = []
    for shape in swept:
        for dtype in dtypes:
            rows += sweep_msda(shape, dtype, args.device, args.warmup, args.iters)
            print(format_sweep_table(rows).splitlines()[-1], flush=True)
    table = format_sweep_table(rows)
    print(table)
    note = f"\n\nmedian of {args.iters} runs; set the winners in ops/msda/triton_msda.py LAUNCH"
    path = append_result(args.out, "MSDA launch sweep", args.device, table + note)
    print(f"appended to {path}")
    return 0
