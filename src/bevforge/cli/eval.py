"""`bevforge eval RESULTS_JSON --data-root DIR --version V --split S [--devkit]`: score any submission."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "score a nuScenes detection submission JSON"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", help="submission JSON ({meta, results: {sample_token: [boxes]}})")
    p.add_argument(
        "--data-root", default=None, help="nuScenes-format dataset root (ground truth from its tables)"
    )
    p.add_argument("--version", default=None, help="v1.0-mini, v1.0-trainval, ...")
    p.add_argument("--split", default="val", help="our split name: train / val (splits.json first)")
    p.add_argument("--infos", default=None, help="take the ground truth from this infos_<split>.json instead")
    p.add_argument("--devkit", action="store_true", help="also run the official devkit on the same inputs")
    p.add_argument(
        "--out", default=None, help="write metrics JSON here (default: metrics_det.json beside RESULTS)"
    )


def run(args: argparse.Namespace) -> int:
    from bevforge.eval.devkit_bridge import max_abs_difference
    from bevforge.eval.gt import GroundTruthError
    from bevforge.eval.nuscenes_det import SubmissionError
    from bevforge.eval.pipeline import eval_results, write_metrics
    from bevforge.eval.report import print_comparison, print_detection

    try:
        ours, theirs = eval_results(
            args.results, args.data_root, args.version, args.split, args.infos, args.devkit
        )
    except (GroundTruthError, SubmissionError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print_detection(ours)
    out = Path(args.out) if args.out else Path(args.results).parent / "metrics_det.json"
    write_metrics(out, ours)
    print(f"wrote {out}")
    if theirs is not None:
        worst, where = max_abs_difference(ours, theirs)
        print_comparison(ours, theirs, worst, where)
        return 0 if worst <= 1e-6 else 1
    return 0
