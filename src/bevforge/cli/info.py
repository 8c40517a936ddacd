"""`bevforge info CONFIG [--set k=v ...]`: parameter counts per part of a recipe's model.

The model is built on PyTorch's ``meta`` device (shapes only: no memory, no init cost, no weights read).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from torch import nn

from bevforge.config import load_config

HELP = "parameter counts per part of a recipe's model"

#: labels for BEVFormer's parts; any other child module of a model is listed under its attribute name
PARTS: tuple[tuple[str, str], ...] = (
    ("backbone", "backbone"),
    ("neck", "neck"),
    ("encoder", "encoder"),
    ("decoder/head", "det_head"),
    ("seg head", "seg_head"),
)


def parameter_counts(model: nn.Module) -> dict[str, dict[str, int]]:
    """``{part: {"params": n, "trainable": n}}`` for every child module with parameters, plus ``"total"``."""
    out: dict[str, dict[str, int]] = {}
    labels = dict((attr, label) for label, attr in PARTS)
    for attr, part in model.named_children():
        if next(part.parameters(), None) is None:
            continue  # parameter-free parts (GridMask) are not worth a row
        out[labels.get(attr, attr)] = {
            "params": sum(p.numel() for p in part.parameters()),
            "trainable": sum(p.numel() for p in part.parameters() if p.requires_grad),
        }
    out["total"] = {
        "params": sum(p.numel() for p in model.parameters()),
        "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    return out


def build_for_counting(cfg) -> nn.Module:
    """The recipe's model on the meta device, with any pretrained file ignored (shapes are what count)."""
    from bevforge.models.build import build_model

    cfg.model.backbone.pretrained = ""
    with torch.device("meta"):
        return build_model(cfg)


def format_counts(name: str, counts: dict[str, dict[str, int]]) -> str:
    lines = [f"{name}", f"{'part':<14}{'params':>14}{'trainable':>14}"]
    for label, c in counts.items():
        lines.append(f"{label:<14}{c['params'] / 1e6:>13.3f}M{c['trainable'] / 1e6:>13.3f}M")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="recipe name (bevformer_tiny) or path (configs/bevformer_tiny.py)")
    p.add_argument("--set", dest="overrides", nargs="*", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true", help="print exact counts as JSON")


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)  # a ConfigError is reported by cli/main.py
    try:
        model = build_for_counting(cfg)
    except ValueError as e:  # a module rejected a setting (e.g. backbone depth)
        print(f"error: {e}", file=sys.stderr)
        return 2
    counts = parameter_counts(model)
    print(json.dumps(counts, indent=2) if args.json else format_counts(cfg.name, counts))
    return 0
