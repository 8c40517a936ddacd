"""`bevforge test CONFIG CKPT`: inference over a split, submission JSON, metrics (1 process or torchrun)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "inference over a split, submission JSON and metrics"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="recipe name (bevformer_tiny) or path (configs/bevformer_tiny.py)")
    p.add_argument("checkpoint", help="checkpoint written by `bevforge train` (a dict with key 'model')")
    p.add_argument("--out", default="results_nusc.json", help="submission JSON; metrics_*.json go beside it")
    p.add_argument("--metrics", default="det", help="comma-separated: det, seg (default: det)")
    p.add_argument("--devkit", action="store_true", help="also run the official devkit on the same inputs")
    p.add_argument("--show-dir", default=None, help="draw predictions vs ground truth into this folder")
    p.add_argument("--split", default=None, help="split to evaluate (default: the config's data.val_split)")
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE")


def run(args: argparse.Namespace) -> int:
    from bevforge.config import ConfigError, load_config
    from bevforge.eval.devkit_bridge import max_abs_difference
    from bevforge.eval.nuscenes_det import SubmissionError
    from bevforge.eval.pipeline import CheckpointError, test_checkpoint
    from bevforge.eval.report import print_comparison, print_detection, print_seg

    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    unknown = [m for m in metrics if m not in ("det", "seg")]
    if unknown:
        print(f"error: --metrics {unknown} unknown; use det, seg or det,seg", file=sys.stderr)
        return 2
    try:
        cfg = load_config(args.config, args.overrides)
        summary = test_checkpoint(
            cfg, args.checkpoint, args.out, metrics, args.devkit, args.show_dir, args.split
        )
    except (ConfigError, CheckpointError, SubmissionError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not summary:
        return 0  # a non-zero rank under torchrun
    if "det" in summary:
        print_detection(summary["det"])
        print(f"wrote {args.out} and {Path(args.out).parent / 'metrics_det.json'}")
    if "devkit" in summary:
        worst, where = max_abs_difference(summary["det"], summary["devkit"])
        print_comparison(summary["det"], summary["devkit"], worst, where)
    if "seg" in summary:
        print_seg(summary["seg"])
    return 0
