"""`bevforge bench kernel` on CPU (reference only there): one tiny run appends a table with provenance."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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
    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(repo / "src"))
    env.pop("BEVFORGE_KERNELS", None)
    out = tmp_path / "kernel.md"
    cmd = [sys.executable, "-m", "bevforge.cli.main", "bench", "kernel", "--shape", "tiny"]
    cmd += ["--iters", "1", "--warmup", "0", "--device", "cpu", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, cwd=repo, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    row = next(line for line in out.read_text().splitlines() if line.startswith("| tiny |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    triton_vs_fp32, _ = (float(x) for x in cells[-1].split(" / "))
    assert triton_vs_fp32 < 1e-5, cells
    locations_ms, kernel_ms = re.fullmatch(r"([\d.]+) -> ([\d.]+) \([\d.]+x\)", cells[-2]).groups()
    assert float(locations_ms) > 0 and float(kernel_ms) > 0, cells
