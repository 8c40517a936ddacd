"""Sensor rig of the synthetic car: six cameras and LIDAR_TOP, laid out like the real nuScenes car.

Frames: ego (x forward, y left, z up, origin on the ground under the rear axle); camera (x right,
y down, z forward, OpenCV); LIDAR_TOP rotated -90 deg about z like the real one (lidar x = ego -y).
Intrinsics scale with the image width: real focal 1266 px at 1600 px (about 70 deg horizontal FOV)
for the five narrow cameras and 809 px for the wide CAM_BACK.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pyquaternion import Quaternion

from bevforge.geometry.transforms import pose_matrix

# (channel, position in ego [m], yaw about ego z [deg], focal / image width)
_CAMERA_LAYOUT: tuple[tuple[str, tuple[float, float, float], float, float], ...] = (
    ("CAM_FRONT", (1.70, 0.02, 1.51), 0.0, 0.791),
    ("CAM_FRONT_RIGHT", (1.55, -0.49, 1.50), -55.0, 0.791),
    ("CAM_FRONT_LEFT", (1.52, 0.49, 1.51), 55.0, 0.791),
    ("CAM_BACK", (0.03, 0.0, 1.57), 180.0, 0.506),
    ("CAM_BACK_LEFT", (1.04, 0.48, 1.57), 110.0, 0.791),
    ("CAM_BACK_RIGHT", (1.04, -0.48, 1.56), -110.0, 0.791),
)
LIDAR_CHANNEL = "LIDAR_TOP"
LIDAR_POSITION_EGO_M = (0.943, 0.0, 1.84)
LIDAR_YAW_DEG = -90.0

# camera axes (x right, y down, z forward) expressed in a forward-looking ego frame: columns
_CAM_AXES_IN_EGO = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])


@dataclass(frozen=True)
class SensorCalib:
    channel: str
    modality: str  # "camera" | "lidar"
    translation_m: tuple[float, float, float]  # sensor origin in ego
    rotation_wxyz: tuple[float, float, float, float]  # sensor -> ego
    intrinsics: tuple[tuple[float, float, float], ...] | None  # 3x3, cameras only

    def sensor2ego(self) -> np.ndarray:
        """[4, 4] homogeneous transform sensor -> ego."""
        return pose_matrix(self.translation_m, self.rotation_wxyz)

    def intrinsics_array(self) -> np.ndarray:
        assert self.intrinsics is not None, self.channel
        return np.array(self.intrinsics, dtype=np.float64)  # [3, 3]


def _yaw_rotation(yaw_deg: float) -> np.ndarray:
    c, s = math.cos(math.radians(yaw_deg)), math.sin(math.radians(yaw_deg))
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _quat_tuple(rot: np.ndarray) -> tuple[float, float, float, float]:
    q = Quaternion(matrix=rot, atol=1e-9)
    if q.w < 0:
        q = -q
    return (float(q.w), float(q.x), float(q.y), float(q.z))


def camera_calibs(image_wh: tuple[int, int]) -> list[SensorCalib]:
    """The six cameras for images of ``image_wh`` = (width, height) pixels."""
    w, h = image_wh
    out = []
    for channel, pos, yaw_deg, focal_ratio in _CAMERA_LAYOUT:
        f = focal_ratio * w
        k = ((f, 0.0, w / 2.0), (0.0, f, h / 2.0), (0.0, 0.0, 1.0))
        rot = _yaw_rotation(yaw_deg) @ _CAM_AXES_IN_EGO  # cam -> ego
        out.append(SensorCalib(channel, "camera", pos, _quat_tuple(rot), k))
    return out


def lidar_calib() -> SensorCalib:
    return SensorCalib(
        LIDAR_CHANNEL, "lidar", LIDAR_POSITION_EGO_M, _quat_tuple(_yaw_rotation(LIDAR_YAW_DEG)), None
    )


def all_calibs(image_wh: tuple[int, int]) -> list[SensorCalib]:
    """Cameras in nuScenes order, then LIDAR_TOP."""
    return [*camera_calibs(image_wh), lidar_calib()]
