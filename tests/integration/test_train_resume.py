"""kill -9 mid-training, then ``--resume auto``: the loss curve equals the uninterrupted run's, exactly.

Also: a kill during a checkpoint save leaves the previous checkpoint loadable. CPU, deterministic,
the contract stand-in of ``tests/unit/train/train_standin.py`` (num_workers=0), one process.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from bevforge.train.checkpoint import find_resume_checkpoint, load_checkpoint

SCRIPT = Path(__file__).resolve().parents[1] / "unit" / "train" / "train_standin.py"
SETS = ["--set", "train.ckpt_iter_interval=2", "train.deterministic=true"]


def _train(work_dir: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(SCRIPT), str(work_dir), *SETS, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def _losses(work_dir: Path) -> list[tuple[int, float, float]]:
    recs = [json.loads(x) for x in (work_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["iter"], r["loss"], r["lr"]) for r in recs]


def test_kill9_then_resume_auto_reproduces_the_loss_curve(tmp_path) -> None:
    ref = _train(tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr
    # forward call 5 = iteration 6, after the mid-epoch checkpoint at iteration 4 (6 iterations/epoch)
    killed = _train(tmp_path / "run", "--kill-at-call", "5")
    assert killed.returncode == -signal.SIGKILL
    ck = load_checkpoint(tmp_path / "run" / "latest.pth")
    assert (ck["epoch"], ck["iter_in_epoch"]) == (0, 4)
    resumed = _train(tmp_path / "run", "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
    expected = _losses(tmp_path / "ref")
    assert len(expected) == 12
    assert _losses(tmp_path / "run") == expected  # bit-identical losses and lrs, iterations 1..12


def test_kill_during_checkpoint_save_keeps_previous_checkpoint(tmp_path) -> None:
    # the 2nd save (iteration 4) is torn by kill -9 half way through writing the file
    killed = _train(tmp_path, "--die-in-save", "2")
    assert killed.returncode == -signal.SIGKILL
    assert list(tmp_path.glob(".latest.pth.*.tmp"))  # the torn temp file ...
    assert load_checkpoint(tmp_path / "latest.pth")["global_iter"] == 2  # ... never replaced the good one
    assert find_resume_checkpoint(tmp_path) == tmp_path / "latest.pth"
    resumed = _train(tmp_path, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert not list(tmp_path.glob(".*.tmp"))  # cleaned up at start
    assert load_checkpoint(tmp_path / "latest.pth")["global_iter"] == 12
