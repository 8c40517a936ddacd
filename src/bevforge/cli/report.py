"""`bevforge report WORK_DIR`: one self-contained HTML run report (``bevforge.viz.report``)."""

from __future__ import annotations

import argparse
import sys

HELP = "HTML run report of a work dir"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("work_dir", help="folder written by `bevforge train` (metrics.jsonl, config.json, ...)")
    p.add_argument("--out", default=None, help="output HTML path (default WORK_DIR/report.html)")
    p.add_argument("--max-images", type=int, default=6, help="visualised samples (vis/*.png) to embed")


def run(args: argparse.Namespace) -> int:
    from bevforge.viz.report import write_report

    try:
        path = write_report(args.work_dir, args.out, args.max_images)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0
