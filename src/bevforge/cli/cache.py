"""`bevforge cache CONFIG [--set k=v ...]`: build the pre-resized uint8 image cache of a recipe's splits.

The cache goes to ``data.image_cache`` (or ``--out``); training then reads images from the memmap
instead of decoding JPEGs (set ``data.image_cache`` to the same folder).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "build the pre-resized image cache"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="recipe name or path")
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default="", help="cache folder (default: data.image_cache)")
    p.add_argument("--splits", default="", help="comma-separated splits (default: train and val splits)")
    p.add_argument(
        "--threads", type=int, default=0, help="samples decoded at once (default: this process's CPU cores)"
    )


def run(args: argparse.Namespace) -> int:
    from bevforge.config import load_config
    from bevforge.data.nuscenes.decode_pool import usable_cores
    from bevforge.data.nuscenes.image_cache import build_image_cache
    from bevforge.data.nuscenes.infos import load_infos

    cfg = load_config(args.config, args.overrides)  # ConfigError: reported by cli/main.py
    out = args.out or cfg.data.image_cache
    if not out:
        print("error: no cache folder: pass --out DIR or --set data.image_cache=DIR", file=sys.stderr)
        return 2
    splits = [s for s in args.splits.split(",") if s] or [cfg.data.train_split, cfg.data.val_split]
    if args.threads < 0:
        print(f"error: --threads must be >= 0 (0: one per CPU core), got {args.threads}", file=sys.stderr)
        return 2
    threads = args.threads or usable_cores()
    for split in dict.fromkeys(splits):
        path = Path(cfg.data.info_dir) / f"infos_{split}.json"
        # InfoFormatError, ImageDecodeError, ImageCacheError (InputErrors): one error line from cli/main.py
        info = load_infos(path, expect_version=cfg.data.version)
        build_image_cache(
            info.samples, cfg.data.data_root, cfg.data.cameras, cfg.data.img_scale, out, split,
            threads=threads,
        )  # fmt: skip
    print(f"done; train with --set data.image_cache={out}")
    return 0
