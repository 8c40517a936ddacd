"""The 18-d can_bus vector with the official BEVFormer semantics.

Layout: [0:3] ego translation (global, m), [3:7] ego rotation quaternion (w, x, y, z), [7:10] accel,
[10:13] rotation rate, [13:16] velocity (ego frame, from the CAN ``pose`` message), [16] ego yaw in
rad and [17] in degrees, both in [0, 2*pi) / [0, 360). [0:7] and [16:18] come from the ego pose of the
LIDAR_TOP key frame (the official dataset overwrites them), only [7:16] are real CAN content.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from nuscenes.eval.common.utils import quaternion_yaw
from pyquaternion import Quaternion

CAN_BUS_DIM = 18


def find_can_bus_root(data_root: str | Path, can_bus_root: str | Path | None = None) -> Path | None:
    """The folder holding ``can_bus/``: the explicit one, the data root, or its parent (official layout)."""
    if can_bus_root:
        root = Path(can_bus_root)
        if not (root / "can_bus").is_dir():
            raise FileNotFoundError(
                f"{root / 'can_bus'}: CAN bus folder not found; pass the folder that CONTAINS can_bus/ "
                "(e.g. --can-bus-root ./data for ./data/can_bus) or leave the option out"
            )
        return root
    for root in (Path(data_root), Path(data_root).parent):
        if (root / "can_bus").is_dir():
            return root
    return None


def pose_can_values(
    pose_messages: list[dict[str, Any]], timestamp_us: int, official_next_message: bool = True
) -> np.ndarray:
    """[16] = pos(3), orientation(4), accel(3), rotation_rate(3), vel(3) for a sample timestamp.

    The official ``_get_can_bus_info`` picks the last ``pose`` message with ``utime <= timestamp`` (the
    first message if none) for pos/orientation, but reads accel/rotation_rate/vel from the loop variable,
    i.e. the first message AFTER the timestamp (the last message if none). ``official_next_message=True``
    keeps that behaviour (released checkpoints were trained with it); False reads them from the same
    message.
    """
    last = pose_messages[0]
    after = pose_messages[-1]
    for msg in pose_messages:
        if msg["utime"] > timestamp_us:
            after = msg
            break
        last = msg
    src = after if official_next_message else last
    values = [*last["pos"], *last["orientation"], *src["accel"], *src["rotation_rate"], *src["vel"]]
    return np.asarray(values, dtype=np.float64)


def get_can_bus(
    can_api: Any,
    scene_name: str,
    timestamp_us: int,
    ego_translation: np.ndarray,
    ego_rotation_wxyz: np.ndarray,
    official_next_message: bool = True,
) -> np.ndarray:
    """The 18-d absolute can_bus of one sample (zeros for the CAN part when the scene has none).

    ``can_api`` is a devkit ``NuScenesCanBus`` (or None: no CAN data at all). Scenes on the devkit's
    blacklist or without a ``pose`` file get zeros in [7:16], like the official converter.
    """
    can = np.zeros(CAN_BUS_DIM, dtype=np.float64)
    if can_api is not None:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                msgs = can_api.get_messages(scene_name, "pose")
        except Exception:  # noqa: BLE001 - official: any failure (blacklist, missing file) -> zeros
            msgs = []
        if msgs:
            can[:16] = pose_can_values(msgs, timestamp_us, official_next_message)
    return overwrite_ego_pose(can, ego_translation, ego_rotation_wxyz)


def overwrite_ego_pose(
    can: np.ndarray, ego_translation: np.ndarray, ego_rotation_wxyz: np.ndarray
) -> np.ndarray:
    """What the official dataset's ``get_data_info`` does: [0:3], [3:7] = ego pose, [16]/[17] = yaw."""
    can = np.asarray(can, dtype=np.float64).copy()
    can[0:3] = np.asarray(ego_translation, dtype=np.float64)
    q = Quaternion(np.asarray(ego_rotation_wxyz, dtype=np.float64))
    can[3:7] = q.elements
    yaw_deg = math.degrees(quaternion_yaw(q))  # heading of the rotated x axis, like the official code
    if yaw_deg < 0:
        yaw_deg += 360.0
    can[16] = math.radians(yaw_deg)
    can[17] = yaw_deg
    return can
