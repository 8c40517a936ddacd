"""Evaluation every ``train.eval_interval`` epochs, through ``bevforge.eval.runner`` when it is importable.

Runs on rank 0 over the whole validation split (scenes stay whole, so temporal history is exact);
the other ranks wait at a barrier. Metrics go to ``metrics.jsonl`` as an ``{"eval": ...}`` record.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bevforge.config import Config
from bevforge.train.distributed import DistInfo, barrier
from bevforge.train.monitor import TrainMonitor


def _numbers(d: Any, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(_numbers(v, f"{prefix}{k}/" if isinstance(v, dict) else f"{prefix}{k}"))
    elif isinstance(d, int | float) and not isinstance(d, bool):
        out[prefix.rstrip("/")] = float(d)
    return out


def periodic_eval(
    model: nn.Module, cfg: Config, dist_info: DistInfo, monitor: TrainMonitor, work_dir: Path, epoch: int
) -> dict[str, float]:
    metrics: dict[str, float] = {}
    if dist_info.is_main:
        try:
            metrics = _evaluate(model, cfg, work_dir, epoch)
        except ImportError as e:
            monitor.warn(f"periodic evaluation is not available yet ({e}); training goes on")
        if metrics:
            monitor.info(
                "eval epoch {}: {}".format(epoch, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
            )
            with open(work_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps({"epoch": epoch, "eval": metrics}) + "\n")
    barrier()
    return metrics


def _evaluate(model: nn.Module, cfg: Config, work_dir: Path, epoch: int) -> dict[str, float]:
    from bevforge.data.loader import build_dataloader
    from bevforge.eval import runner

    loader = build_dataloader(cfg, cfg.data.val_split, train=False, distributed=False)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            results = runner.run_inference(model, loader, cfg)
    finally:
        model.train(was_training)
    metrics: dict[str, float] = {"num_samples": float(len(results))}
    score = getattr(runner, "evaluate_results", None)
    if callable(score):
        out_dir = work_dir / f"eval_epoch_{epoch}"
        metrics.update(_numbers(score(results, cfg, out_dir)))
    return metrics
