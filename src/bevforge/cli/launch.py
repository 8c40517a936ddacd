"""`bevforge launch [CONFIG] [-- TRAIN ARGS]`: one-click ``torchrun`` around ``bevforge train``.

Reads (flags win over the environment): DATA_PATH (nuScenes-format root; its infos are in
``DATA_PATH/infos`` unless INFO_DIR is set), CONFIG, GPUS (processes on this node; default: all
visible GPUs, or 1 process on the CPU), WORK_DIR, NNODES (1), NODE_RANK (0), PORT (29500),
MASTER_ADDR (127.0.0.1). For several nodes start the same command on every node with its NODE_RANK
(``tools/slurm_train.sbatch`` does that under Slurm).
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from collections.abc import Mapping

HELP = "one-click torchrun launcher (DATA_PATH, CONFIG, GPUS, NNODES, ...)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    _add_options(p)
    p.add_argument(
        "train_args",
        nargs=argparse.REMAINDER,
        metavar="[CONFIG] [-- TRAIN ARGS]",
        help="the recipe, then arguments passed to `bevforge train` after --",
    )


def _add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None, help="recipe (default: $CONFIG); may also be the first word")
    p.add_argument("--data-path", default=None, help="dataset root (default: $DATA_PATH)")
    p.add_argument("--work-dir", default=None, help="(default: $WORK_DIR, else work_dirs/<recipe>)")
    p.add_argument("--gpus", type=int, default=None, help="processes per node (default: $GPUS / all GPUs)")
    p.add_argument("--nnodes", type=int, default=None)
    p.add_argument("--node-rank", type=int, default=None)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--master-addr", default=None)
    p.add_argument("--dry-run", action="store_true", help="print the torchrun command only")
    p.add_argument(
        "--script",
        default=None,
        help="run this Python training script under torchrun instead of `bevforge train` (its arguments "
        "follow --; CONFIG/DATA_PATH/WORK_DIR are then not added)",
    )


def _late_options(args: argparse.Namespace) -> tuple[argparse.Namespace, list[str], list[str]]:
    """Launcher options written after the recipe (``launch RECIPE --gpus 2 -- ...``) and the rest."""
    words = list(args.train_args or [])
    cut = words.index("--") if "--" in words else len(words)
    head, tail = words[:cut], words[cut + 1 :]
    late = argparse.ArgumentParser(add_help=False)
    _add_options(late)
    late_ns, unknown = late.parse_known_args(head, namespace=argparse.Namespace())
    merged = argparse.Namespace(**vars(args))
    for key, value in vars(late_ns).items():
        if value not in (None, False):
            setattr(merged, key, value)
    return merged, unknown, tail


def _visible_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:
        return 0


def build_command(args: argparse.Namespace, env: Mapping[str, str]) -> list[str]:
    """The ``python -m torch.distributed.run ... -m bevforge.cli.main train ...`` command line."""

    def pick(flag, name: str, default):
        if flag is not None:
            return flag
        return env.get(name) or default

    args, head, extra = _late_options(args)
    positional = None
    if head and not head[0].startswith("-"):
        positional, head = head[0], head[1:]
    extra = head + extra
    launcher = [
        sys.executable, "-m", "torch.distributed.run",
        f"--nnodes={int(pick(args.nnodes, 'NNODES', 1))}",
        f"--node_rank={int(pick(args.node_rank, 'NODE_RANK', 0))}",
        f"--nproc_per_node={int(pick(args.gpus, 'GPUS', 0) or _visible_gpus() or 1)}",
        f"--master_addr={pick(args.master_addr, 'MASTER_ADDR', '127.0.0.1')}",
        f"--master_port={int(pick(args.port, 'PORT', 29500))}",
    ]  # fmt: skip
    nnodes, node_rank = int(pick(args.nnodes, "NNODES", 1)), int(pick(args.node_rank, "NODE_RANK", 0))
    if not 0 <= node_rank < nnodes:
        raise ValueError(f"NODE_RANK={node_rank} must be in [0, NNODES={nnodes})")
    if args.script:
        return [*launcher, args.script, *([positional] if positional else []), *extra]
    config = pick(args.config or positional, "CONFIG", None)
    if not config:
        raise ValueError("no recipe: pass CONFIG (e.g. `bevforge launch bevformer_tiny`) or set CONFIG=...")
    cmd = [*launcher, "-m", "bevforge.cli.main", "train", str(config)]
    work_dir = pick(args.work_dir, "WORK_DIR", "")
    if work_dir:
        cmd += ["--work-dir", str(work_dir)]
    data_path = pick(args.data_path, "DATA_PATH", "")
    if data_path:
        info_dir = env.get("INFO_DIR") or os.path.join(str(data_path), "infos")
        cmd += ["--set", f"data.data_root={data_path}", f"data.info_dir={info_dir}"]
    return cmd + extra


def run(args: argparse.Namespace) -> int:
    try:
        cmd = build_command(args, os.environ)
        args = _late_options(args)[0]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("+ " + shlex.join(cmd), flush=True)
    if args.dry_run:
        return 0
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # torchrun's default too; say it explicitly
    return subprocess.call(cmd, env=env)
