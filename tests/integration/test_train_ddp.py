"""Distributed training on the CPU with gloo: 2 "nodes" over loopback through ``bevforge launch``
(NNODES=2, NODE_RANK 0 and 1 started concurrently, 1 process each).

Uses the contract stand-in (``tests/unit/train/train_standin.py``) through ``launch --script``; the
2-process run of the real debug recipe is in ``test_train_debug_recipe.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from bevforge.doctor.smoke import free_port
from bevforge.train.checkpoint import load_checkpoint

SCRIPT = Path(__file__).resolve().parents[1] / "unit" / "train" / "train_standin.py"


def _env(**kw: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", PORT=str(free_port()), **kw)
    return env


def _launch(env: dict[str, str], work_dir: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "bevforge.cli.main", "launch", "--script", str(SCRIPT), "--", str(work_dir),
           "--samples", "8", "--set", "train.epochs=1", "train.ckpt_iter_interval=1"]  # fmt: skip
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _check(work_dir: Path) -> None:
    recs = [json.loads(x) for x in (work_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in recs] == [1, 2]  # 8 samples / (2 ranks x batch 2), rank 0 writes once
    assert all(r["loss"] == r["loss"] for r in recs)  # finite (all-reduced mean over ranks)
    ck = load_checkpoint(work_dir / "latest.pth")
    assert ck["world_size"] == 2 and len(ck["rng"]) == 2 and ck["global_iter"] == 2
    assert not torch_equal(ck["rng"][0]["torch"], ck["rng"][1]["torch"])  # per-rank RNG streams kept


def torch_equal(a, b) -> bool:
    return bool((a == b).all()) if a.shape == b.shape else False


def test_two_nodes_over_loopback_via_launcher(tmp_path) -> None:
    env = _env(GPUS="1", NNODES="2")
    procs = [_launch({**env, "NODE_RANK": str(r)}, tmp_path) for r in (0, 1)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(outs)
    assert "--nnodes=2 --node_rank=1" in outs[1]
    _check(tmp_path)


def test_two_process_kill9_resume_reproduces_the_curve(tmp_path) -> None:
    """Per-rank RNG states and the distributed sampler position come back exactly after kill -9."""

    def run(work_dir: Path, *extra: str) -> int:
        cmd = [sys.executable, "-m", "bevforge.cli.main", "launch", "--gpus", "2", "--script", str(SCRIPT),
               "--", str(work_dir), "--samples", "16", "--set", "train.ckpt_iter_interval=1",
               "train.deterministic=true", *extra]  # fmt: skip
        return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300).returncode

    assert run(tmp_path / "ref") == 0
    assert run(tmp_path / "run", "--kill-at-call", "5") != 0  # iteration 6 = 2nd of epoch 2
    assert run(tmp_path / "run", "--resume", "auto") == 0

    def curve(d: Path) -> list[tuple[int, float]]:
        return [
            (r["iter"], r["loss"]) for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())
        ]

    assert len(curve(tmp_path / "ref")) == 8
    assert curve(tmp_path / "run") == curve(tmp_path / "ref")
