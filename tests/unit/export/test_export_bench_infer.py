"""`bevforge bench infer` on the debug recipe (CPU, eager modes, one frame): a table with provenance."""

from __future__ import annotations

import argparse

import torch

from bevforge.bench import infer


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    infer.add_arguments(parser)
    return parser.parse_args(argv)


def test_bench_infer_debug_eager(tmp_path):
    torch.manual_seed(0)
    out = tmp_path / "infer.md"
    argv = ["configs/bevformer_debug.py", "--modes", "eager,eager-ref", "--iters", "1", "--warmup", "0"]
    args = _args([*argv, "--device", "cpu", "--out", str(out)])
    assert infer.run(args) == 0
    text = out.read_text()
    assert "## inference bevformer_debug" in text and "- commit: " in text
    rows = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| eager")}
    assert set(rows) == {"eager", "eager-ref"}
    assert all("skipped" not in r for r in rows.values()), rows
    assert float(rows["eager"].split("|")[2]) > 0  # p50 ms


def test_bench_infer_rejects_unknown_mode(tmp_path, capsys):
    args = _args(["configs/bevformer_debug.py", "--modes", "tensorrt", "--device", "cpu"])
    assert infer.run(args) == 2
    assert "tensorrt" in capsys.readouterr().out


def test_bench_infer_channels_last(tmp_path):
    torch.manual_seed(0)
    out = tmp_path / "infer.md"
    argv = [
        "configs/bevformer_debug.py",
        "--modes",
        "eager",
        "--iters",
        "1",
        "--warmup",
        "0",
        "--channels-last",
    ]
    assert infer.run(_args([*argv, "--device", "cpu", "--out", str(out)])) == 0
    text = out.read_text()
    assert "channels-last backbone + neck" in text and "skipped" not in text
