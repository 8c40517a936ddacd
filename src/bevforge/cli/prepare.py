"""`bevforge prepare --data-root DIR --version V --out DIR`: write versioned info files (JSON)."""

from __future__ import annotations

import argparse
import sys

HELP = "write versioned info files for a nuScenes-format dataset"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", required=True, help="nuScenes-format root (holds v1.0-*/, samples/, maps/)")
    p.add_argument("--version", default="v1.0-mini", help="v1.0-mini | v1.0-trainval | v1.0-test")
    p.add_argument("--out", required=True, help="folder for infos_{split}.json")
    p.add_argument(
        "--can-bus-root",
        default="",
        help="folder that CONTAINS can_bus/ (default: the data root or its parent, if present)",
    )


def run(args: argparse.Namespace) -> int:
    from bevforge.data.nuscenes.prepare import DatasetError, create_infos

    try:
        written = create_infos(args.data_root, args.version, args.out, can_bus_root=args.can_bus_root or None)
    except (DatasetError, FileNotFoundError, ValueError) as e:  # the devkit's own (a table's bad JSON...)
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not written:
        print(
            f"error: no split of {args.version} has scenes in {args.data_root}; nothing written",
            file=sys.stderr,
        )
        return 2
    return 0
