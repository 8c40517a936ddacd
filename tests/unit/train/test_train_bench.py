"""`bevforge bench train`: timing loop on the stand-in and the markdown row."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from bevforge.bench.train import append_result, benchmark

sys.path.insert(0, str(Path(__file__).parent))
import train_standin as si  # noqa: E402


def test_benchmark_numbers_and_results_row(tmp_path) -> None:
    torch.manual_seed(0)
    res = benchmark(si.tiny_config(), warmup=1, iters=3, model=si.StandInModel(),
                    criterion=si.StandInCriterion(), loader=si.make_loader(4, 2))  # fmt: skip
    assert res["samples_per_s"] > 0 and res["step_ms"] > 0 and 0 <= res["data_share"] <= 1
    assert res["global_batch"] == 2 and res["peak_mem_gib"] is None and res["amp"] == "off"
    out = tmp_path / "train.md"
    append_result(out, res, "bevforge bench train x", "abc123")
    append_result(out, res, "bevforge bench train y", "abc123")
    lines = out.read_text().splitlines()
    assert lines[0].startswith("# Training throughput") and sum("| abc123 |" in x for x in lines) == 2
    assert "`bevforge bench train y`" in lines[-1]
