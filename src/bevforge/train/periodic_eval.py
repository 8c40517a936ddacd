"""Evaluation every ``train.eval_interval`` epochs through ``bevforge.eval`` (when importable).

Every rank runs scene-whole inference on its share of the validation split
(``build_dataloader(..., distributed=True)``), ``run_inference`` gathers on rank 0, rank 0 scores
the detections (nuScenes metrics against the split's infos), writes ``eval_epoch_N/metrics_det.json``
and an ``{"epoch": N, "eval": {...}}`` record in ``metrics.jsonl``.
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


def _scalars(d: dict[str, Any]) -> dict[str, float]:
    """The top-level numbers of a metrics dict (mAP, NDS, mATE ...)."""
    out: dict[str, float] = {}
    for k, v in d.items():
        if isinstance(v, int | float) and not isinstance(v, bool):
            out[k] = float(v)
        elif k == "tp_errors" and isinstance(v, dict):
            out.update({kk: float(vv) for kk, vv in v.items() if isinstance(vv, int | float)})
    return out


def periodic_eval(
    model: nn.Module, cfg: Config, dist_info: DistInfo, monitor: TrainMonitor, work_dir: Path, epoch: int
) -> dict[str, float]:
    try:
        from bevforge.data.loader import build_dataloader
        from bevforge.eval.gt import load_gt_from_infos
        from bevforge.eval.nuscenes_det import make_submission
        from bevforge.eval.pipeline import score_detection, write_metrics
        from bevforge.eval.runner import run_inference
    except ImportError as e:
        monitor.warn(f"periodic evaluation is not available yet ({e}); training goes on")
        return {}
    split = cfg.data.val_split
    loader = build_dataloader(cfg, split, train=False, distributed=dist_info.distributed)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            results = run_inference(model, loader, cfg)
    finally:
        model.train(was_training)
    metrics: dict[str, float] = {}
    if dist_info.is_main and cfg.model.with_det:
        samples = loader.dataset.samples
        dets = {t: r for t, r in results.items() if "scores" in r}
        submission = make_submission(dets, samples, tuple(cfg.data.classes))
        gt = load_gt_from_infos(samples, source=f"{cfg.data.info_dir}/infos_{split}.json")
        det, _ = score_detection(submission, gt)
        write_metrics(work_dir / f"eval_epoch_{epoch}" / "metrics_det.json", det)
        metrics = _scalars(det)
        shown = ", ".join(
            f"{k} {v:.4f}" for k, v in metrics.items() if k in ("mean_ap", "nd_score", "mAP", "NDS")
        )
        monitor.info(f"eval epoch {epoch} on {split}: {shown or metrics}")
        with open(work_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"epoch": epoch, "eval": metrics}) + "\n")
    barrier()
    return metrics
