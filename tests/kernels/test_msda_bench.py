"""`bevforge bench kernel` on CPU (reference only there): one tiny run appends a table with provenance."""

from __future__ import annotations

import argparse
import re

import pytest
import torch
from kernel_harness import bench_kernel_row_under_interpreter

from bevforge.bench import kernel


def test_bench_kernel_tiny_appends_markdown(tmp_path, monkeypatch):
    torch.manual_seed(0)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    out = tmp_path / "results" / "kernel.md"
    parser = argparse.ArgumentParser()
    kernel.add_arguments(parser)
    args = parser.parse_args(["--shape", "tiny", "--iters", "1", "--warmup", "0", "--device", "cpu"])
    args.out = str(out)
    assert kernel.run(args) == 0
    assert kernel.run(args) == 0  # a second run appends, keeping the first
    text = out.read_text()
    assert text.count("## MSDA kernel") == 2
    assert "- commit: " in text and "- device: CPU" in text
    row = next(line for line in text.splitlines() if line.startswith("| tiny |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "float32" and float(cells[8]) > 0  # reference forward ms
    assert "triton skipped" in cells[-1]  # CPU without the interpreter: the reference only


def test_bench_shapes_match_bevformer_base():
    sca = kernel.SHAPES["base-sca"]
    assert sca.levels == ((116, 200), (58, 100), (29, 50), (15, 25))  # 928x1600 / 8, 16, 32, 64
    assert sca.M * sca.D == 256 and kernel.SHAPES["base-tsa"].Q == 200 * 200


def test_bench_kernel_offsets_column_under_interpreter(tmp_path):
    """The Triton branch (timings meaningless under the interpreter; the diff column is real) with the
    offsets paths' column (locations -> in kernel), in a subprocess."""
    pytest.importorskip("triton")
    cells = bench_kernel_row_under_interpreter(tmp_path, "tiny")
    triton_vs_fp32, _ = (float(x) for x in cells[-1].split(" / "))
    assert triton_vs_fp32 < 1e-5, cells
    locations_ms, kernel_ms = re.fullmatch(r"([\d.]+) -> ([\d.]+) \([\d.]+x\)", cells[-2]).groups()
    assert float(locations_ms) > 0 and float(kernel_ms) > 0, cells


def test_msda_launch_override_reaches_the_kernels():
    """``triton_msda.LAUNCH`` sets each kernel's (BLOCK_Q, warps); None keeps the choice from D."""
    pytest.importorskip("triton")
    from kernel_harness import recorded

    from bevforge.ops.msda import triton_msda

    value, spatial, start, locs, weights = kernel.make_inputs(kernel.SHAPES["tiny"], "cpu", torch.float32)
    grad = torch.randn(1, 256, 256)
    saved = dict(triton_msda.LAUNCH)
    try:
        with recorded(triton_msda, "_msda_fwd_kernel", "_msda_bwd_kernel") as recs:
            triton_msda.LAUNCH.update(fwd=(32, 2), bwd=None)
            triton_msda.msda_forward(value, spatial, start, locs, weights)
            triton_msda.msda_backward(grad, value, spatial, start, locs, weights)
    finally:
        triton_msda.LAUNCH.update(saved)
    (fwd_args, fwd_kwargs), (bwd_args, bwd_kwargs) = (
        recs["_msda_fwd_kernel"].launches[0],
        recs["_msda_bwd_kernel"].launches[0],
    )
    assert (fwd_args[-2], fwd_args[-1], fwd_kwargs["num_warps"]) == (32, 32, 2)  # BLOCK_Q, BLOCK_D, warps
    assert (bwd_args[-2], bwd_args[-1], bwd_kwargs["num_warps"]) == (64, 32, 4)  # the default at D = 32
    assert saved == triton_msda.LAUNCH


def test_msda_launch_sweep_times_each_setting(monkeypatch):
    """``--sweep``: each setting is in ``LAUNCH`` while its timings run, the default comes first, the old
    settings come back; the table gives the backward as the difference, ratios against the default."""
    from bevforge.ops.msda import triton_msda

    seen = []

    def fake_time(fn, warmup, iters, device):
        config = triton_msda.LAUNCH["fwd"]
        assert triton_msda.LAUNCH["bwd"] == config
        seen.append(config)
        fwd_ms = (64 if config is None else config[0]) / 32  # the default 2 ms, 32 queries 1 ms
        return fwd_ms if len(seen) % 2 else fwd_ms + 4.0  # forward, then forward + backward (4 ms)

    monkeypatch.setattr(kernel, "time_median_ms", fake_time)
    saved = dict(triton_msda.LAUNCH)
    rows = kernel.sweep_msda(kernel.SHAPES["tiny"], torch.float32, "cpu", 0, 1)
    assert saved == triton_msda.LAUNCH
    assert [r["config"] for r in rows] == list(kernel.MSDA_SWEEP) and seen[:2] == [None, None]
    table = kernel.format_sweep_table(rows).splitlines()
    assert len(table) == 2 + len(kernel.MSDA_SWEEP) and "default" in table[2]
    cells = [c.strip() for c in table[3].strip("|").split("|")]  # 32 x 4: fwd 1 ms vs 2 ms, bwd 4 vs 4
    assert cells[2:] == ["32 x 4", "1.000", "5.000", "4.000", "2.00x", "1.00x"], cells


def test_bench_sca_hit_rows_count_tiles_and_padding():
    """The rig statistics of ``bench kernel --shape sca-*``: hits, the gather's rows (every camera padded
    to the most any hits) and the fused kernel's (whole 8 x 8 tiles a camera hits at all)."""
    from bevforge.bench.sca import hit_rows

    mask = torch.zeros(1, 2, 10 * 12, 1, dtype=torch.bool)  # [1, N, Q, Z] on a 10 x 12 BEV
    grid = mask.view(2, 10, 12)
    grid[0, 0, :3] = True  # camera 0: 3 cells of tile (0, 0)
    grid[1, 9, 11] = True  # camera 1: the last cell (tile (1, 1), partly outside the grid)
    grid[1, 0, 8] = True  # and one in tile (0, 1)
    assert hit_rows(mask, (10, 12)) == {"hits": 5, "gather_rows": 2 * 3, "fused_rows": 3 * 64}


def test_bench_sca_base_geometry_and_cpu_row(tmp_path, monkeypatch):
    """``sca-base`` is BEVFormer-base's SCA on the nuScenes-like ring (the levels of a 928 x 1600 input,
    each query in ~1.15 cameras, 8 x 8 tiles evaluating fewer rows than the gather pads to); on a plain CPU
    the row times the gather and says why the fused path is missing."""
    from bevforge.bench.sca import hit_rows, sca_case

    case = sca_case("bevformer_base")
    assert case.levels == ((116, 200), (58, 100), (29, 50), (15, 25)) and case.bev_hw == (200, 200)
    rows = hit_rows(case.bev_mask, case.bev_hw)
    assert 1.05 < rows["hits"] / 40000 < 1.3, rows
    assert rows["hits"] < rows["fused_rows"] < rows["gather_rows"], rows
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    parser = argparse.ArgumentParser()
    kernel.add_arguments(parser)
    args = parser.parse_args(["--shape", "sca-smoke", "--iters", "1", "--warmup", "0", "--device", "cpu"])
    args.out = str(tmp_path / "kernel.md")
    assert kernel.run(args) == 0
    rows = [line for line in (tmp_path / "kernel.md").read_text().splitlines() if line.startswith("| sca-")]
    cells = {r[7]: r for r in ([c.strip() for c in row.strip("|").split("|")] for row in rows)}
    assert list(cells) == ["gather", "all-queries", "fused"], rows
    assert float(cells["gather"][10]) > 0 and cells["gather"][-1] == "0.00e+00", cells
    all_queries = cells["all-queries"]
    assert float(all_queries[-1]) < 1e-5 and int(all_queries[8]) == 6 * int(all_queries[3]), cells  # N * Q
    assert cells["fused"][10] == "n/a" and "needs the kernel" in cells["fused"][-1], cells


def test_bench_sca_fused_row_under_interpreter(tmp_path):
    """The fused path on the smoke rig under the interpreter (timings meaningless, the diff real)."""
    pytest.importorskip("triton")
    cells = bench_kernel_row_under_interpreter(tmp_path, "sca-smoke", "| fused |")
    assert float(cells[9]) > 0 and float(cells[10]) > 0, cells  # fwd, fwd+bwd ms
    assert int(cells[8]) < 6 * int(cells[3]) and float(cells[-1]) < 1e-5, cells  # rows: tiles a camera hits


def test_bench_sca_sweep_sets_each_camera_kernel_launch(monkeypatch):
    """``--sweep`` on an SCA shape: the fused path again at each ``SCA_SWEEP`` launch of the camera kernels,
    each in ``triton_cameras.LAUNCH`` while it is timed (forward and backward alike), the old settings
    back afterwards; each row counts the rows of its own tiles (BLOCK_Q / 8 x 8)."""
    pytest.importorskip("triton")
    from bevforge.bench import sca as sca_bench
    from bevforge.nn.spatial_cross_attn import SpatialCrossAttention
    from bevforge.ops.msda import triton_cameras

    seen = []

    def fake_time(fn, warmup, iters, device):
        assert triton_cameras.LAUNCH["bwd"] == triton_cameras.LAUNCH["fwd"]
        seen.append(triton_cameras.LAUNCH["fwd"])
        return 1.0

    monkeypatch.setattr(sca_bench, "time_median_ms", fake_time)
    # the fused path on this CPU (its reference): what the kernel would be handed
    monkeypatch.setattr(SpatialCrossAttention, "fused", lambda self, t: self.fuse_cameras != "off")
    saved = dict(triton_cameras.LAUNCH)
    rows = sca_bench.bench_sca("sca-smoke", torch.float32, "cpu", 0, 1, sweep=True)
    assert saved == triton_cameras.LAUNCH
    configs = sca_bench.SCA_SWEEP[1:]
    assert [r["path"] for r in rows] == ["gather", "all-queries", "fused"] + [
        f"fused {b} x {w}" for b, w in configs
    ]
    assert seen == [None] * 6 + [c for c in configs for _ in range(2)]
    assert all(r["max_diff"] < 1e-5 for r in rows), rows
    by_path = {r["path"]: r["rows"] for r in rows}
    assert by_path["fused 16 x 2"] <= by_path["fused 32 x 4"] <= by_path["fused"] <= by_path["fused 128 x 8"]
