"""Official BEVFormer / mmdet3d info pickles -> bevforge infos (``bevforge convert-infos``).

Layouts:
- ``bevforge-v0``: the official BEVFormer ``nuscenes_infos_temporal_{train,val}.pkl`` (mmdet3d < 1.0
  convention): ``{"infos": [...], "metadata": {"version"}}``, boxes (x, y, z, w, l, h, rot) with
  ``yaw = -rot - pi/2``, plus ``can_bus``, ``frame_idx``, ``scene_token``, ``prev``, ``next``.
- ``mmdet3d-v1``: mmdet3d 1.0 ``nuscenes_infos_*.pkl``: same keys, boxes (x, y, z, l, w, h, yaw).
- ``mmdet3d-v2``: mmdet3d >= 1.1 ``{"metainfo", "data_list"}`` with ``instances[*].bbox_3d``,
  ``images{CAM: {img_path, cam2img, cam2ego, lidar2cam}}``, ``lidar_points{lidar2ego}``, ``ego2global``,
  timestamps in seconds.

Pickles are read with :class:`RestrictedUnpickler` (numpy arrays/dtypes and plain containers only), so
a malicious file cannot run code. Missing temporal keys (mmdet3d infos have no scene tokens) are
rebuilt from timestamps: a gap > ``scene_gap_s`` starts a new scene (nuScenes key frames are 0.5 s
apart); such scenes are named ``time-scene-<k>`` and ``location`` is empty (no map targets).
"""

from __future__ import annotations

import io
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from pyquaternion import Quaternion

from bevforge.config import CAMERAS, DET_CLASSES
from bevforge.data.nuscenes.can_bus import overwrite_ego_pose
from bevforge.data.nuscenes.infos import InfoFile, now_utc
from bevforge.errors import InputError
from bevforge.geometry.transforms import pose_matrix
from bevforge.structures.boxes import from_mmdet3d_v0, from_mmdet3d_v1

LAYOUTS = ("bevforge-v0", "mmdet3d-v1", "mmdet3d-v2")
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "complex"),
    ("builtins", "slice"),
    ("builtins", "bytearray"),
    ("_codecs", "encode"),  # numpy arrays pickled under Python 2 / protocol 2 use it for bytes
}


class InfoConvertError(InputError, ValueError):
    """The pickle cannot be converted; the message names the file and the fix."""


class RestrictedUnpickler(pickle.Unpickler):
    """Only numpy array/dtype reconstruction and plain builtins; anything else raises."""

    def __init__(self, file: Any, name: str = "<pickle>") -> None:
        super().__init__(file)
        self.name = name

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED or (
            module == "numpy" and name.startswith(("float", "int", "uint", "bool"))
        ):
            return super().find_class(module, name)
        if module.startswith("numpy.dtypes") and name.endswith("DType"):
            return super().find_class(module, name)
        raise InfoConvertError(
            f"{self.name}: the pickle wants to load {module}.{name}, which an info file never needs; "
            "refusing (loading it could run code). Re-create the pickle with plain dicts/lists/numpy arrays"
        )


def load_pickle(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise InfoConvertError(f"{path}: file not found; pass the path of an info .pkl")
    data = path.read_bytes()
    try:
        return RestrictedUnpickler(io.BytesIO(data), str(path)).load()
    except InfoConvertError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise InfoConvertError(
            f"{path}: not a readable pickle (truncated or corrupt: {e}); re-download it"
        ) from None


def detect_layout(obj: Any, name: str = "<pickle>") -> str:
    if isinstance(obj, dict) and "data_list" in obj:
        return "mmdet3d-v2"
    if isinstance(obj, dict) and isinstance(obj.get("infos"), list):
        first = obj["infos"][0] if obj["infos"] else {}
        return "bevforge-v0" if "can_bus" in first or "frame_idx" in first else "mmdet3d-v1"
    keys = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
    raise InfoConvertError(
        f"{name}: unknown info layout (top level {keys}); expected 'infos' (BEVFormer / mmdet3d 1.0) "
        "or 'data_list' (mmdet3d >= 1.1). Pass --layout if you know it"
    )


def relative_path(path: str, default_dir: str) -> str:
    """``./data/samples/CAM_FRONT/x.jpg`` -> ``samples/CAM_FRONT/x.jpg`` (bare name: default_dir)."""
    p = str(path).replace("\\", "/")
    for anchor in ("samples/", "sweeps/"):
        k = p.find(anchor)
        if k >= 0:
            return p[k:]
    return f"{default_dir}/{Path(p).name}"


def _cam(path: str, wh: tuple[int, int], ts: int, k: Any, sensor2ego: np.ndarray, s2l: np.ndarray) -> dict:
    intr = np.asarray(k, dtype=np.float64)[:3, :3]
    k_pad = np.eye(4)
    k_pad[:3, :3] = intr
    return {
        "path": path,
        "width": int(wh[0]),
        "height": int(wh[1]),
        "timestamp": int(ts),
        "intrinsics": intr.tolist(),
        "sensor2ego": sensor2ego.tolist(),
        "sensor2lidar": s2l.tolist(),
        "lidar2img": (k_pad @ np.linalg.inv(s2l)).tolist(),
    }


def _gt(boxes: np.ndarray, names: list[str], vel: np.ndarray, n_lidar: Any, n_radar: Any, valid: Any) -> dict:
    m = len(boxes)
    vel = np.asarray(vel, dtype=np.float64).reshape(m, 2)
    vel_ok = np.all(np.isfinite(vel), axis=1)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(m, 9).copy()
    boxes[:, 7:9] = np.where(vel_ok[:, None], vel, 0.0)
    n_lidar = np.asarray(n_lidar if n_lidar is not None else np.ones(m), dtype=np.int64).reshape(m)
    n_radar = np.asarray(n_radar if n_radar is not None else np.zeros(m), dtype=np.int64).reshape(m)
    valid = (n_lidar + n_radar > 0) if valid is None else np.asarray(valid, dtype=bool).reshape(m)
    return {
        "boxes": boxes.tolist(),
        "names": [str(n) for n in names],
        "labels": [DET_CLASSES.index(n) if n in DET_CLASSES else -1 for n in names],
        "num_lidar_pts": n_lidar.tolist(),
        "num_radar_pts": n_radar.tolist(),
        "valid": [bool(v) for v in valid],
        "velocity_valid": [bool(v) for v in vel_ok],
        "instance_tokens": [""] * m,
        "attribute_names": [""] * m,
    }


def _from_v0_v1(info: dict, layout: str, wh: tuple[int, int]) -> dict[str, Any]:
    lidar2ego = pose_matrix(rotation=info["lidar2ego_rotation"], translation=info["lidar2ego_translation"])
    ego2global = pose_matrix(rotation=info["ego2global_rotation"], translation=info["ego2global_translation"])
    cams = {}
    for cam, c in info["cams"].items():
        s2l = pose_matrix(rotation=c["sensor2lidar_rotation"], translation=c["sensor2lidar_translation"])
        s2e = pose_matrix(rotation=c["sensor2ego_rotation"], translation=c["sensor2ego_translation"])
        path = relative_path(c["data_path"], f"samples/{cam}")
        cams[cam] = _cam(path, wh, c.get("timestamp", info["timestamp"]), c["cam_intrinsic"], s2e, s2l)
    if "gt_boxes" in info:
        raw = np.asarray(info["gt_boxes"], dtype=np.float64).reshape(-1, 7)
        vel = np.asarray(info.get("gt_velocity", np.zeros((len(raw), 2))), dtype=np.float64).reshape(-1, 2)
        boxes = from_mmdet3d_v0(raw, vel) if layout == "bevforge-v0" else from_mmdet3d_v1(raw, vel)
        n_lidar, n_radar = info.get("num_lidar_pts"), info.get("num_radar_pts")
        gt = _gt(boxes, list(info["gt_names"]), vel, n_lidar, n_radar, info.get("valid_flag"))
    else:
        gt = _gt(np.zeros((0, 9)), [], np.zeros((0, 2)), None, None, None)
    can = info.get("can_bus", np.zeros(18))
    return {
        "token": info["token"],
        "scene_token": info.get("scene_token"),
        "prev": info.get("prev"),
        "next": info.get("next"),
        "frame_idx": info.get("frame_idx"),
        "timestamp": int(info["timestamp"]),
        "lidar_path": relative_path(info.get("lidar_path", ""), "samples/LIDAR_TOP"),
        "lidar2ego": lidar2ego.tolist(),
        "ego2global": ego2global.tolist(),
        "can_bus": overwrite_ego_pose(np.asarray(can), ego2global[:3, 3], info["ego2global_rotation"]),
        "cams": cams,
        "gt": gt,
    }


def _from_v2(info: dict, categories: dict[str, int], wh: tuple[int, int]) -> dict[str, Any]:
    label_names = {v: k for k, v in categories.items() if v >= 0}
    ego2global = np.asarray(info["ego2global"], dtype=np.float64)
    lidar2ego = np.asarray(info["lidar_points"]["lidar2ego"], dtype=np.float64)
    ts = int(round(float(info["timestamp"]) * 1e6))
    cams = {}
    for cam, c in info["images"].items():
        s2l = np.linalg.inv(np.asarray(c["lidar2cam"], dtype=np.float64))
        c_ts = int(round(float(c.get("timestamp", info["timestamp"])) * 1e6))
        path = relative_path(c["img_path"], f"samples/{cam}")
        cams[cam] = _cam(path, wh, c_ts, c["cam2img"], np.asarray(c["cam2ego"], dtype=np.float64), s2l)
    inst = info.get("instances", [])
    raw = np.asarray([i["bbox_3d"] for i in inst], dtype=np.float64).reshape(-1, 7)
    vel = np.asarray([i.get("velocity", [np.nan, np.nan]) for i in inst], dtype=np.float64).reshape(-1, 2)
    names = [label_names.get(int(i["bbox_label_3d"]), "ignore") for i in inst]
    n_lidar = [i.get("num_lidar_pts", 1) for i in inst]
    n_radar = [i.get("num_radar_pts", 0) for i in inst]
    valid = [i.get("bbox_3d_isvalid", True) for i in inst]
    gt = _gt(from_mmdet3d_v1(raw, vel), names, vel, n_lidar, n_radar, valid)
    can = info.get("can_bus", np.zeros(18))
    q = Quaternion(matrix=ego2global[:3, :3], atol=1e-6, rtol=1e-6).elements
    return {
        "token": info["token"],
        "scene_token": info.get("scene_token"),
        "prev": info.get("prev"),
        "next": info.get("next"),
        "frame_idx": info.get("frame_idx"),
        "timestamp": ts,
        "lidar_path": relative_path(info["lidar_points"].get("lidar_path", ""), "samples/LIDAR_TOP"),
        "lidar2ego": lidar2ego.tolist(),
        "ego2global": ego2global.tolist(),
        "can_bus": overwrite_ego_pose(np.asarray(can), ego2global[:3, 3], q),
        "cams": cams,
        "gt": gt,
    }


def _fill_temporal(samples: list[dict], scene_gap_s: float) -> None:
    """Rebuild scene_token / prev / next / frame_idx from timestamps where the pickle lacks them."""
    if all(s["scene_token"] for s in samples):
        for s in samples:
            s["prev"], s["next"] = s["prev"] or "", s["next"] or ""
        return
    k, prev = -1, None
    for s in samples:
        if prev is None or s["timestamp"] - prev["timestamp"] > scene_gap_s * 1e6:
            k += 1
            s["frame_idx"], s["prev"] = 0, ""
            if prev is not None:
                prev["next"] = ""
        else:
            s["frame_idx"], s["prev"] = prev["frame_idx"] + 1, prev["token"]
            prev["next"] = s["token"]
        s["scene_token"] = f"time-scene-{k}"
        s["scene_name"] = s["scene_token"]
        prev = s
    if prev is not None:
        prev["next"] = ""


def split_from_name(stem: str) -> str:
    """``nuscenes_infos_temporal_val`` -> ``val`` (the last of train/val/test in the name, else the stem)."""
    for part in reversed(stem.replace("-", "_").split("_")):
        if part in ("train", "val", "test"):
            return part
    return stem


def convert_infos(
    in_path: str | Path,
    layout: str = "auto",
    image_wh: tuple[int, int] = (1600, 900),
    scene_gap_s: float = 1.0,
    log: Callable[[str], None] = print,
) -> InfoFile:
    """Read an official info pickle and return the equivalent bevforge :class:`InfoFile`."""
    obj = load_pickle(in_path)
    found = detect_layout(obj, str(in_path))
    layout = found if layout == "auto" else layout
    if layout not in LAYOUTS:
        raise InfoConvertError(f"{in_path}: unknown --layout {layout!r}; choose one of {LAYOUTS}")
    log(f"{in_path}: layout {layout}" + (" (auto-detected)" if layout == found else f" (detected {found})"))
    try:
        if layout == "mmdet3d-v2":
            meta = obj.get("metainfo", {})
            cats = meta.get("categories") or {c: i for i, c in enumerate(meta.get("classes", ()))}
            samples = [_from_v2(i, cats, image_wh) for i in obj["data_list"]]
            version = meta.get("version", "")
        else:
            samples = [_from_v0_v1(i, layout, image_wh) for i in obj["infos"]]
            version = obj.get("metadata", {}).get("version", "")
    except KeyError as e:
        raise InfoConvertError(
            f"{in_path}: an info lacks key {e} of the {layout} layout; pass the right --layout or re-create "
            "the pickle with the official converter"
        ) from None
    samples.sort(key=lambda s: s["timestamp"])
    _fill_temporal(samples, scene_gap_s)
    for s in samples:
        s.setdefault("scene_name", "")
        s["location"] = s.get("location", "")
        s["can_bus"] = [float(v) for v in s["can_bus"]]
        s["frame_idx"] = int(s["frame_idx"] or 0)
        s["cams"] = {c: s["cams"][c] for c in CAMERAS if c in s["cams"]}
    return InfoFile(
        samples=samples,
        split=split_from_name(Path(in_path).stem),
        nuscenes_version=version,
        classes=DET_CLASSES,
        cameras=CAMERAS,
        created=now_utc(),
        source=f"convert-infos:{layout}",
        extra={"converted_from": str(Path(in_path).resolve())},
    )
