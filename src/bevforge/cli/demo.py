"""`bevforge demo [--out DIR] [--quick]`: synthetic data -> prepare -> train the debug recipe -> test ->
pictures -> HTML report (``bevforge.train.demo``)."""

from __future__ import annotations

import argparse
import sys

HELP = "synthetic data -> prepare -> train debug recipe -> test -> visualise -> report"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="demo_out", help="output folder (data/ and work/ inside)")
    p.add_argument("--quick", action="store_true", help="tiny data and model, a few iterations (~1 min)")
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="epochs of the debug recipe (default 4, the recipe's: ~5 min on 2 idle CPU cores)",
    )
    p.add_argument("--no-progress", action="store_true", help="plain log lines even on a terminal")


def run(args: argparse.Namespace) -> int:
    from bevforge.config import ConfigError
    from bevforge.train.demo import DemoPlan, run_demo
    from bevforge.train.errors import TrainingStopped

    plan = DemoPlan.make(args.out, args.quick, args.epochs)
    if args.no_progress:
        plan.progress = False
    try:
        run_demo(plan)
    except (TrainingStopped, ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)
    return 0
