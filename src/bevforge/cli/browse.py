"""`bevforge browse --config CFG --out DIR`: ground truth after the training pipeline's transforms."""

from __future__ import annotations

import argparse
import sys

HELP = "ground truth after the training pipeline's transforms"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="recipe name or path")
    p.add_argument("--out", required=True, help="output folder: <token>.png per sample")
    p.add_argument("--num", type=int, default=8, help="number of samples to draw")
    p.add_argument("--split", default="train", help="info split to read (infos_<split>.json)")
    p.add_argument("--shuffle", action="store_true", help="random samples instead of the first ones")
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE")


def run(args: argparse.Namespace) -> int:
    from bevforge.config import ConfigError, load_config
    from bevforge.viz.browse import browse

    try:
        cfg = load_config(args.config, args.overrides)
        paths = browse(cfg, args.out, num=args.num, split=args.split, shuffle=args.shuffle)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} picture(s) to {args.out}")
    return 0 if paths else 1
