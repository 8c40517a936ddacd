"""`bevforge doctor [--json] [--config CFG]`: environment, GPU and dataset checks (``bevforge.doctor``)."""

from __future__ import annotations

import argparse
import json
import sys

HELP = "check Python/torch/CUDA/NCCL/Triton, GPUs, dataset and infos"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print one machine-readable JSON object")
    p.add_argument(
        "--config", default=None, help="recipe name or path: also check its data, infos, checkpoints"
    )
    p.add_argument(
        "--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides"
    )
    p.add_argument("--no-nccl", action="store_true", help="skip the multi-GPU NCCL all-reduce smoke test")
    p.add_argument(
        "--no-kernels",
        action="store_true",
        help="skip the Triton kernels' smoke test (each kernel forward + backward against its reference on "
        "the first GPU; compiles them, ~1 min the first time)",
    )


def _print_rich(report) -> None:  # noqa: ANN001 - DoctorReport, imported lazily
    from rich.console import Console
    from rich.table import Table

    style = {"ok": "green", "warn": "yellow", "fail": "bold red"}
    table = Table(title="bevforge doctor")
    table.add_column("check")
    table.add_column("status")
    table.add_column("detail")
    table.add_column("fix")
    for c in report.checks:
        table.add_row(c.name, f"[{style[c.status]}]{c.status}[/]", c.detail, c.fix, style=None)
    console = Console()
    console.print(table)
    console.print(f"[bold]{report.summary}[/]")


def _print_plain(report) -> None:  # noqa: ANN001
    width = max(len(c.name) for c in report.checks)
    for c in report.checks:
        print(f"[{c.status:4s}] {c.name:<{width}}  {c.detail}")
        if c.fix:
            print(f"       {'':<{width}}  fix: {c.fix}")
    print(report.summary)


def run(args: argparse.Namespace) -> int:
    from bevforge.doctor import run_checks

    report = run_checks(
        config=args.config, nccl=not args.no_nccl, overrides=args.overrides, kernels=not args.no_kernels
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    elif sys.stdout.isatty():
        _print_rich(report)
    else:
        _print_plain(report)
    return report.exit_code()
