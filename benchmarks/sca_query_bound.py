"""Not a test: SCA's hit gather (``query_bound="exact"``, one host read of the largest hit count per call)
against its static all-queries path (``"all"``, what ``torch.compile`` traces) on a recipe's sizes and
nuScenes-like ring rig; forward + backward under bf16 autocast on CUDA (fp32 on CPU).

    PYTHONPATH=src python3 benchmarks/sca_query_bound.py [RECIPE (bevformer_base)] [--iters 10]

Prints the hits per camera, then the median step time and the peak memory of each path.
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from bevforge.config import load_config
from bevforge.export.rig import input_hw, rig_lidar2img
from bevforge.geometry.projection import project_to_cameras
from bevforge.geometry.reference_points import pillar_reference_points_3d
from bevforge.nn.spatial_cross_attn import SpatialCrossAttention


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("recipe", nargs="?", default="bevformer_base")
    parser.add_argument("--iters", type=int, default=10)
    args = parser.parse_args()
    cfg = load_config(args.recipe)
    m, pcr = cfg.model, cfg.data.point_cloud_range
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    h, w = input_hw(cfg)
    stride0 = 2 ** (m.backbone.out_indices[0] + 2)  # C2 = stride 4, C3 = 8, ...
    shapes = tuple(
        (math.ceil(h / (stride0 * 2**lvl)), math.ceil(w / (stride0 * 2**lvl)))
        for lvl in range(m.neck.num_outs)
    )
    starts = torch.tensor([sum(a * b for a, b in shapes[:i]) for i in range(len(shapes))], device=dev)
    num_cams, num_q, c = len(cfg.data.cameras), m.bev_h * m.bev_w, m.embed_dims
    ref3 = pillar_reference_points_3d(m.bev_h, m.bev_w, m.num_points_in_pillar, pcr[5] - pcr[2], dev)
    ref_cam, mask = project_to_cameras(ref3, pcr, rig_lidar2img(cfg).to(dev), (h, w))  # [1, N, Q, Z, *]
    print(f"{dev} {args.recipe}: Q={num_q}, levels {shapes}, hits per camera {mask.any(-1).sum(-1).tolist()}")
    sca = SpatialCrossAttention(c, num_cams, m.sca_heads, len(shapes), m.sca_points).to(dev)
    query = torch.randn(1, num_q, c, device=dev, requires_grad=True)
    num_tokens = sum(a * b for a, b in shapes)
    value = torch.randn(1, num_cams, num_tokens, c, device=dev, requires_grad=True)
    for bound in ("exact", "all", "exact", "all"):
        sca.query_bound = bound
        times = []
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        for _ in range(args.iters):
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                out = sca(query, value, ref_cam, mask, shapes, starts)
            out.float().square().mean().backward()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB" if dev.type == "cuda" else "n/a"
        med = sorted(times[1:])[len(times[1:]) // 2]
        print(f"query_bound={bound}: forward+backward {1000 * med:.2f} ms (median), peak {peak}")


if __name__ == "__main__":
    main()
