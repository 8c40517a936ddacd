"""`bevforge bench kernel --shape bevpool-tiny` on CPU (reference only there), and the bench's camera rig."""

from __future__ import annotations

import argparse

import pytest
import torch
from kernel_harness import bench_kernel_row_under_interpreter

from bevforge.bench import kernel


def test_bench_bev_pool_tiny_appends_markdown(tmp_path, monkeypatch):
    torch.manual_seed(0)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    out = tmp_path / "kernel.md"
    parser = argparse.ArgumentParser()
    kernel.add_arguments(parser)
    args = parser.parse_args(["--shape", "bevpool-tiny", "--iters", "1", "--warmup", "0", "--device", "cpu"])
    args.out = str(out)
    assert kernel.run(args) == 0
    text = out.read_text()
    assert text.count("## BEV pool kernel") == 1 and "## MSDA kernel" not in text
    row = next(line for line in text.splitlines() if line.startswith("| bevpool-tiny |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "float32" and int(cells[7]) > 0 and float(cells[10]) > 0  # points, reference fwd ms
    assert "triton skipped" in cells[-1]


def test_bench_frustum_cells_follow_the_camera_ring():
    shape = kernel.BEV_POOL_SHAPES["bevdet-pool"]
    assert (shape.N, shape.D, shape.fH, shape.fW, shape.C, shape.H, shape.W) == (6, 59, 16, 44, 64, 128, 128)
    cells = kernel.frustum_cells(kernel.BevPoolShape("t", 1, 6, 10, 4, 8, 4, 16, 16), "cpu")
    assert cells.shape == (1, 6, 10, 4, 8)
    valid = cells >= 0
    assert 0 < int(valid.sum()) < cells.numel()  # upward rays leave the z range
    # camera 0 looks along +x: its points lie right of the grid centre (col >= 8), near the middle row
    cam0 = cells[0, 0][valid[0, 0]]
    assert bool((cam0 % 16 >= 8).all()) and bool(((cam0 // 16 - 7.5).abs() < 6).all())
    # camera 3 (yaw 180 deg) looks along -x
    cam3 = cells[0, 3][valid[0, 3]]
    assert bool((cam3 % 16 < 8).all())


def test_bench_bev_pool_triton_column_under_interpreter(tmp_path):
    """The Triton branch of the bench (timings meaningless here, the diff column is real), in a subprocess."""
    pytest.importorskip("triton")
    cells = bench_kernel_row_under_interpreter(tmp_path, "bevpool-tiny")
    triton_vs_fp32, ref_vs_fp32 = (float(x) for x in cells[-1].split(" / "))
    assert triton_vs_fp32 < 1e-5 and ref_vs_fp32 == 0.0 and float(cells[11]) > 0  # triton fwd ms
