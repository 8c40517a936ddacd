"""`bevforge config CONFIG [--set k=v ...]`: print the resolved config as JSON."""

from __future__ import annotations

import argparse
import json

from bevforge.config import config_to_dict, load_config

HELP = "print the resolved config of a recipe"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="recipe name (bevformer_tiny) or path (configs/bevformer_tiny.py)")
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)  # ConfigError: reported by cli/main.py
    print(json.dumps(config_to_dict(cfg), indent=2))
    return 0
