"""`bevforge bench kernel` on CPU (reference only there): one tiny run appends a table with provenance."""

from __future__ import annotations

import argparse

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
