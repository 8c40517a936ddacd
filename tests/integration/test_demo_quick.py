"""`bevforge demo --quick` end to end on the CPU: every stage runs and leaves its output."""

from __future__ import annotations

import json

import torch

from bevforge.cli.main import main


def test_demo_quick_runs_every_stage(tmp_path, capsys) -> None:
    torch.manual_seed(0)
    assert main(["demo", "--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    for stage in ("1/5", "2/5", "3/5", "4/5", "5/5"):
        assert f"{stage}" in out and "not available" not in out
    assert (tmp_path / "data" / "infos" / "infos_train.json").is_file()
    work = tmp_path / "work"
    recs = [json.loads(x) for x in (work / "metrics.jsonl").read_text().splitlines()]
    assert recs[-1]["iter"] == 6
    assert torch.load(work / "latest.pth", weights_only=True)["global_iter"] == 6
    assert (work / "test" / "metrics_det.json").is_file() and "mAP" in out
    assert (work / "report.html").is_file() and list((work / "vis").glob("*.png"))
