"""Ground truth of a split for detection evaluation, from the nuScenes DB tables or from our infos.

Both give a :class:`~bevforge.eval.box_table.GroundTruth` (global frame, devkit semantics):

- :func:`load_gt_from_db` reads the table JSONs directly (no ``NuScenes`` index) and reproduces the
  devkit's ``load_gt``: detection-class annotations of the split's samples (sample-table order, then
  annotation-table order), attribute ('' if none, error if > 1), ``num_pts = lidar + radar``, velocity =
  ``NuScenes.box_velocity()[:2]`` (centred difference, 1.5 s / 3 s gaps -> NaN), the LIDAR_TOP key frame's
  ego pose translation, and bicycle racks.
- :func:`load_gt_from_infos` converts ``infos_{split}.json`` samples (lidar frame, ours) to global boxes
  with each sample's ``lidar2ego`` / ``ego2global``. Velocities flagged invalid become NaN.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from pyquaternion import Quaternion

from bevforge.data.nuscenes.schema import CATEGORY_TO_DETECTION
from bevforge.errors import InputError
from bevforge.eval.box_table import (
    ATTR_INDEX,
    BICYCLE_RACK,
    CLASS_INDEX,
    BoxTable,
    GroundTruth,
    quaternion_multiply,
)


class GroundTruthError(InputError, ValueError):
    """The dataset or info file cannot give ground truth; the message names the file and the fix."""


def _table(data_root: Path, version: str, name: str) -> list[dict[str, Any]]:
    path = data_root / version / f"{name}.json"
    if not path.is_file():
        raise GroundTruthError(
            f"{path}: nuScenes table not found; check --data-root/--version (data.data_root, data.version)"
        )
    return orjson.loads(path.read_bytes())


def split_scenes(data_root: str | Path, version: str, split: str) -> list[str]:
    """Scene names of our split (``splits.json`` first, then mini/trainval/test lists)."""
    from bevforge.data.nuscenes.splits import split_scene_names

    splits = split_scene_names(data_root, version)
    if split not in splits:
        raise GroundTruthError(
            f"split {split!r} is not defined for {data_root}/{version}; choose one of {sorted(splits)}"
        )
    return splits[split]


def box_velocity_xy(
    translation: np.ndarray, ts_us: np.ndarray, cur: np.ndarray, prev_idx: np.ndarray, next_idx: np.ndarray
) -> np.ndarray:
    """[A, 2] devkit ``NuScenes.box_velocity()[:2]`` of annotations ``cur``, m/s.

    ``translation`` [M, 3] / ``ts_us`` [M] (sample timestamps) cover every annotation; ``prev_idx`` /
    ``next_idx`` [A] index them (-1 = none). No neighbour, or a gap > 1.5 s (3 s centred) -> NaN.
    """
    has_prev, has_next = prev_idx >= 0, next_idx >= 0
    first = np.where(has_prev, prev_idx, cur)
    last = np.where(has_next, next_idx, cur)
    pos_diff = translation[last] - translation[first]  # [A, 3]
    time_diff = 1e-6 * ts_us[last].astype(np.float64) - 1e-6 * ts_us[first].astype(np.float64)
    max_diff = np.where(has_prev & has_next, 1.5 * 2, 1.5)
    with np.errstate(divide="ignore", invalid="ignore"):
        vel = pos_diff / time_diff[:, None]
    vel[(~has_prev & ~has_next) | (time_diff > max_diff)] = np.nan
    return vel[:, :2]


_GT_TABLES = (
    "scene",
    "sample",
    "sensor",
    "calibrated_sensor",
    "sample_data",
    "ego_pose",
    "category",
    "instance",
    "attribute",
    "sample_annotation",
)


def load_gt_from_db(
    data_root: str | Path, version: str, split: str, cache: bool | str | Path = True
) -> GroundTruth:
    """Ground truth of ``split`` read from ``<data_root>/<version>/*.json`` (devkit ``load_gt`` semantics).

    ``cache``: keep/reuse the result on disk, invalidated when a table file changes (see
    :mod:`bevforge.eval.gt_cache`; True = ``$BEVFORGE_GT_CACHE`` or ``~/.cache/bevforge/gt``, False = off,
    or a folder).
    """
    from bevforge.eval import gt_cache

    root = Path(data_root)
    scene_names = split_scenes(root, version, split)
    folder = gt_cache.cache_folder(cache)
    files = [root / version / f"{name}.json" for name in (*_GT_TABLES, "splits")]
    key = gt_cache.validity_key(files, split, scene_names) if folder is not None else None
    if folder is None or key is None:
        return _read_gt_tables(root, version, split, scene_names)
    path = gt_cache.cache_path(folder, root, version, split)
    gt = gt_cache.load(path, key)
    if gt is None:
        gt = _read_gt_tables(root, version, split, scene_names)
        gt_cache.save(path, key, gt)
    return gt


def _read_gt_tables(root: Path, version: str, split: str, scene_names: list[str]) -> GroundTruth:
    scenes = {s["token"]: s["name"] for s in _table(root, version, "scene")}
    wanted = set(scene_names)
    samples = _table(root, version, "sample")
    sample_ts = {s["token"]: int(s["timestamp"]) for s in samples}
    tokens = [s["token"] for s in samples if scenes.get(s["scene_token"]) in wanted]
    if not tokens:
        raise GroundTruthError(f"{root / version}: no sample belongs to a scene of split {split!r}")
    index = {t: i for i, t in enumerate(tokens)}
    # LIDAR_TOP key frame -> ego pose translation (devkit: sample['data']['LIDAR_TOP'], last one wins)
    sensors = {s["token"]: s["channel"] for s in _table(root, version, "sensor")}
    cs_channel = {c["token"]: sensors[c["sensor_token"]] for c in _table(root, version, "calibrated_sensor")}
    lidar_pose: dict[str, str] = {}
    for sd in _table(root, version, "sample_data"):
        if (
            sd["is_key_frame"]
            and sd["sample_token"] in index
            and cs_channel[sd["calibrated_sensor_token"]] == ("LIDAR_TOP")
        ):
            lidar_pose[sd["sample_token"]] = sd["ego_pose_token"]
    poses = {p["token"]: p["translation"] for p in _table(root, version, "ego_pose")}
    missing = [t for t in tokens if t not in lidar_pose]
    if missing:
        raise GroundTruthError(
            f"{root / version}: sample {missing[0]} has no LIDAR_TOP key frame sample_data"
        )
    ego_xyz = np.array([poses[lidar_pose[t]] for t in tokens], dtype=np.float64).reshape(-1, 3)

    categories = {c["token"]: c["name"] for c in _table(root, version, "category")}
    inst_cat = {i["token"]: categories[i["category_token"]] for i in _table(root, version, "instance")}
    attr_names = {a["token"]: a["name"] for a in _table(root, version, "attribute")}
    anns = _table(root, version, "sample_annotation")
    ann_index = {a["token"]: i for i, a in enumerate(anns)}

    # per instance once: detection label (-1 none) and bicycle rack
    inst_label = {t: CLASS_INDEX.get(CATEGORY_TO_DETECTION.get(c, ""), -1) for t, c in inst_cat.items()}
    rack_inst = {t for t, c in inst_cat.items() if c == BICYCLE_RACK}
    n_anns = len(anns)
    ann_sample = np.fromiter((index.get(a["sample_token"], -1) for a in anns), np.int64, n_anns)  # [A]
    ann_label = np.fromiter((inst_label[a["instance_token"]] for a in anns), np.int64, n_anns)  # [A]
    ann_rack = np.fromiter((a["instance_token"] in rack_inst for a in anns), bool, n_anns)  # [A]
    in_split = ann_sample >= 0
    det_rows = np.flatnonzero(in_split & (ann_label >= 0))
    # stable by sample (split order), annotation-table order inside a sample, like sample['anns']
    det_rows = det_rows[np.argsort(ann_sample[det_rows], kind="stable")]
    rack_rows = np.flatnonzero(in_split & ann_rack)

    def vectors(sel: list[dict[str, Any]], key: str, width: int) -> np.ndarray:
        if any(len(a[key]) != width for a in sel):
            raise GroundTruthError(
                f"{root / version}/sample_annotation.json: every {key} needs {width} numbers"
            )
        flat = itertools.chain.from_iterable(a[key] for a in sel)
        return np.fromiter(flat, np.float64, len(sel) * width).reshape(len(sel), width)

    def table(rows: np.ndarray, with_velocity: bool) -> BoxTable:
        sel = [anns[i] for i in rows.tolist()]
        n = len(sel)
        attr = np.full(n, -1, dtype=np.int64)
        if with_velocity:
            attr_lists = [a["attribute_tokens"] for a in sel]
            many = next((k for k, t in enumerate(attr_lists) if len(t) > 1), None)
            if many is not None:
                raise GroundTruthError(
                    f"{root / version}/sample_annotation.json: annotation {sel[many]['token']} has "
                    f"{len(attr_lists[many])} attributes; the devkit allows at most one"
                )
            attr = np.fromiter((ATTR_INDEX[attr_names[t[0]]] if t else -1 for t in attr_lists), np.int64, n)
        vel = np.full((n, 2), np.nan)
        if with_velocity and n:
            prev = np.fromiter((ann_index[a["prev"]] if a["prev"] else -1 for a in sel), np.int64, n)
            nxt = np.fromiter((ann_index[a["next"]] if a["next"] else -1 for a in sel), np.int64, n)
            near = np.unique(np.concatenate([rows, prev[prev >= 0], nxt[nxt >= 0]]))  # [U] needed anns
            near_sel = [anns[i] for i in near.tolist()]
            near_ts = np.fromiter((sample_ts[a["sample_token"]] for a in near_sel), np.int64, len(near))
            local = np.full(n_anns, -1, dtype=np.int64)  # annotation index -> row of near
            local[near] = np.arange(len(near))
            vel = box_velocity_xy(
                vectors(near_sel, "translation", 3),
                near_ts,
                local[rows],
                np.where(prev >= 0, local[prev], -1),
                np.where(nxt >= 0, local[nxt], -1),
            )
        pts = np.array([a["num_lidar_pts"] + a["num_radar_pts"] for a in sel])
        if n and pts.dtype.kind not in "iub":
            raise GroundTruthError(
                f"{root / version}/sample_annotation.json: num_lidar_pts/num_radar_pts must be ints"
            )
        return BoxTable(
            sample_idx=ann_sample[rows],
            translation=vectors(sel, "translation", 3),
            size=vectors(sel, "size", 3),
            rotation=vectors(sel, "rotation", 4),
            velocity=vel,
            label=ann_label[rows],
            score=np.full(n, -1.0),
            attr=attr,
            num_pts=pts.astype(np.int64).reshape(n),
        )

    return GroundTruth(
        sample_tokens=tokens,
        ego_xyz=ego_xyz,
        boxes=table(det_rows, True),
        racks=table(rack_rows, False),
        source=f"{root / version} split {split}",
    )


def lidar_boxes_to_global(
    boxes: np.ndarray, lidar2ego: np.ndarray, ego2global: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """[K, 9] our lidar boxes -> global (translation [K,3], size wlh [K,3], rotation wxyz [K,4], vel [K,2]).

    Vectorised :func:`bevforge.structures.boxes.lidar_to_global` (same math, one quaternion per sample).
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 9)
    l2g = np.asarray(ego2global, dtype=np.float64) @ np.asarray(lidar2ego, dtype=np.float64)
    rot = l2g[:3, :3]
    center = b[:, :3] @ rot.T + l2g[:3, 3]  # [K, 3]
    q = Quaternion(matrix=rot, atol=1e-6, rtol=1e-6)
    half = b[:, 6] / 2
    q_yaw = np.stack([np.cos(half), np.zeros_like(half), np.zeros_like(half), np.sin(half)], -1)  # [K, 4]
    quat = quaternion_multiply(np.array(q.elements)[None], q_yaw)  # [K, 4]
    vel3 = np.stack([b[:, 7], b[:, 8], np.zeros(len(b))], -1) @ rot.T  # [K, 3]
    size = b[:, [4, 3, 5]]  # (w, l, h)
    return center, size, quat, vel3[:, :2]


def load_gt_from_infos(samples: list[dict[str, Any]], source: str = "infos") -> GroundTruth:
    """Ground truth from info samples (see docs/CONTRACTS.md): our lidar boxes -> devkit global boxes."""
    tokens, ego, det, racks = [], [], [], []
    for s_idx, s in enumerate(samples):
        tok = s.get("token")
        if not tok or "gt" not in s or "ego2global" not in s or "lidar2ego" not in s:
            raise GroundTruthError(
                f"{source}: sample {s_idx} lacks token/gt/ego2global/lidar2ego; re-run `bevforge prepare`"
            )
        tokens.append(tok)
        e2g = np.asarray(s["ego2global"], dtype=np.float64)
        ego.append(e2g[:3, 3])
        g = s["gt"]
        n = len(g["boxes"])
        if n == 0:
            continue
        center, size, quat, vel = lidar_boxes_to_global(np.asarray(g["boxes"]), s["lidar2ego"], e2g)
        if "velocity_valid" in g:
            vel[~np.asarray(g["velocity_valid"], dtype=bool)] = np.nan
        names = list(g["names"])
        det_names = [CATEGORY_TO_DETECTION.get(nm, nm) for nm in names]
        label = np.array([CLASS_INDEX.get(nm, -1) for nm in det_names], dtype=np.int64)
        attr = np.array([ATTR_INDEX.get(a, -1) if a else -1 for a in g["attribute_names"]], dtype=np.int64)
        unknown = [a for a in g["attribute_names"] if a and a not in ATTR_INDEX]
        if unknown:
            raise GroundTruthError(f"{source}: sample {tok} has unknown attribute {unknown[0]!r}")
        pts = np.asarray(g["num_lidar_pts"], dtype=np.int64) + np.asarray(g["num_radar_pts"], dtype=np.int64)
        table = BoxTable(
            sample_idx=np.full(n, s_idx, dtype=np.int64),
            translation=center,
            size=size,
            rotation=quat,
            velocity=vel,
            label=label,
            score=np.full(n, -1.0),
            attr=attr,
            num_pts=pts,
        )
        det.append(table.select(label >= 0))
        is_rack = np.array([nm in (BICYCLE_RACK, "bicycle_rack") for nm in names], dtype=bool)
        racks.append(table.select(is_rack))
    return GroundTruth(
        sample_tokens=tokens,
        ego_xyz=np.array(ego, dtype=np.float64).reshape(-1, 3),
        boxes=BoxTable.concat(det),
        racks=BoxTable.concat(racks),
        source=source,
    )
