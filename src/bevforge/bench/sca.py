"""`bevforge bench kernel --shape sca-base`: the spatial cross-attention's paths over the cameras.

One BEVFormer encoder layer's :class:`~bevforge.nn.spatial_cross_attn.SpatialCrossAttention` (its
projections, the deformable attention, the sum over cameras and the output projection), forward and
forward+backward under ``--dtype``'s autocast (``bf16`` as the recipes train; ``fp32``, the default:
none), on the recipe's real geometry: its BEV grid and pillars projected through the nuScenes-like camera
ring (``export/rig.py``) into its network input, its FPN level sizes (:func:`fpn_level_shapes`). Three
paths of the same module, the same weights and inputs (:data:`SCA_PATHS`):

- ``gather``: per (sample, camera) the queries it hits gathered (padded to the most any camera hits, read
  back to the host), the offsets kernel on them, scattered back (``fuse_cameras="off"``);
- ``all-queries``: every camera attends every query, misses masked (static shapes, what
  ``torch.compile`` traces where the fused kernel does not run);
- ``fused``: one kernel over the cameras (``bevforge::msda_cameras``, ``fuse_cameras="auto"``), no gather,
  no host read.

The table gives the rig's (query, camera) hits and the rows each path evaluates (the gather: every camera
padded to the most any hits; the fused kernel: the 8 x 8 BEV tiles a camera hits at all), the times, the
peak memory of forward+backward (CUDA) and each output's distance from the gather's. Shapes: ``sca-base``
(BEVFormer-base: 200 x 200 BEV, 928 x 1600 input, 4 levels), ``sca-tiny`` (50 x 50, 480 x 800, 1 level),
``sca-smoke`` (8 x 16 BEV, small images, 32 channels: the CPU interpreter test).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from bevforge.bench.kernel import _fmt, _ratio, time_median_ms
from bevforge.bench.results import append_result
from bevforge.ops.msda.cameras import TILE_W

#: shape name -> (recipe, overrides)
SCA_SHAPES: dict[str, tuple[str, tuple[str, ...]]] = {
    "sca-base": ("bevformer_base", ()),
    "sca-tiny": ("bevformer_tiny", ()),
    "sca-smoke": (
        "bevformer_tiny",
        ("model.bev_h=8", "model.bev_w=16", "data.img_scale=0.1", "model.embed_dims=32", "model.sca_heads=2"),
    ),
}


@dataclass(frozen=True)
class ScaCase:
    """A recipe's SCA inputs: ``ref_cam [1, N, Q, Z, 2]``, ``bev_mask [1, N, Q, Z]``, the level (H, W)
    pairs, the BEV (H, W) and the module's sizes."""

    ref_cam: torch.Tensor
    bev_mask: torch.Tensor
    levels: tuple[tuple[int, int], ...]
    bev_hw: tuple[int, int]
    embed_dims: int
    heads: int
    points: int


def sca_case(recipe: str, overrides: tuple[str, ...] = ()) -> ScaCase:
    """The recipe's rig projected (CPU) and its FPN level sizes."""
    from bevforge.config import load_config
    from bevforge.export.rig import input_hw, rig_lidar2img
    from bevforge.geometry.projection import project_to_cameras
    from bevforge.geometry.reference_points import pillar_reference_points_3d

    cfg = load_config(recipe, ["model.backbone.pretrained=", *overrides])
    m = cfg.model
    hw = input_hw(cfg)
    levels = fpn_level_shapes(hw, m.backbone.out_indices, m.neck.num_outs)
    pc_range = tuple(float(v) for v in cfg.data.point_cloud_range)
    height_m = pc_range[5] - pc_range[2]
    ref_3d = pillar_reference_points_3d(
        m.bev_h, m.bev_w, m.num_points_in_pillar, height_m, torch.device("cpu")
    )
    ref_cam, bev_mask = project_to_cameras(ref_3d, pc_range, rig_lidar2img(cfg), hw)  # [1, N, Q, Z, *]
    return ScaCase(ref_cam, bev_mask, levels, (m.bev_h, m.bev_w), m.embed_dims, m.sca_heads, m.sca_points)


def fpn_level_shapes(
    hw: tuple[int, int], out_indices: tuple[int, ...], num_outs: int
) -> tuple[tuple[int, int], ...]:
    """(H, W) of each FPN level of an ``hw`` input: ResNet stage ``i`` (C2..C5 = 0..3) at stride
    ``2 ** (i + 2)``, each stride-2 conv or pool rounding up (``(h - 1) // 2 + 1``); extra levels one
    stride-2 conv each above the last."""
    levels = []
    h, w = hw
    for halvings in range(1, max(out_indices) + 3 + num_outs - len(out_indices)):
        h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
        stage = halvings - 2  # C2 (index 0) at stride 4
        if stage in out_indices or stage > max(out_indices):
            levels.append((h, w))
    return tuple(levels)


def hit_rows(bev_mask: torch.Tensor, bev_hw: tuple[int, int], tile_hw: tuple[int, int] = (8, 8)) -> dict:
    """(query, camera) hits, the gather's rows (every camera padded to the most any hits) and the fused
    kernel's (the ``tile_hw`` BEV tiles a camera hits at all, whole) of ``bev_mask [1, N, Q, Z]``."""
    hit = bev_mask[0].any(-1)  # [N, Q]
    num_cams = hit.shape[0]
    (h, w), (th, tw) = bev_hw, tile_hw
    grid = torch.zeros(num_cams, -(-h // th) * th, -(-w // tw) * tw, dtype=torch.bool)
    grid[:, :h, :w] = hit.view(num_cams, h, w)
    # [N, H', W'] -> [N, H'/th, th, W'/tw, tw] -> any over each tile
    tiles = grid.view(num_cams, grid.shape[1] // th, th, grid.shape[2] // tw, tw).any(4).any(2)
    return {
        "hits": int(hit.sum()),
        "gather_rows": num_cams * int(hit.sum(1).max()),
        "fused_rows": int(tiles.sum()) * th * tw,
    }


#: (path, fuse_cameras, query_bound) the bench times: the hit gather, every query (the static path
#: ``torch.compile`` traces without the fused kernel) and one kernel over the cameras
SCA_PATHS = (("gather", "off", "exact"), ("all-queries", "off", "all"), ("fused", "auto", "auto"))


#: (BLOCK_Q, num_warps) of the camera kernels ``--sweep`` tries (``triton_cameras.LAUNCH``; tiles of
#: BLOCK_Q / 8 rows x 8 columns), the default (None: 64 x 4 at D = 32) first
SCA_SWEEP: tuple[tuple[int, int] | None, ...] = (None, (32, 4), (32, 2), (16, 2), (64, 8), (128, 8))


def bench_sca(
    name: str, dtype: torch.dtype, device: str, warmup: int, iters: int, sweep: bool = False
) -> list[dict]:
    """One row per :data:`SCA_PATHS` entry: median ms forward and forward+backward, the peak memory of
    forward+backward (CUDA), the rows the path evaluates and the max |diff| of its output from the
    gather's; with ``sweep`` also the fused path at each :data:`SCA_SWEEP` launch of the camera kernels
    (forward and backward alike)."""
    from bevforge.nn.spatial_cross_attn import SpatialCrossAttention

    case = sca_case(*SCA_SHAPES[name])
    g = torch.Generator().manual_seed(0)
    num_cams, num_q = case.bev_mask.shape[1], case.bev_mask.shape[2]
    tokens = sum(h * w for h, w in case.levels)
    C = case.embed_dims
    sca = SpatialCrossAttention(C, num_cams, case.heads, len(case.levels), case.points, dropout=0.0)
    sca = sca.to(device).train()
    query = torch.randn(1, num_q, C, generator=g).to(device).requires_grad_()
    value = torch.randn(1, num_cams, tokens, C, generator=g).to(device).requires_grad_()
    ref_cam, bev_mask = case.ref_cam.to(device), case.bev_mask.to(device)
    start = torch.tensor([0] + [h * w for h, w in case.levels[:-1]]).cumsum(0).to(device)
    grad_out = torch.randn(1, num_q, C, generator=g).to(device)
    leaves = [query, value, *sca.parameters()]
    amp = dtype if dtype != torch.float32 else None
    device_type = torch.device(device).type
    counts = hit_rows(case.bev_mask, case.bev_hw)
    evaluated = {
        "gather": counts["gather_rows"],
        "all-queries": num_cams * num_q,
        "fused": counts["fused_rows"],
    }
    common = {"name": name, "dtype": dtype, "N": num_cams, "Q": num_q, "S": tokens, "levels": case.levels}
    common["hits"] = counts["hits"]
    runs = [(path, fuse, bound, None) for path, fuse, bound in SCA_PATHS]
    runs += [("fused", "auto", "auto", config) for config in SCA_SWEEP[1:]] if sweep else []
    rows, want = [], None
    for path, fuse, bound, config in runs:
        row = {**common, "path": path, "rows": evaluated[path]}
        rows.append(row)
        if config is not None:
            row["path"] = f"fused {config[0]} x {config[1]}"
            tile_hw = (max(1, config[0] // TILE_W), TILE_W)
            row["rows"] = hit_rows(case.bev_mask, case.bev_hw, tile_hw)["fused_rows"]
        sca.fuse_cameras, sca.query_bound = fuse, bound
        if path == "fused" and not sca.fused(value):
            row["note"] = "needs the kernel (CUDA, or TRITON_INTERPRET=1)"
            continue
        if config is not None:
            from bevforge.ops.msda import triton_cameras

            saved = dict(triton_cameras.LAUNCH)
            triton_cameras.LAUNCH.update(fwd=config, bwd=config)
        try:
            # the plan once per frame for every layer, as the encoder does (the gather's host read included)
            plan = sca.plan(ref_cam, bev_mask, grid_w=case.bev_hw[1])

            def forward(plan=plan):
                with torch.autocast(device_type, dtype=amp or torch.float32, enabled=amp is not None):
                    return sca(query, value, ref_cam, bev_mask, case.levels, start, plan)

            with torch.no_grad():
                out = forward().float()
                row["fwd"] = time_median_ms(forward, warmup, iters, device)
            want = out if want is None else want
            row["max_diff"] = (out - want).abs().max().item()
            if device_type == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            row["fb"] = time_median_ms(lambda f=forward: torch.autograd.grad(f(), leaves, grad_out), warmup,
                                       iters, device)  # fmt: skip
            if device_type == "cuda":
                row["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        finally:
            if config is not None:
                triton_cameras.LAUNCH.update(saved)
    return rows


def format_sca_table(rows: list[dict]) -> str:
    lines = [
        "| shape | dtype | N | Q | S | levels | hits | path | rows | fwd ms | fwd+bwd ms | vs gather | "
        "peak MiB | max abs diff vs gather |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    gather: dict = {}
    for r in rows:
        key = (r["name"], r["dtype"])
        if r["path"] == "gather":
            gather[key] = r.get("fb")
        levels = " ".join(f"{h}x{w}" for h, w in r["levels"])
        diff = f"{r['max_diff']:.2e}" if "max_diff" in r else r.get("note", "n/a")
        peak = f"{r['peak_mib']:.0f}" if "peak_mib" in r else "n/a"
        lines.append(
            f"| {r['name']} | {str(r['dtype']).replace('torch.', '')} | {r['N']} | {r['Q']} | {r['S']} | "
            f"{levels} | {r['hits']} | {r['path']} | {r['rows']} | {_fmt(r.get('fwd'))} | "
            f"{_fmt(r.get('fb'))} | {_ratio(gather.get(key), r.get('fb'))} | {peak} | {diff} |"
        )
    return "\n".join(lines)


def run_sca(args: argparse.Namespace, dtypes: list[torch.dtype]) -> int:
    """``bench kernel --shape sca-*``: one row per path and dtype, appended to ``--out``."""
    rows = []
    for dtype in dtypes:
        new = bench_sca(args.shape, dtype, args.device, args.warmup, args.iters, args.sweep)
        print("\n".join(format_sca_table(new).splitlines()[2:]), flush=True)
        rows += new
    table = format_sca_table(rows)
    print(table)
    note = (
        f"\n\nmedian of {args.iters} runs; one SCA layer (projections, attention, sum over cameras, output "
        "projection); rows: (query, camera) rows the path evaluates; speed-ups are of forward+backward; "
        "fused B x W: the camera kernels at BLOCK_Q B (B/8 x 8 tiles) on W warps (set the winner in "
        "ops/msda/triton_cameras.py LAUNCH)"
    )
    path = append_result(args.out, "SCA over cameras", args.device, table + note)
    print(f"appended to {path}")
    return 0
