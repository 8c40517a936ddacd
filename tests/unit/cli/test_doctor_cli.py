"""`bevforge doctor` command line: JSON output and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from bevforge.cli.main import main


def test_doctor_cli_json_cpu(capsys) -> None:
    code = main(["doctor", "--json", "--no-nccl"])
    out = json.loads(capsys.readouterr().out)
    assert {"usable", "cpu_only", "checks", "gpus", "versions", "summary"} <= set(out)
    if not torch.cuda.is_available():
        assert code == 0 and out["cpu_only"] is True and out["usable"] is True
        assert "CPU only" in out["summary"]
        cuda = next(c for c in out["checks"] if c["name"] == "cuda")
        assert cuda["status"] == "warn" and "CPU only" in cuda["detail"] and cuda["fix"]


def test_doctor_cli_missing_data_root_exit_1(tmp_path: Path, capsys) -> None:
    recipe = tmp_path / "recipe_cli_doctor.py"
    recipe.write_text(
        "from bevforge.config import Config\n\n\n"
        "def config() -> Config:\n"
        "    cfg = Config()\n"
        f"    cfg.data.data_root = {str(tmp_path / 'missing')!r}\n"
        f"    cfg.data.info_dir = {str(tmp_path / 'missing' / 'infos')!r}\n"
        "    return cfg\n"
    )
    code = main(["doctor", "--config", str(recipe), "--no-nccl"])
    out = capsys.readouterr().out  # not a TTY under pytest: plain text
    assert code == 1
    assert "[fail] data root" in out and "fix:" in out and "bevforge prepare" in out
    assert "NOT usable" in out


def test_doctor_cli_rich_table(capsys) -> None:
    from bevforge.cli.doctor import _print_rich
    from bevforge.doctor import Check, DoctorReport

    report = DoctorReport(checks=[Check("data root", "fail", "missing /x", "run `bevforge synth`")])
    _print_rich(report)
    out = capsys.readouterr().out
    assert "data root" in out and "fail" in out and "bevforge synth" in out and "NOT usable" in out
