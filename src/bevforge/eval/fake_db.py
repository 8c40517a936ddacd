"""A random nuScenes-format annotation DB for metric tests and the evaluation benchmark.

Writes only what the devkit's loader and ``DetectionEval`` read (the 13 tables + a map PNG; one
LIDAR_TOP key frame per sample, no sensor files). Objects move linearly, belong to every category family
(detection classes, non-detection categories, bicycle racks with bicycles inside them), carry 0/1
attributes, some have 0 points, some lie beyond the class ranges. Scene names come from the devkit's
split lists so ``mini_val`` / ``val`` select them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from nuscenes.utils.splits import create_splits_scenes
from PIL import Image
from pyquaternion import Quaternion

from bevforge.data.nuscenes.schema import CATEGORY_TO_DETECTION
from bevforge.geometry.transforms import pose_from_record
from bevforge.structures.boxes import global_to_lidar

_CATEGORIES = [*CATEGORY_TO_DETECTION, "animal", "movable_object.debris", "static_object.bicycle_rack"]
_ATTRS = {
    "vehicle": ["vehicle.moving", "vehicle.stopped", "vehicle.parked"],
    "cycle": ["cycle.with_rider", "cycle.without_rider"],
    "pedestrian": ["pedestrian.moving", "pedestrian.standing", "pedestrian.sitting_lying_down"],
}
_ALL_ATTRS = [a for v in _ATTRS.values() for a in v]
_SIZES = {"car": (1.9, 4.6, 1.7), "pedestrian": (0.7, 0.7, 1.8), "bicycle": (0.6, 1.7, 1.3)}


def _attr_family(category: str) -> str | None:
    det = CATEGORY_TO_DETECTION.get(category, "")
    if det == "pedestrian":
        return "pedestrian"
    if det in ("bicycle", "motorcycle"):
        return "cycle"
    if det in ("car", "truck", "bus", "trailer", "construction_vehicle"):
        return "vehicle"
    return None


def write_fake_db(
    root: str | Path,
    num_scenes: int = 2,
    samples_per_scene: int = 4,
    objects_per_scene: int = 12,
    seed: int = 0,
    version: str = "v1.0-mini",
    full_tracks: bool = False,
) -> dict[str, Any]:
    """Write the DB under ``root/version``; returns ``{"version", "eval_set", "split", "sample_tokens"}``.

    ``eval_set`` is the devkit split name (``mini_val`` / ``val``); ``split`` our name (``val``).
    ``full_tracks``: every object spans its whole scene (all GT velocities known).
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    out = root / version
    out.mkdir(parents=True, exist_ok=True)
    splits = create_splits_scenes()
    eval_set = "mini_val" if version.endswith("mini") else "val"
    names = splits[eval_set]
    if num_scenes > len(names):
        raise ValueError(f"at most {len(names)} scenes for {eval_set}")
    t: dict[str, list[dict[str, Any]]] = {k: [] for k in ("instance", "ego_pose", "scene", "sample")}
    t["sample_data"], t["sample_annotation"] = [], []
    t["category"] = [
        {"token": f"cat-{c}", "name": c, "description": "", "index": i} for i, c in enumerate(_CATEGORIES)
    ]
    t["attribute"] = [{"token": f"attr-{a}", "name": a, "description": ""} for a in _ALL_ATTRS]
    t["visibility"] = [{"token": str(i), "level": f"v{i}", "description": ""} for i in range(1, 5)]
    t["sensor"] = [{"token": "sensor-lidar", "channel": "LIDAR_TOP", "modality": "lidar"}]
    t["calibrated_sensor"] = [
        {
            "token": "cs-lidar",
            "sensor_token": "sensor-lidar",
            "translation": [0.94, 0.0, 1.84],
            "rotation": list(Quaternion(axis=[0, 0, 1], angle=math.pi / 2).elements),
            "camera_intrinsic": [],
        }
    ]
    t["log"] = [
        {
            "token": "log-0",
            "logfile": "fake",
            "vehicle": "n0",
            "date_captured": "2026-01-01",
            "location": "boston-seaport",
        }
    ]
    t["map"] = [
        {"token": "map-0", "log_tokens": ["log-0"], "category": "semantic_prior", "filename": "maps/fake.png"}
    ]
    (root / "maps").mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(root / "maps" / "fake.png")
    tokens: list[str] = []
    ts0 = 1_600_000_000_000_000
    for s in range(num_scenes):
        scene_tok = f"scene-tok-{s}"
        sample_toks = [f"s{s}-{k}" for k in range(samples_per_scene)]
        tokens += sample_toks
        start = np.array([rng.uniform(-500, 500), rng.uniform(-500, 500), 0.0])
        heading = rng.uniform(-math.pi, math.pi)
        ego_speed = rng.uniform(0, 8)
        for k, tok in enumerate(sample_toks):
            ts = ts0 + s * 100_000_000 + k * 500_000
            pos = start + ego_speed * 0.5 * k * np.array([math.cos(heading), math.sin(heading), 0.0])
            t["ego_pose"].append(
                {
                    "token": f"ep-{tok}",
                    "timestamp": ts,
                    "translation": pos.tolist(),
                    "rotation": list(Quaternion(axis=[0, 0, 1], angle=heading + 0.01 * k).elements),
                }
            )
            t["sample_data"].append(
                {
                    "token": f"sd-{tok}",
                    "sample_token": tok,
                    "ego_pose_token": f"ep-{tok}",
                    "calibrated_sensor_token": "cs-lidar",
                    "timestamp": ts,
                    "fileformat": "pcd",
                    "is_key_frame": True,
                    "height": 0,
                    "width": 0,
                    "filename": f"samples/LIDAR_TOP/{tok}.pcd.bin",
                    "prev": f"sd-{sample_toks[k - 1]}" if k else "",
                    "next": f"sd-{sample_toks[k + 1]}" if k + 1 < len(sample_toks) else "",
                }
            )
            t["sample"].append(
                {
                    "token": tok,
                    "timestamp": ts,
                    "prev": sample_toks[k - 1] if k else "",
                    "next": sample_toks[k + 1] if k + 1 < len(sample_toks) else "",
                    "scene_token": scene_tok,
                }
            )
        t["scene"].append(
            {
                "token": scene_tok,
                "name": names[s],
                "description": "",
                "log_token": "log-0",
                "nbr_samples": samples_per_scene,
                "first_sample_token": sample_toks[0],
                "last_sample_token": sample_toks[-1],
            }
        )
        _add_objects(t, rng, s, sample_toks, start, objects_per_scene, full_tracks)
    for name, rows in t.items():
        (out / f"{name}.json").write_text(json.dumps(rows))
    return {"version": version, "eval_set": eval_set, "split": "val", "sample_tokens": tokens}


def _add_objects(
    t: dict[str, list[dict[str, Any]]],
    rng: np.random.Generator,
    s: int,
    sample_toks: list[str],
    start: np.ndarray,
    count: int,
    full_tracks: bool,
) -> None:
    for o in range(count):
        # round robin over the categories: every detection class is present once count >= 19
        cat = (
            _CATEGORIES[(o - 2) % len(_CATEGORIES)]
            if o > 1
            else ["static_object.bicycle_rack", "vehicle.bicycle"][o]
        )
        det = CATEGORY_TO_DETECTION.get(cat, "car")
        wlh = np.array(_SIZES.get(det, (1.0, 2.0, 1.5))) * rng.uniform(0.8, 1.2, 3)
        if o < 2:  # a rack with a bicycle parked in it (dropped by the bike-rack filter)
            pos = start + np.array([10.0, 5.0, 0.5])
            wlh = np.array([3.0, 6.0, 2.0]) if o == 0 else wlh
            vel = np.zeros(3)
        else:
            far = rng.random() < 0.1
            pos = start + np.concatenate(
                [rng.uniform(-45, 45, 2) * (2.0 if far else 1.0), [rng.uniform(0, 2)]]
            )
            vel = np.array([*rng.normal(0, 3, 2), 0.0]) * (rng.random() < 0.6)
        yaw = rng.uniform(-math.pi, math.pi)
        first, last = 0, len(sample_toks) - 1
        if not full_tracks:
            first = int(rng.integers(len(sample_toks)))
            last = int(rng.integers(first, len(sample_toks)))
        inst = f"inst-{s}-{o}"
        ann_toks = [f"ann-{s}-{o}-{k}" for k in range(first, last + 1)]
        fam = _attr_family(cat)
        for j, k in enumerate(range(first, last + 1)):
            attrs: list[str] = []
            if fam and rng.random() < 0.95:
                attrs = [f"attr-{_ATTRS[fam][int(rng.integers(len(_ATTRS[fam])))]}"]
            t["sample_annotation"].append(
                {
                    "token": ann_toks[j],
                    "sample_token": sample_toks[k],
                    "instance_token": inst,
                    "visibility_token": "4",
                    "attribute_tokens": attrs,
                    "translation": (pos + vel * 0.5 * k).tolist(),
                    "size": wlh.tolist(),
                    "rotation": list(Quaternion(axis=[0, 0, 1], angle=yaw).elements),
                    "prev": ann_toks[j - 1] if j else "",
                    "next": ann_toks[j + 1] if j + 1 < len(ann_toks) else "",
                    "num_lidar_pts": int(rng.integers(0, 30)) if rng.random() < 0.9 else 0,
                    "num_radar_pts": int(rng.integers(0, 3)) * int(rng.random() < 0.5),
                }
            )
        t["instance"].append(
            {
                "token": inst,
                "category_token": f"cat-{cat}",
                "nbr_annotations": len(ann_toks),
                "first_annotation_token": ann_toks[0],
                "last_annotation_token": ann_toks[-1],
            }
        )


def fake_infos(root: str | Path, version: str, sample_tokens: list[str]) -> list[dict[str, Any]]:
    """Minimal info samples (token, lidar2ego, ego2global, gt) of a fake DB, as ``bevforge prepare`` makes."""
    from nuscenes import NuScenes

    from bevforge.config import DET_CLASSES

    nusc = NuScenes(version=version, dataroot=str(root), verbose=False)
    out = []
    for tok in sample_tokens:
        sample = nusc.get("sample", tok)
        sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        pose = nusc.get("ego_pose", sd["ego_pose_token"])
        lidar2ego, ego2global = pose_from_record(cs), pose_from_record(pose)
        gt: dict[str, list[Any]] = {
            k: []
            for k in ("boxes", "names", "labels", "num_lidar_pts", "num_radar_pts", "valid", "velocity_valid")
        }
        gt["instance_tokens"], gt["attribute_names"] = [], []
        for ann_tok in sample["anns"]:
            ann = nusc.get("sample_annotation", ann_tok)
            vel = nusc.box_velocity(ann_tok)[:2]
            ok = bool(np.all(np.isfinite(vel)))
            box = global_to_lidar(
                np.asarray(ann["translation"]),
                np.asarray(ann["size"]),
                Quaternion(ann["rotation"]),
                np.nan_to_num(vel),
                ego2global,
                lidar2ego,
            )
            name = CATEGORY_TO_DETECTION.get(ann["category_name"], ann["category_name"])
            gt["boxes"].append(box.tolist())
            gt["names"].append(name)
            gt["labels"].append(DET_CLASSES.index(name) if name in DET_CLASSES else -1)
            gt["num_lidar_pts"].append(ann["num_lidar_pts"])
            gt["num_radar_pts"].append(ann["num_radar_pts"])
            gt["valid"].append(ann["num_lidar_pts"] + ann["num_radar_pts"] > 0)
            gt["velocity_valid"].append(ok)
            gt["instance_tokens"].append(ann["instance_token"])
            attrs = [nusc.get("attribute", a)["name"] for a in ann["attribute_tokens"]]
            gt["attribute_names"].append(attrs[0] if attrs else "")
        out.append(
            {"token": tok, "lidar2ego": lidar2ego.tolist(), "ego2global": ego2global.tolist(), "gt": gt}
        )
    return out
