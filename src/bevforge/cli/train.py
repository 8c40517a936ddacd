"""`bevforge train CONFIG [--work-dir DIR] [--amp ...] [--resume [auto|PATH]] [--set k=v ...] ...`.

One process on a CPU or GPU, or one of N processes under ``torchrun`` (see ``bevforge launch``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "train a recipe (1 CPU/GPU, or N under torchrun)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="recipe name (bevformer_tiny) or path (configs/bevformer_tiny.py)")
    p.add_argument("--work-dir", default="", help="output folder (default: work_dirs/<recipe name>)")
    p.add_argument("--amp", choices=("bf16", "fp16", "off", "auto"), default=None, help="mixed precision")
    p.add_argument(
        "--resume",
        nargs="?",
        const="auto",
        default="",
        metavar="auto|PATH",
        help="resume (bare flag or 'auto': newest valid checkpoint in the work dir)",
    )
    p.add_argument("--load-from", default="", metavar="CKPT", help="initial weights (not a resume)")
    p.add_argument("--set", dest="overrides", nargs="*", action="extend", default=[], metavar="KEY=VALUE")
    p.add_argument(
        "--grad-ckpt",
        action="store_true",
        help="activation checkpointing of the BEV encoder and the image backbone (less memory, slower); "
        "the backbone alone: --set model.backbone.with_cp=true",
    )
    p.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across GPUs")
    p.add_argument("--auto-scale-lr", action="store_true", help="lr x global batch / train.base_batch_size")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument(
        "--deterministic",
        action="store_true",
        help="deterministic algorithms where PyTorch has them (torch.use_deterministic_algorithms, "
        "warn_only): ops that sum with atomics, the grid_sample and MSDA/DCN kernel backwards among them, "
        "warn instead",
    )
    p.add_argument("--max-iters", type=int, default=None, help="stop after N iterations")
    p.add_argument("--keep-last", type=int, default=None, help="keep the K newest epoch_N.pth (0 = all)")
    p.add_argument("--no-progress", action="store_true", help="plain log lines even on a terminal")


def apply_flags(cfg, args: argparse.Namespace) -> None:
    """Command-line flags win over the recipe and ``--set``."""
    t = cfg.train
    if args.amp is not None:
        t.amp = args.amp
    if args.grad_ckpt:
        t.grad_ckpt = True
    if args.sync_bn:
        t.sync_bn = True
    if args.auto_scale_lr:
        t.auto_scale_lr = True
    if args.seed is not None:
        t.seed = args.seed
    if args.deterministic:
        t.deterministic = True
    if args.max_iters is not None:
        t.max_iters = args.max_iters
    if args.keep_last is not None:
        t.keep_last = args.keep_last


def run(args: argparse.Namespace) -> int:
    from bevforge.config import ConfigError, load_config
    from bevforge.train.checkpoint import CheckpointError
    from bevforge.train.errors import TrainingStopped

    cfg = load_config(args.config, args.overrides)  # ConfigError: reported by cli/main.py
    apply_flags(cfg, args)
    work_dir = Path(args.work_dir or Path("work_dirs") / cfg.name)
    from bevforge.train.trainer import train

    try:
        train(
            cfg,
            work_dir,
            resume=args.resume,
            load_from=args.load_from,
            progress=False if args.no_progress else None,
        )
    except TrainingStopped as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except (ConfigError, CheckpointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
