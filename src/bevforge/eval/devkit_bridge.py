"""Run the official nuscenes-devkit ``DetectionEval`` on exactly the inputs our metrics see.

:func:`devkit_metrics` feeds the devkit's own code (``load_prediction``, ``add_center_dist``,
``filter_eval_boxes``, ``DetectionEval.evaluate`` -> ``accumulate`` / ``calc_ap`` / ``calc_tp``) with our
:class:`GroundTruth` (from infos or the DB) through a tiny read-only stand-in for the ``NuScenes`` object
(samples, LIDAR_TOP ego poses, bicycle racks). :func:`devkit_db_metrics` runs the untouched end-to-end
pipeline on a real ``NuScenes`` DB (needs a devkit split name: mini_val, val, ...).
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bevforge.eval.box_table import ATTRIBUTE_NAMES, DETECTION_NAMES, GroundTruth
from bevforge.eval.metrics import DetectionEvalConfig


class _EvalDB:
    """The part of ``NuScenes`` that ``add_center_dist`` / ``filter_eval_boxes`` read."""

    def __init__(self, gt: GroundTruth) -> None:
        self.tables: dict[str, dict[str, dict[str, Any]]] = {
            "sample": {},
            "sample_data": {},
            "ego_pose": {},
            "sample_annotation": {},
        }
        racks_by_sample: dict[int, list[str]] = {}
        for i in range(len(gt.racks)):
            tok = f"rack-{i}"
            racks_by_sample.setdefault(int(gt.racks.sample_idx[i]), []).append(tok)
            self.tables["sample_annotation"][tok] = {
                "category_name": "static_object.bicycle_rack",
                "translation": gt.racks.translation[i].tolist(),
                "size": gt.racks.size[i].tolist(),
                "rotation": gt.racks.rotation[i].tolist(),
            }
        for s, token in enumerate(gt.sample_tokens):
            self.tables["sample"][token] = {"data": {"LIDAR_TOP": token}, "anns": racks_by_sample.get(s, [])}
            self.tables["sample_data"][token] = {"ego_pose_token": token}
            self.tables["ego_pose"][token] = {"translation": gt.ego_xyz[s].tolist()}

    def get(self, table: str, token: str) -> dict[str, Any]:
        return self.tables[table][token]


def gt_eval_boxes(gt: GroundTruth) -> Any:
    """Our ground truth as the devkit's ``EvalBoxes`` of ``DetectionBox`` (split order)."""
    from nuscenes.eval.common.data_classes import EvalBoxes
    from nuscenes.eval.detection.data_classes import DetectionBox

    boxes = EvalBoxes()
    b = gt.boxes
    per_sample: list[list[Any]] = [[] for _ in gt.sample_tokens]
    for i in range(len(b)):
        token = gt.sample_tokens[int(b.sample_idx[i])]
        attr = int(b.attr[i])
        per_sample[int(b.sample_idx[i])].append(
            DetectionBox(
                sample_token=token,
                translation=tuple(b.translation[i].tolist()),
                size=tuple(b.size[i].tolist()),
                rotation=tuple(b.rotation[i].tolist()),
                velocity=tuple(b.velocity[i].tolist()),
                num_pts=int(b.num_pts[i]),
                detection_name=DETECTION_NAMES[int(b.label[i])],
                detection_score=-1.0,
                attribute_name=ATTRIBUTE_NAMES[attr] if attr >= 0 else "",
            )
        )
    for token, sample_boxes in zip(gt.sample_tokens, per_sample):
        boxes.add_boxes(token, sample_boxes)
    return boxes


def _devkit_config(cfg: DetectionEvalConfig) -> Any:
    from nuscenes.eval.detection.data_classes import DetectionConfig

    return DetectionConfig.deserialize(cfg.serialize())


def devkit_metrics(
    gt: GroundTruth, submission: dict[str, Any] | str | Path, cfg: DetectionEvalConfig | None = None
) -> dict[str, Any]:
    """The devkit's ``metrics_summary`` for ``submission`` against ``gt`` (the official code path)."""
    from nuscenes.eval.common.loaders import add_center_dist, filter_eval_boxes, load_prediction
    from nuscenes.eval.detection.data_classes import DetectionBox
    from nuscenes.eval.detection.evaluate import DetectionEval

    cfg = cfg or DetectionEvalConfig()
    dk_cfg = _devkit_config(cfg)
    start = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(submission) if not isinstance(submission, dict) else Path(tmp) / "results.json"
        if isinstance(submission, dict):
            path.write_text(json.dumps(submission))
        pred_boxes, meta = load_prediction(
            str(path), dk_cfg.max_boxes_per_sample, DetectionBox, verbose=False
        )
    gt_boxes = gt_eval_boxes(gt)
    assert set(pred_boxes.sample_tokens) == set(gt_boxes.sample_tokens), (
        "Samples in split doesn't match samples in predictions."
    )
    db = _EvalDB(gt)
    pred_boxes = filter_eval_boxes(db, add_center_dist(db, pred_boxes), dk_cfg.class_range)
    gt_boxes = filter_eval_boxes(db, add_center_dist(db, gt_boxes), dk_cfg.class_range)
    ev = DetectionEval.__new__(DetectionEval)
    ev.cfg, ev.verbose = dk_cfg, False
    ev.gt_boxes, ev.pred_boxes, ev.sample_tokens = gt_boxes, pred_boxes, gt_boxes.sample_tokens
    metrics, _ = ev.evaluate()
    summary = metrics.serialize()
    summary["eval_time"] = time.time() - start
    summary["meta"] = meta
    return _plain(summary)


def devkit_db_metrics(
    data_root: str | Path, version: str, eval_set: str, result_path: str | Path
) -> dict[str, Any]:
    """The untouched official pipeline: ``NuScenes`` + ``DetectionEval(...)`` + ``evaluate()``."""
    from nuscenes import NuScenes
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    nusc = NuScenes(version=version, dataroot=str(data_root), verbose=False)
    with tempfile.TemporaryDirectory() as out:
        ev = DetectionEval(
            nusc,
            config_factory("detection_cvpr_2019"),
            str(result_path),
            eval_set,
            output_dir=out,
            verbose=False,
        )
        metrics, _ = ev.evaluate()
    summary = metrics.serialize()
    summary["meta"] = ev.meta
    return _plain(summary)


def _plain(obj: Any) -> Any:
    """defaultdicts / numpy scalars -> plain dicts and floats."""
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, np.floating | np.integer):
        return obj.item()
    return obj


def _json_round_trip(obj: Any) -> Any:
    return json.loads(json.dumps(_plain(obj)))


def max_abs_difference(ours: dict[str, Any], theirs: dict[str, Any]) -> tuple[float, str]:
    """Largest |ours - theirs| over every number of two metric summaries (NaN == NaN), and where."""
    worst, where = 0.0, ""
    ours, theirs = _json_round_trip(ours), _json_round_trip(theirs)  # float keys (0.5) == JSON keys ("0.5")

    def walk(a: Any, b: Any, path: str) -> None:
        nonlocal worst, where
        if isinstance(a, dict):
            for k in a:
                if k in ("eval_time", "cfg", "meta"):
                    continue
                if k not in b:
                    worst, where = float("inf"), f"{path}.{k} missing"
                    continue
                walk(a[k], b[k], f"{path}.{k}")
        elif isinstance(a, int | float):
            fa, fb = float(a), float(b)
            if np.isnan(fa) and np.isnan(fb):
                return
            d = abs(fa - fb) if not (np.isnan(fa) or np.isnan(fb)) else float("inf")
            if d > worst:
                worst, where = d, path

    walk(ours, theirs, "")
    return worst, where
