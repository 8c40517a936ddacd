"""The versioned bevforge info format: one JSON file per split (``infos_{split}.json``).

Why JSON (see docs/INFOS.md): no pickle (loading never runs code), diffable, readable from any
language, and streamable. Every file starts with a header naming the format, its version, the nuScenes
version, the box convention (``bevforge.structures.boxes.BOX_CONVENTION``), the class list and the
creation time; ``samples`` holds one dict per key frame with the keys of docs/CONTRACTS.md.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bevforge.errors import InputError
from bevforge.io import atomic_write_text
from bevforge.structures.boxes import BOX_CONVENTION

INFO_FORMAT = "bevforge-infos"
INFO_FORMAT_VERSION = 1
BOX_DECIMALS = 6  # gt box centres, sizes, velocities are written rounded to 1e-6 (m, m/s)

SAMPLE_KEYS: tuple[str, ...] = (
    "token",
    "scene_token",
    "scene_name",
    "frame_idx",
    "prev",
    "next",
    "timestamp",
    "location",
    "lidar_path",
    "lidar2ego",
    "ego2global",
    "can_bus",
    "cams",
    "gt",
)
CAM_KEYS: tuple[str, ...] = (
    "path",
    "width",
    "height",
    "timestamp",
    "intrinsics",
    "sensor2ego",
    "sensor2lidar",
    "lidar2img",
)
GT_KEYS: tuple[str, ...] = (
    "boxes",
    "names",
    "labels",
    "num_lidar_pts",
    "num_radar_pts",
    "valid",
    "instance_tokens",
    "attribute_names",
)


class InfoFormatError(InputError, ValueError):
    """An info file is missing, truncated, of another format/version, or lacks a key."""


@dataclass
class InfoFile:
    """A loaded info file: header fields + ``samples`` (list of per-sample dicts, see CONTRACTS.md)."""

    samples: list[dict[str, Any]]
    split: str = ""
    nuscenes_version: str = ""
    box_convention: str = BOX_CONVENTION
    classes: tuple[str, ...] = ()
    cameras: tuple[str, ...] = ()
    created: str = ""
    source: str = ""  # how it was made: "prepare" or "convert-infos:<layout>"
    format_version: int = INFO_FORMAT_VERSION
    path: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def header(self) -> dict[str, Any]:
        return {
            "format": INFO_FORMAT,
            "format_version": self.format_version,
            "split": self.split,
            "nuscenes_version": self.nuscenes_version,
            "box_convention": self.box_convention,
            "classes": list(self.classes),
            "cameras": list(self.cameras),
            "created": self.created,
            "source": self.source,
            **self.extra,
        }


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def save_infos(info: InfoFile, path: str | Path) -> Path:
    """Write ``info`` atomically as strict JSON (no NaN: a NaN would not stream to other languages)."""
    samples = []
    for i, s in enumerate(info.samples):
        _check_sample(s, i, str(path))
        # micrometres are plenty and shrink trainval infos by ~30 %; yaw stays exact (inside [-pi, pi))
        boxes = [
            [float(v) if k == 6 else round(float(v), BOX_DECIMALS) for k, v in enumerate(box)]
            for box in s["gt"]["boxes"]
        ]
        samples.append({**s, "gt": {**s["gt"], "boxes": boxes}})
    obj = {**info.header(), "num_samples": len(samples), "samples": samples}
    try:
        text = json.dumps(obj, allow_nan=False, separators=(",", ":"))
    except ValueError as e:
        raise InfoFormatError(f"{path}: refusing to write NaN/inf into an info file ({e})") from None
    return atomic_write_text(path, text + "\n")


def load_infos(path: str | Path, expect_version: str | None = None) -> InfoFile:
    """Load and validate ``infos_{split}.json``; every problem names the file and the fix."""
    path = Path(path)
    fix = "re-create it with `bevforge prepare --data-root DIR --version V --out DIR`"
    if not path.is_file():
        raise InfoFormatError(f"{path}: info file not found; {fix}")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InfoFormatError(f"{path}: not valid JSON (truncated or corrupt: {e}); {fix}") from None
    if not isinstance(obj, dict) or obj.get("format") != INFO_FORMAT:
        got = obj.get("format") if isinstance(obj, dict) else type(obj).__name__
        hint = " (an mmdet3d/BEVFormer pickle? use `bevforge convert-infos`)" if path.suffix == ".pkl" else ""
        raise InfoFormatError(f"{path}: format is {got!r}, expected {INFO_FORMAT!r}{hint}; {fix}")
    version = obj.get("format_version")
    if version != INFO_FORMAT_VERSION:
        raise InfoFormatError(
            f"{path}: format_version {version!r} but this bevforge reads {INFO_FORMAT_VERSION}; {fix}"
        )
    if obj.get("box_convention") != BOX_CONVENTION:
        raise InfoFormatError(
            f"{path}: box convention {obj.get('box_convention')!r} differs from {BOX_CONVENTION!r}; {fix}"
        )
    if expect_version is not None and obj.get("nuscenes_version") != expect_version:
        raise InfoFormatError(
            f"{path}: made from nuScenes {obj.get('nuscenes_version')!r} but the config asks for "
            f"{expect_version!r}; set data.version or {fix}"
        )
    samples = obj.get("samples")
    if not isinstance(samples, list):
        raise InfoFormatError(f"{path}: no 'samples' list; {fix}")
    if "num_samples" in obj and obj["num_samples"] != len(samples):
        raise InfoFormatError(
            f"{path}: header says {obj['num_samples']} samples, holds {len(samples)}; {fix}"
        )
    for i, s in enumerate(samples):
        _check_sample(s, i, str(path))
    known = {"format", "format_version", "split", "nuscenes_version", "box_convention", "classes"}
    known |= {"cameras", "created", "source", "num_samples", "samples"}
    return InfoFile(
        samples=samples,
        split=str(obj.get("split", "")),
        nuscenes_version=str(obj.get("nuscenes_version", "")),
        box_convention=obj["box_convention"],
        classes=tuple(obj.get("classes", ())),
        cameras=tuple(obj.get("cameras", ())),
        created=str(obj.get("created", "")),
        source=str(obj.get("source", "")),
        format_version=version,
        path=str(path),
        extra={k: v for k, v in obj.items() if k not in known},
    )


def _check_sample(s: Any, i: int, path: str) -> None:
    fix = "re-create the file with `bevforge prepare` or `bevforge convert-infos`"
    if not isinstance(s, dict):
        raise InfoFormatError(f"{path}: sample {i} is a {type(s).__name__}, expected an object; {fix}")
    missing = [k for k in SAMPLE_KEYS if k not in s]
    if missing:
        raise InfoFormatError(f"{path}: sample {i} ({s.get('token', '?')}) lacks keys {missing}; {fix}")
    for cam, c in s["cams"].items():
        miss = [k for k in CAM_KEYS if k not in c]
        if miss:
            raise InfoFormatError(f"{path}: sample {i} camera {cam} lacks keys {miss}; {fix}")
    miss = [k for k in GT_KEYS if k not in s["gt"]]
    if miss:
        raise InfoFormatError(f"{path}: sample {i} gt lacks keys {miss}; {fix}")
    n = len(s["gt"]["boxes"])
    for k in GT_KEYS:
        if len(s["gt"][k]) != n:
            raise InfoFormatError(
                f"{path}: sample {i} gt.{k} has {len(s['gt'][k])} entries, boxes {n}; {fix}"
            )
    if len(s["can_bus"]) != 18:
        raise InfoFormatError(
            f"{path}: sample {i} can_bus has {len(s['can_bus'])} values, expected 18; {fix}"
        )
