"""nuScenes detection submissions: build (from our lidar-frame detections), validate, load and score.

Submission format (official): ``{"meta": {use_camera, use_lidar, use_radar, use_map, use_external},
"results": {sample_token: [box, ...]}}`` with boxes ``{sample_token, translation [3] (global m),
size [3] (w, l, h m), rotation [4] (w, x, y, z), velocity [2] (global m/s), detection_name,
detection_score, attribute_name}``. Every sample token of the split must be present (empty lists are
fine); at most 500 boxes per sample.

Attributes follow the official BEVFormer/mmdet3d ``_format_bbox``: speed > 0.2 m/s -> cars, trucks,
buses, trailers, construction vehicles ``vehicle.moving``, bicycles/motorcycles ``cycle.with_rider``,
others the default; otherwise pedestrians ``pedestrian.standing``, buses ``vehicle.stopped``, others
the default (``DEFAULT_ATTRIBUTE``).

Scoring a file (``evaluate(path)`` / :func:`read_submission`) reads it with the column reader of
:mod:`bevforge.eval.submission_reader` (no Python dict per box; about a third of the time of
``orjson.loads`` alone on 240k boxes, less with an idle second core), which steps aside for anything it
does not recognise; :func:`parse_submission` (dicts) is the general path and gives the detailed errors.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from bevforge.config import DET_CLASSES
from bevforge.errors import InputError
from bevforge.eval.box_table import ATTR_INDEX, CLASS_INDEX, BoxTable, GroundTruth
from bevforge.eval.gt import lidar_boxes_to_global
from bevforge.eval.metrics import DetectionEvalConfig, detection_metrics
from bevforge.eval.submission_reader import read_submission_columns, value_problems
from bevforge.io import atomic_write_text

DEFAULT_ATTRIBUTE: dict[str, str] = {
    "car": "vehicle.parked",
    "pedestrian": "pedestrian.moving",
    "trailer": "vehicle.parked",
    "truck": "vehicle.parked",
    "bus": "vehicle.moving",
    "motorcycle": "cycle.without_rider",
    "construction_vehicle": "vehicle.parked",
    "bicycle": "cycle.without_rider",
    "barrier": "",
    "traffic_cone": "",
}
_VEHICLES = ("car", "construction_vehicle", "bus", "truck", "trailer")
MAX_BOXES_PER_SAMPLE = 500
CAMERA_META = {
    "use_camera": True,
    "use_lidar": False,
    "use_radar": False,
    "use_map": False,
    "use_external": True,
}


class SubmissionError(InputError, ValueError):
    """A submission is malformed; the message names the file, sample token, box and field, and the fix."""


def attribute_name(detection_name: str, speed_mps: float) -> str:
    """The official BEVFormer/mmdet3d attribute of a detection from its class and speed."""
    if speed_mps > 0.2:
        if detection_name in _VEHICLES:
            return "vehicle.moving"
        if detection_name in ("bicycle", "motorcycle"):
            return "cycle.with_rider"
        return DEFAULT_ATTRIBUTE[detection_name]
    if detection_name == "pedestrian":
        return "pedestrian.standing"
    if detection_name == "bus":
        return "vehicle.stopped"
    return DEFAULT_ATTRIBUTE[detection_name]


def make_submission(
    detections: dict[str, dict[str, Any]],
    samples: list[dict[str, Any]],
    classes: tuple[str, ...] = DET_CLASSES,
    meta: dict[str, Any] | None = None,
    max_boxes: int = MAX_BOXES_PER_SAMPLE,
) -> dict[str, Any]:
    """Official submission dict from per-sample detections in our convention.

    ``detections[token]`` = ``{"boxes": [K, 9] lidar frame (structures/boxes.py), "scores": [K],
    "labels": [K] index into ``classes``}`` (tensors or arrays). ``samples`` are the info dicts of the split
    (their ``lidar2ego`` / ``ego2global`` place the boxes); every one gets an entry (empty if not
    detected). Boxes beyond ``max_boxes`` per sample are dropped lowest score first.
    """
    results: dict[str, list[dict[str, Any]]] = {}
    for s in samples:
        token = s["token"]
        det = detections.get(token)
        if det is None or len(det["scores"]) == 0:
            results[token] = []
            continue
        boxes = np.asarray(_numpy(det["boxes"]), dtype=np.float64).reshape(-1, 9)
        scores = np.asarray(_numpy(det["scores"]), dtype=np.float64).reshape(-1)
        labels = np.asarray(_numpy(det["labels"]), dtype=np.int64).reshape(-1)
        keep = np.argsort(-scores, kind="stable")[:max_boxes]
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
        center, size, quat, vel = lidar_boxes_to_global(boxes, s["lidar2ego"], s["ego2global"])
        out = []
        for k in range(len(scores)):
            name = classes[int(labels[k])]
            speed = math.hypot(float(vel[k, 0]), float(vel[k, 1]))
            out.append(
                {
                    "sample_token": token,
                    "translation": center[k].tolist(),
                    "size": size[k].tolist(),
                    "rotation": quat[k].tolist(),
                    "velocity": vel[k].tolist(),
                    "detection_name": name,
                    "detection_score": float(scores[k]),
                    "attribute_name": attribute_name(name, speed),
                }
            )
        results[token] = out
    return {"meta": dict(meta or CAMERA_META), "results": results}


def _numpy(x: Any) -> Any:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else x


def write_submission(path: str | Path, submission: dict[str, Any]) -> Path:
    """Write the submission JSON atomically."""
    return atomic_write_text(path, json.dumps(submission) + "\n")


def _read_bytes(path: Path) -> bytes:
    if not path.is_file():
        raise SubmissionError(f"{path}: results file not found; run `bevforge test` to make one")
    return path.read_bytes()


def load_submission(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    return _decode(_read_bytes(path), path)


def _decode(data: bytes, path: Path) -> dict[str, Any]:
    try:
        return orjson.loads(data)  # ~5x faster than json on large submissions
    except orjson.JSONDecodeError:
        pass  # e.g. NaN velocities, which Python's json writes and the devkit accepts
    try:
        return json.loads(data)
    except json.JSONDecodeError as e:
        raise SubmissionError(f"{path}: not valid JSON ({e}); re-create it with `bevforge test`") from None


def _box_error(src: str, token: str, k: int, field: str, problem: str) -> SubmissionError:
    return SubmissionError(
        f"{src}: results[{token!r}][{k}].{field} {problem}; fix the box (official nuScenes submission format)"
    )


def _check_value(value: Any, width: int, src: str, token: str, k: int, field: str) -> None:
    """Raise a clear error if ``value`` is not ``width`` numbers (``width`` 0: one number)."""
    if width == 0:
        try:
            float(value) if field != "num_pts" else int(value)
        except (TypeError, ValueError):
            raise _box_error(src, token, k, field, f"must be a number, got {value!r}") from None
        return
    if not isinstance(value, list | tuple) or len(value) != width:
        raise _box_error(src, token, k, field, f"must be a list of {width} numbers, got {value!r}")
    try:
        [float(x) for x in value]
    except (TypeError, ValueError):
        raise _box_error(src, token, k, field, f"must hold numbers, got {value!r}") from None


class _BoxLocator:
    """Flat box index -> (sample token, index inside the sample) for error messages."""

    def __init__(self, keys: list[str], sample_of_box: np.ndarray, starts: np.ndarray) -> None:
        self.keys, self.sample_of_box, self.starts = keys, sample_of_box, starts

    def __getitem__(self, i: int) -> tuple[str, int]:
        s = int(self.sample_of_box[i])
        return self.keys[s], i - int(self.starts[s])


def _check_box(box: Any, token: str, k: int, src: str) -> None:
    """The detailed checks of one box (called only when the fast path saw something odd)."""
    if not isinstance(box, dict):
        raise _box_error(src, token, k, "", "must be an object")
    for key in _REQUIRED:
        if key not in box:
            raise _box_error(src, token, k, key, "is missing")
    if box["sample_token"] != token:
        raise _box_error(src, token, k, "sample_token", f"is {box['sample_token']!r}, not its key")
    name = box["detection_name"]
    if name not in CLASS_INDEX:
        raise _box_error(src, token, k, "detection_name", f"{name!r} is not one of {list(CLASS_INDEX)}")
    attr = box["attribute_name"]
    if attr != "" and attr not in ATTR_INDEX:
        raise _box_error(src, token, k, "attribute_name", f"{attr!r} is not '' or one of {list(ATTR_INDEX)}")


_REQUIRED = (
    "sample_token",
    "translation",
    "size",
    "rotation",
    "velocity",
    "detection_name",
    "attribute_name",
)


def parse_submission(
    submission: dict[str, Any],
    gt: GroundTruth,
    max_boxes: int = MAX_BOXES_PER_SAMPLE,
    source: str = "submission",
) -> BoxTable:
    """Validate a submission against the split of ``gt`` and flatten it (JSON order kept).

    Rejected, with the token, box and field named: missing ``meta``/``results``, missing or extra sample
    tokens, > ``max_boxes`` boxes, missing keys, non-finite translation/size/rotation/score, sizes <= 0,
    zero quaternions, unknown detection/attribute names, a box whose ``sample_token`` differs from its key.
    """
    src = source
    if not isinstance(submission, dict) or "results" not in submission or "meta" not in submission:
        raise SubmissionError(f"{src}: needs top-level 'meta' and 'results' keys (official nuScenes format)")
    results = submission["results"]
    if not isinstance(results, dict):
        raise SubmissionError(f"{src}: 'results' must map sample_token -> list of boxes")
    index = gt.token_index()
    missing = [t for t in gt.sample_tokens if t not in results]
    if missing:
        raise SubmissionError(
            f"{src}: {len(missing)} sample token(s) of the split have no entry, e.g. {missing[0]!r}; "
            f"every sample needs a (possibly empty) list ({gt.source})"
        )
    extra = [t for t in results if t not in index]
    if extra:
        raise SubmissionError(
            f"{src}: sample token {extra[0]!r} is not in the evaluated split ({gt.source}); "
            f"evaluate on the split the results were made for"
        )
    boxes_all: list[Any] = []
    keys, counts = list(results), []
    for token in keys:
        boxes = results[token]
        if not isinstance(boxes, list):
            raise SubmissionError(f"{src}: results[{token!r}] must be a list of boxes")
        if len(boxes) > max_boxes:
            raise SubmissionError(f"{src}: results[{token!r}] has {len(boxes)} boxes; at most {max_boxes}")
        boxes_all.extend(boxes)
        counts.append(len(boxes))
    starts = np.cumsum([0, *counts])[:-1]
    sample_of_box = np.repeat(np.arange(len(keys)), counts)  # [N] position in `keys`
    where = _BoxLocator(keys, sample_of_box, starts)
    try:  # column-wise fast path; anything odd goes through the detailed per-box check
        own = [keys[i] for i in sample_of_box.tolist()]
        ok = [b["sample_token"] for b in boxes_all] == own
        labels = [CLASS_INDEX[b["detection_name"]] for b in boxes_all]
        attrs = [ATTR_INDEX[a] if a != "" else -1 for a in (b["attribute_name"] for b in boxes_all)]
        cols: dict[str, list[Any]] = {
            "t": [b["translation"] for b in boxes_all],
            "z": [b["size"] for b in boxes_all],
            "r": [b["rotation"] for b in boxes_all],
            "v": [b["velocity"] for b in boxes_all],
            "c": [b.get("detection_score", -1.0) for b in boxes_all],
            "p": [b.get("num_pts", -1) for b in boxes_all],
        }
    except (KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        for i, box in enumerate(boxes_all):
            _check_box(box, *where[i], src)
        raise SubmissionError(f"{src}: a box is malformed (official nuScenes submission format)")
    index_of_key = np.array([index[t] for t in keys], dtype=np.int64)
    cols["s"] = index_of_key[sample_of_box].tolist()
    cols["n"], cols["a"] = labels, attrs
    n = len(cols["s"])
    arrays: dict[str, np.ndarray] = {}
    for key, field, width, dtype in (
        ("t", "translation", 3, np.float64),
        ("z", "size", 3, np.float64),
        ("r", "rotation", 4, np.float64),
        ("v", "velocity", 2, np.float64),
        ("c", "detection_score", 0, np.float64),
        ("p", "num_pts", 0, np.int64),
    ):
        try:
            values = cols[key]
            if width:  # flatten first: much faster than np.array on a list of lists
                good = set(map(len, values)) <= {width}
                arr = np.fromiter(
                    itertools.chain.from_iterable(values), dtype=dtype, count=n * width if good else 0
                )
                good = good and arr.shape == (n * width,)
            else:
                arr = np.array(values, dtype=dtype)
                good = arr.shape == (n,)
        except (ValueError, TypeError):
            good = False
        if not good:  # find the offending box
            for i, value in enumerate(cols[key]):
                _check_value(value, width, src, *where[i], field)
            raise SubmissionError(f"{src}: the {field} of some box is malformed (official submission format)")
        arrays[key] = arr
    table = BoxTable(
        sample_idx=np.array(cols["s"], dtype=np.int64),
        translation=arrays["t"].reshape(n, 3),
        size=arrays["z"].reshape(n, 3),
        rotation=arrays["r"].reshape(n, 4),
        velocity=arrays["v"].reshape(n, 2),
        label=np.array(cols["n"], dtype=np.int64),
        score=arrays["c"].reshape(n),
        attr=np.array(cols["a"], dtype=np.int64),
        num_pts=arrays["p"].reshape(n),
    )
    for field, bad, problem in value_problems(table):
        if bad.any():
            token, k = where[int(np.nonzero(bad)[0][0])]
            raise _box_error(src, token, k, field, problem)
    return table


def evaluate(
    submission: dict[str, Any] | str | Path,
    gt: GroundTruth,
    cfg: DetectionEvalConfig | None = None,
    source: str = "",
) -> dict[str, Any]:
    """Score a submission (dict or JSON path) against ``gt``: the devkit's ``metrics_summary`` layout."""
    cfg = cfg or DetectionEvalConfig()
    if isinstance(submission, dict):
        preds = parse_submission(submission, gt, cfg.max_boxes_per_sample, source or "submission")
        meta = submission["meta"]
    else:
        preds, meta = read_submission(submission, gt, cfg.max_boxes_per_sample, source)
    metrics = detection_metrics(gt, preds, cfg)
    metrics["meta"] = dict(meta) if isinstance(meta, dict) else meta
    return metrics


def read_submission(
    path: str | Path, gt: GroundTruth, max_boxes: int = MAX_BOXES_PER_SAMPLE, source: str = ""
) -> tuple[BoxTable, Any]:
    """Validated boxes and ``meta`` of a submission file: the column reader
    (:mod:`bevforge.eval.submission_reader`, ~10x faster on large files) when it recognises the file,
    else ``load_submission`` + :func:`parse_submission` (same table, or the detailed error)."""
    path = Path(path)
    data = _read_bytes(path)
    fast = read_submission_columns(data, gt, max_boxes)
    if fast is not None:
        return fast
    submission = _decode(data, path)
    return parse_submission(submission, gt, max_boxes, source or str(path)), submission["meta"]
