"""`bevforge bench {train,infer,data,kernel,eval} ...`: dispatch to ``bevforge.bench.<kind>``.

Each benchmark module defines ``add_arguments(parser)`` and ``run(args) -> int`` and appends its
results (device, commit, command, numbers) to ``benchmarks/results/<kind>.md``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

HELP = "benchmarks: train, infer, data, kernel, eval"
KINDS = ("train", "infer", "data", "kernel", "eval")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    for kind in KINDS:
        sp = sub.add_parser(kind, help=f"{kind} benchmark")
        try:
            module = importlib.import_module(f"bevforge.bench.{kind}")
        except ImportError as e:  # a benchmark whose module is missing reports it when run
            sp.set_defaults(_import_error=str(e))
            continue
        module.add_arguments(sp)


def run(args: argparse.Namespace) -> int:
    if getattr(args, "_import_error", None):
        print(
            f"error: the {args.kind} benchmark could not be imported: {args._import_error}", file=sys.stderr
        )
        return 2
    return int(importlib.import_module(f"bevforge.bench.{args.kind}").run(args) or 0)
