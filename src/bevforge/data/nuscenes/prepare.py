"""nuScenes-format dataset (read with the devkit) -> ``{out}/infos_{split}.json``.

Per key frame: poses as 4x4 matrices, the 18-d can_bus (official semantics, ``can_bus.py``), the six
cameras (path relative to the data root, intrinsics, sensor2ego, sensor2lidar, lidar2img for the raw
image size) and the GT boxes converted into our lidar-frame convention (``structures/boxes.py``).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pyquaternion import Quaternion

from bevforge.config import CAMERAS, DET_CLASSES
from bevforge.data.nuscenes.can_bus import find_can_bus_root, get_can_bus
from bevforge.data.nuscenes.infos import InfoFile, now_utc, save_infos
from bevforge.data.nuscenes.schema import CATEGORY_TO_DETECTION, TABLES
from bevforge.data.nuscenes.splits import split_scene_names
from bevforge.errors import InputError
from bevforge.geometry.transforms import pose_from_record
from bevforge.structures.boxes import global_to_lidar


class DatasetError(InputError, ValueError):
    """The nuScenes-format dataset is broken (missing table, dangling token...); names file and fix."""


def open_nuscenes(data_root: str | Path, version: str) -> Any:
    """Load the devkit database, checking the tables first so errors name the missing file."""
    from nuscenes.nuscenes import NuScenes

    root = Path(data_root)
    table_dir = root / version
    if not table_dir.is_dir():
        found = sorted(p.name for p in root.glob("v1.0-*")) if root.is_dir() else []
        raise DatasetError(
            f"{table_dir}: nuScenes version folder not found (found {found or 'none'}); pass the right "
            "--data-root / --version (or generate data with `bevforge synth`)"
        )
    missing = [t for t in TABLES if not (table_dir / f"{t}.json").is_file()]
    if missing:
        raise DatasetError(
            f"{table_dir}: missing table(s) {', '.join(m + '.json' for m in missing)}; copy the complete "
            "metadata folder of this nuScenes version (or regenerate the dataset)"
        )
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return NuScenes(version=version, dataroot=str(root), verbose=False)
    except KeyError as e:
        raise DatasetError(
            f"{table_dir}: the devkit could not link the tables (dangling or missing key {e}); "
            "check that every *_token refers to an existing record"
        ) from None


def _getter(nusc: Any, version_dir: Path) -> Callable[[str, str, str], dict]:
    def get(table: str, token: str, context: str) -> dict:
        try:
            return nusc.get(table, token)
        except KeyError:
            raise DatasetError(
                f"{version_dir / (table + '.json')}: no record with token {token!r} (referenced by "
                f"{context}); the dataset is inconsistent: restore the table or remove the reference"
            ) from None

    return get


def sample_info(nusc: Any, sample: dict, frame_idx: int, can_api: Any, version_dir: Path) -> dict[str, Any]:
    """One key frame -> the per-sample dict of docs/CONTRACTS.md."""
    get = _getter(nusc, version_dir)
    ctx = f"sample {sample['token']}"
    if "LIDAR_TOP" not in sample["data"]:
        raise DatasetError(f"{version_dir / 'sample_data.json'}: {ctx} has no LIDAR_TOP key frame; add it")
    lidar_sd = get("sample_data", sample["data"]["LIDAR_TOP"], ctx)
    lidar_cs = get("calibrated_sensor", lidar_sd["calibrated_sensor_token"], ctx)
    lidar_pose = get("ego_pose", lidar_sd["ego_pose_token"], ctx)
    scene = get("scene", sample["scene_token"], ctx)
    log = get("log", scene["log_token"], f"scene {scene['token']}")
    lidar2ego = pose_from_record(lidar_cs)
    ego2global = pose_from_record(lidar_pose)
    lidar2global = ego2global @ lidar2ego

    cams: dict[str, Any] = {}
    for cam in CAMERAS:
        if cam not in sample["data"]:
            raise DatasetError(f"{version_dir / 'sample_data.json'}: {ctx} has no {cam} key frame; add it")
        sd = get("sample_data", sample["data"][cam], ctx)
        cs = get("calibrated_sensor", sd["calibrated_sensor_token"], f"sample_data {sd['token']}")
        pose = get("ego_pose", sd["ego_pose_token"], f"sample_data {sd['token']}")
        sensor2ego = pose_from_record(cs)
        # cam pose at its own time
        sensor2lidar = np.linalg.inv(lidar2global) @ pose_from_record(pose) @ sensor2ego
        intrinsics = np.asarray(cs["camera_intrinsic"], dtype=np.float64).reshape(3, 3)
        k_pad = np.eye(4)
        k_pad[:3, :3] = intrinsics
        cams[cam] = {
            "path": sd["filename"],
            "width": int(sd["width"]),
            "height": int(sd["height"]),
            "timestamp": int(sd["timestamp"]),
            "intrinsics": intrinsics.tolist(),
            "sensor2ego": sensor2ego.tolist(),
            "sensor2lidar": sensor2lidar.tolist(),
            "lidar2img": (k_pad @ np.linalg.inv(sensor2lidar)).tolist(),
        }

    gt: dict[str, list] = {k: [] for k in ("boxes", "names", "labels", "num_lidar_pts", "num_radar_pts")}
    gt.update({k: [] for k in ("valid", "velocity_valid", "instance_tokens", "attribute_names")})
    for ann_token in sample["anns"]:
        ann = get("sample_annotation", ann_token, ctx)
        vel = nusc.box_velocity(ann_token)[:2]
        vel_ok = bool(np.all(np.isfinite(vel)))
        box = global_to_lidar(
            np.asarray(ann["translation"]),
            np.asarray(ann["size"]),
            Quaternion(ann["rotation"]),
            np.nan_to_num(vel, nan=0.0, posinf=0.0, neginf=0.0),
            ego2global,
            lidar2ego,
        )
        name = CATEGORY_TO_DETECTION.get(ann["category_name"], ann["category_name"])
        attrs = [
            get("attribute", t, f"sample_annotation {ann_token}")["name"] for t in ann["attribute_tokens"]
        ]
        n_pts = int(ann["num_lidar_pts"]) + int(ann["num_radar_pts"])
        gt["boxes"].append([float(v) for v in box])
        gt["names"].append(name)
        gt["labels"].append(DET_CLASSES.index(name) if name in DET_CLASSES else -1)
        gt["num_lidar_pts"].append(int(ann["num_lidar_pts"]))
        gt["num_radar_pts"].append(int(ann["num_radar_pts"]))
        gt["valid"].append(n_pts > 0)
        gt["velocity_valid"].append(vel_ok)
        gt["instance_tokens"].append(ann["instance_token"])
        gt["attribute_names"].append(attrs[0] if attrs else "")

    can_bus = get_can_bus(
        can_api,
        scene["name"],
        int(sample["timestamp"]),
        np.asarray(lidar_pose["translation"]),
        np.asarray(lidar_pose["rotation"]),
    )
    return {
        "token": sample["token"],
        "scene_token": sample["scene_token"],
        "scene_name": scene["name"],
        "frame_idx": frame_idx,
        "prev": sample["prev"],
        "next": sample["next"],
        "timestamp": int(sample["timestamp"]),
        "location": log.get("location", ""),
        "lidar_path": lidar_sd["filename"],
        "lidar2ego": lidar2ego.tolist(),
        "ego2global": ego2global.tolist(),
        "can_bus": [float(v) for v in can_bus],
        "cams": cams,
        "gt": gt,
    }


def create_infos(
    data_root: str | Path,
    version: str,
    out_dir: str | Path,
    can_bus_root: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Path]:
    """Write ``{out_dir}/infos_{split}.json`` for every split of ``version``; returns split -> path."""
    nusc = open_nuscenes(data_root, version)
    version_dir = Path(data_root) / version
    splits = split_scene_names(data_root, version)
    root = find_can_bus_root(data_root, can_bus_root)
    can_api = None
    if root is None:
        log(f"note: no can_bus/ folder in {data_root} or its parent: can_bus [7:16] will be zeros")
    else:
        from nuscenes.can_bus.can_bus_api import NuScenesCanBus

        with contextlib.redirect_stdout(io.StringIO()):
            can_api = NuScenesCanBus(dataroot=str(root))

    scene_split = {name: split for split, names in splits.items() for name in names}
    per_split: dict[str, list[dict]] = {s: [] for s in splits}
    get = _getter(nusc, version_dir)
    for scene in nusc.scene:
        split = scene_split.get(scene["name"])
        if split is None:
            continue
        token, frame_idx = scene["first_sample_token"], 0
        while token:
            sample = get("sample", token, f"scene {scene['name']}")
            try:
                per_split[split].append(sample_info(nusc, sample, frame_idx, can_api, version_dir))
            except KeyError as e:
                raise DatasetError(
                    f"{version_dir}: a record used by sample {token} (scene {scene['name']}) lacks the field "
                    f"{e}; the tables do not follow the nuScenes schema (fix the table or regenerate)"
                ) from None
            token, frame_idx = sample["next"], frame_idx + 1
    unused = [s["name"] for s in nusc.scene if s["name"] not in scene_split]
    if unused:
        log(f"note: {len(unused)} scene(s) in no split of {version} were skipped (e.g. {unused[0]})")

    written: dict[str, Path] = {}
    for split, samples in per_split.items():
        if not samples:
            log(f"note: split {split!r} has no scenes in {data_root}; no info file written for it")
            continue
        samples.sort(key=lambda s: s["timestamp"])  # official order: by time (scenes stay contiguous)
        info = InfoFile(
            samples=samples,
            split=split,
            nuscenes_version=version,
            classes=DET_CLASSES,
            cameras=CAMERAS,
            created=now_utc(),
            source="prepare",
            extra={"data_root": str(Path(data_root).resolve())},
        )
        written[split] = save_infos(info, Path(out_dir) / f"infos_{split}.json")
        n_scenes = len({s["scene_token"] for s in samples})
        log(f"wrote {written[split]} ({len(samples)} samples, {n_scenes} scenes)")
    return written
