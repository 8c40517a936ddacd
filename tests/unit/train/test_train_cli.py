"""`bevforge train` argument handling and the `bevforge launch` command line."""

from __future__ import annotations

import argparse

import pytest

from bevforge.cli import launch
from bevforge.cli import train as train_cli
from bevforge.cli.main import main
from bevforge.config import Config


def test_unknown_set_key_fails_with_did_you_mean(capsys) -> None:
    assert main(["train", "bevformer_debug", "--set", "train.lrr=1e-3"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'train.lrr'" in err and "Did you mean: train.lr" in err


def test_flags_override_the_recipe() -> None:
    p = argparse.ArgumentParser()
    train_cli.add_arguments(p)
    args = p.parse_args(
        ["x", "--amp", "bf16", "--grad-ckpt", "--max-iters", "5", "--seed", "3", "--resume", "--set", "a=1"]
    )
    assert args.resume == "auto" and args.overrides == ["a=1"]
    cfg = Config()
    train_cli.apply_flags(cfg, args)
    assert (cfg.train.amp, cfg.train.grad_ckpt, cfg.train.max_iters, cfg.train.seed) == ("bf16", True, 5, 3)
    assert p.parse_args(["x", "--resume", "w/epoch_2.pth"]).resume == "w/epoch_2.pth"


def _launch_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    launch.add_arguments(p)
    return p.parse_args(argv)


def test_launch_reads_environment() -> None:
    env = {"DATA_PATH": "/d", "CONFIG": "bevformer_tiny", "GPUS": "4", "NNODES": "2", "NODE_RANK": "1",
           "PORT": "1234", "MASTER_ADDR": "10.0.0.1", "WORK_DIR": "w"}  # fmt: skip
    cmd = launch.build_command(_launch_args(["--", "--amp", "bf16"]), env)
    i = cmd.index("torch.distributed.run")
    assert cmd[i + 1 : i + 6] == [
        "--nnodes=2", "--node_rank=1", "--nproc_per_node=4", "--master_addr=10.0.0.1", "--master_port=1234",
    ]  # fmt: skip
    tail = cmd[cmd.index("train") :]
    assert tail == ["train", "bevformer_tiny", "--work-dir", "w", "--set", "data.data_root=/d",
                    "data.info_dir=/d/infos", "--amp", "bf16"]  # fmt: skip


def test_launch_flags_after_recipe_and_errors() -> None:
    cmd = launch.build_command(_launch_args(["bevformer_debug", "--gpus", "2", "--", "--max-iters", "3"]), {})
    assert "--nproc_per_node=2" in cmd and cmd[-3:] == ["bevformer_debug", "--max-iters", "3"]
    assert "--nproc_per_node=1" in launch.build_command(_launch_args(["bevformer_debug"]), {})  # CPU: 1
    with pytest.raises(ValueError, match="no recipe"):
        launch.build_command(_launch_args([]), {})
    with pytest.raises(ValueError, match="NODE_RANK=2"):
        launch.build_command(_launch_args(["r"]), {"NNODES": "2", "NODE_RANK": "2"})


def test_dist_train_script_calls_the_launcher() -> None:
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[3]
    env = {**os.environ, "PYTHON": sys.executable, "CONFIG": "bevformer_debug", "DATA_PATH": "/data/x",
           "GPUS": "3"}  # fmt: skip
    out = subprocess.run([str(root / "tools/dist_train.sh"), "--dry-run", "--", "--amp", "off"], env=env,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "--nproc_per_node=3" in out.stdout and "data.info_dir=/data/x/infos --amp off" in out.stdout
    syntax = subprocess.run(
        ["bash", "-n", str(root / "tools/slurm_train.sbatch")], capture_output=True, text=True
    )
    assert syntax.returncode == 0, syntax.stderr
