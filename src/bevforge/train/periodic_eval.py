"""Evaluation every ``train.eval_interval`` epochs through ``bevforge.eval.pipeline.evaluate_model``.

Every rank runs scene-whole inference on its share of the validation split, rank 0 scores it
(nuScenes detection metrics, BEV-segmentation IoU when the model has a seg head) into
``work_dir/eval_epoch_N/`` and appends an ``{"epoch": N, "eval": {...}}`` record to ``metrics.jsonl``.
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

HEADLINE = ("mean_ap", "nd_score", "miou")


def _scalars(d: Any, prefix: str = "") -> dict[str, float]:
    """The top-level numbers of a metrics dict (mean_ap, nd_score, the TP errors ...)."""
    out: dict[str, float] = {}
    if not isinstance(d, dict):
        return out
    for k, v in d.items():
        if isinstance(v, int | float) and not isinstance(v, bool):
            out[f"{prefix}{k}"] = float(v)
        elif k == "tp_errors" and isinstance(v, dict):
            out.update({f"{prefix}{kk}": float(vv) for kk, vv in v.items() if isinstance(vv, int | float)})
    return out


def periodic_eval(
    model: nn.Module, cfg: Config, dist_info: DistInfo, monitor: TrainMonitor, work_dir: Path, epoch: int
) -> dict[str, float]:
    try:
        from bevforge.eval.pipeline import evaluate_model
    except ImportError as e:
        monitor.warn(f"periodic evaluation is not available yet ({e}); training goes on")
        return {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            summary = evaluate_model(model, cfg, work_dir / f"eval_epoch_{epoch}")
    finally:
        model.train(was_training)
    metrics: dict[str, float] = {}
    if dist_info.is_main:
        metrics = {**_scalars(summary.get("det")), **_scalars(summary.get("seg"), "seg_")}
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k.removeprefix("seg_") in HEADLINE)
        monitor.info(f"eval epoch {epoch} on {cfg.data.val_split}: {shown or metrics}")
        with open(work_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"epoch": epoch, "eval": metrics}) + "\n")
    barrier()
    return metrics
