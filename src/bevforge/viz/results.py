"""Render a nuScenes detection submission: one PNG per sample (BEV panel + 6 cameras), optional video.

Predictions come from the official submission JSON (global frame: ``translation``, ``size`` = w, l, h,
``rotation`` wxyz quaternion, ``velocity`` [vx, vy]); each is converted into the sample's lidar frame
with the sample's ``lidar2ego`` / ``ego2global`` from the infos (``structures.boxes.global_to_lidar``).
Ground truth (already in the lidar frame) comes from the infos' ``gt``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pyquaternion import Quaternion

from bevforge.errors import InputError
from bevforge.structures.boxes import global_to_lidar
from bevforge.viz.bev import GT_COLOR, PRED_COLOR, BevView, render_bev
from bevforge.viz.cameras import compose_cameras, compose_sample, draw_boxes_camera, placeholder
from bevforge.viz.video import write_video


class VisInputError(InputError, ValueError):
    """A results/info file or a requested sample is wrong; the message names it and the fix."""


def load_info_samples(info_path: str | Path) -> list[dict[str, Any]]:
    """The per-sample dicts of an info file (``bevforge.data.nuscenes.infos`` when available)."""
    try:
        from bevforge.data.nuscenes.infos import load_infos
    except ImportError:  # pragma: no cover - the data package is part of bevforge
        load_infos = None
    if load_infos is not None:
        return load_infos(info_path).samples
    path = Path(info_path)
    if not path.is_file():
        raise VisInputError(f"{path}: info file not found; create it with `bevforge prepare`")
    obj = json.loads(path.read_text())
    if not isinstance(obj, dict) or "samples" not in obj:
        raise VisInputError(
            f"{path}: not a bevforge info file (no 'samples'); create it with `bevforge prepare`"
        )
    return obj["samples"]


def load_results(results_path: str | Path) -> dict[str, list[dict[str, Any]]]:
    """``results`` of a nuScenes submission JSON: sample_token -> list of box dicts."""
    path = Path(results_path)
    if not path.is_file():
        raise VisInputError(f"{path}: results file not found; write it with `bevforge test`")
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise VisInputError(f"{path}: not valid JSON ({e}); rerun `bevforge test`") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("results"), dict):
        raise VisInputError(
            f"{path}: not a nuScenes submission (expected {{'meta': ..., 'results': {{token: [...]}}}})"
        )
    return obj["results"]


def submission_to_lidar(
    dets: Sequence[dict[str, Any]], sample: dict[str, Any], score_thr: float = 0.0, path: str = ""
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Submission boxes of one sample -> (boxes [K, 9] lidar frame, scores [K], names) above ``score_thr``."""
    ego2global = np.asarray(sample["ego2global"], dtype=np.float64)
    lidar2ego = np.asarray(sample["lidar2ego"], dtype=np.float64)
    boxes, scores, names = [], [], []
    for i, d in enumerate(dets):
        try:
            score = float(d["detection_score"])
            if score < score_thr:
                continue
            box = global_to_lidar(
                np.asarray(d["translation"], dtype=np.float64),
                np.asarray(d["size"], dtype=np.float64),
                Quaternion(d["rotation"]),
                np.asarray(d.get("velocity", (0.0, 0.0)), dtype=np.float64),
                ego2global,
                lidar2ego,
            )
        except KeyError as e:
            raise VisInputError(
                f"{path}: box {i} of sample {sample.get('token')} lacks {e}; "
                "expected translation, size, rotation, velocity, detection_name, detection_score"
            ) from None
        boxes.append(box)
        scores.append(score)
        names.append(str(d.get("detection_name", "")))
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 9), np.asarray(scores), names


def gt_boxes_of(sample: dict[str, Any]) -> np.ndarray:
    """Ground-truth boxes [M, 9] (lidar frame) of the detection classes (``labels >= 0``)."""
    gt = sample.get("gt", {})
    boxes = np.asarray(gt.get("boxes", []), dtype=np.float64).reshape(-1, 9)
    labels = np.asarray(gt.get("labels", [0] * len(boxes)))
    return boxes[labels >= 0] if len(labels) == len(boxes) else boxes


def render_sample(
    sample: dict[str, Any],
    data_root: str | Path,
    pred_boxes: np.ndarray | None,
    gt_boxes: np.ndarray | None,
    pred_scores: np.ndarray | None = None,
    view: BevView | None = None,
    tile_w: int = 480,
) -> Image.Image:
    """BEV panel + the six camera images of ``sample`` (infos dict) with predictions and GT drawn.

    Layout (:func:`compose_sample`): a title bar of ``cameras.TITLE_H`` pixels, then the BEV panel (square,
    side = camera grid height, mapping ``BevView(view.range_m, grid height)``) and the 2 x 3 camera grid.
    """
    images: dict[str, Image.Image] = {}
    for cam, c in sample["cams"].items():
        path = Path(data_root) / c["path"]
        try:
            img = Image.open(path).convert("RGB")
        except (FileNotFoundError, OSError):
            print(f"warning: camera image not readable: {path}", file=sys.stderr)
            img = placeholder((int(c.get("width", 1600)), int(c.get("height", 900))), f"missing: {c['path']}")
        l2i = np.asarray(c["lidar2img"], dtype=np.float64)
        width = max(1, round(2 * img.width / tile_w))  # ~2 px once the tile is resized to tile_w
        if gt_boxes is not None:
            draw_boxes_camera(img, gt_boxes, l2i, GT_COLOR, width=width)
        if pred_boxes is not None:
            draw_boxes_camera(img, pred_boxes, l2i, PRED_COLOR, width=width)
        images[cam] = img
    grid = compose_cameras(images, tile_w=tile_w)
    # the BEV panel is drawn at the grid's height so its pixels keep the documented BevView mapping
    view = BevView(range_m=view.range_m if view else 51.2, size_px=grid.height)
    bev = render_bev(view, pred_boxes=pred_boxes, gt_boxes=gt_boxes, pred_scores=pred_scores)
    title = f"{sample.get('scene_name', '')}  {sample['token']}  pred (green)  GT (red)"
    return compose_sample(bev, grid, title=title)


def select_samples(
    samples: list[dict[str, Any]],
    results: dict[str, Any],
    tokens: Sequence[str] | None,
    scene: str | None,
    info_path: str,
) -> list[dict[str, Any]]:
    """Samples to draw: ``tokens`` (in that order), else a scene's samples in time order, else every
    sample present in ``results`` (info order)."""
    by_token = {s["token"]: s for s in samples}
    if tokens:
        missing = [t for t in tokens if t not in by_token]
        if missing:
            raise VisInputError(
                f"{info_path}: sample token(s) {missing[:3]} not in this info file; "
                "pass --info-file of the split the results were made on"
            )
        return [by_token[t] for t in tokens]
    if scene:
        chosen = [s for s in samples if s.get("scene_name") == scene]
        if not chosen:
            names = sorted({str(s.get("scene_name")) for s in samples})
            raise VisInputError(
                f"{info_path}: no scene named {scene!r}; scenes here: {', '.join(names[:10])}"
            )
        return sorted(chosen, key=lambda s: s.get("timestamp", 0))
    return [s for s in samples if s["token"] in results]


def render_results(
    results_path: str | Path,
    info_path: str | Path,
    data_root: str | Path,
    out_dir: str | Path,
    tokens: Sequence[str] | None = None,
    score_thr: float = 0.3,
    scene: str | None = None,
    video: bool = False,
    max_samples: int | None = None,
) -> list[Path]:
    """Write ``out_dir/<token>.png`` for each chosen sample (and a video of them with ``video``).

    Returns the written paths (PNGs, then the video if any).
    """
    results = load_results(results_path)
    samples = load_info_samples(info_path)
    chosen = select_samples(samples, results, tokens, scene, str(info_path))
    if max_samples is not None:
        chosen = chosen[:max_samples]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for s in chosen:
        boxes, scores, _ = submission_to_lidar(results.get(s["token"], []), s, score_thr, str(results_path))
        img = render_sample(s, data_root, boxes, gt_boxes_of(s), scores)
        path = out / f"{s['token']}.png"
        img.save(path)
        written.append(path)
    if video and written:
        name = scene or "samples"
        written.append(write_video(written, out / name))
    return written
