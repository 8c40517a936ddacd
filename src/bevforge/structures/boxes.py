"""The one 3D box convention of bevforge, and converters to every other convention we meet.

``Boxes3D`` rows are 9 numbers, in the **LIDAR_TOP frame** of the sample (right-handed, z up; on the
real car and the synthetic rig lidar +x points to the ego's right: always go through the calibration):

    (x_m, y_m, z_m, l_m, w_m, h_m, yaw_rad, vx_mps, vy_mps)

- ``x, y, z``: the box's **gravity centre** (not the bottom centre), metres.
- ``l``: extent along the box heading (nuScenes ``size[1]``), ``w``: across it (``size[0]``),
  ``h``: height (``size[2]``).
- ``yaw``: heading angle of the box's length axis, counter-clockwise from lidar +x, radians, wrapped
  to [-pi, pi).
- ``vx, vy``: velocity in the lidar frame, m/s (NaN allowed when unknown).

Other conventions:
- nuScenes global boxes (devkit ``Box``): centre, ``wlh`` = (w, l, h), quaternion; global frame.
- official BEVFormer / mmdet3d < 1.0 infos: ``gt_boxes`` = (x, y, z, w, l, h, rot) with
  ``rot = -yaw - pi/2`` (so ``yaw = -rot - pi/2``), gravity centre z.
- mmdet3d >= 1.0 infos: (x, y, z_bottom, l, w, h, yaw) in the lidar frame.

The detection-head **box code** (10 numbers) is ``(cx, cy, log l, log w, cz, log h, sin yaw, cos yaw,
vx, vy)`` (:func:`encode_box_code` / :func:`decode_box_code`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:  # pyquaternion is imported where used: model code must not need it
    from pyquaternion import Quaternion

BOX_DIM = 9
CODE_DIM = 10
BOX_CONVENTION = "lidar_gravity_center_lwh_yaw_ccw_from_x_v1"


def wrap_angle(yaw_rad: torch.Tensor | np.ndarray | float) -> torch.Tensor | np.ndarray | float:
    """Wrap to [-pi, pi)."""
    return (yaw_rad + math.pi) % (2 * math.pi) - math.pi


def encode_box_code(boxes: torch.Tensor) -> torch.Tensor:
    """[..., 9] boxes -> [..., 10] regression code (cx, cy, log l, log w, cz, log h, sin, cos, vx, vy)."""
    assert boxes.shape[-1] == BOX_DIM, boxes.shape
    x, y, z, l, w, h, yaw, vx, vy = boxes.unbind(-1)
    return torch.stack(
        [x, y, l.log(), w.log(), z, h.log(), yaw.sin(), yaw.cos(), vx, vy], dim=-1
    )  # [..., 10]


def decode_box_code(code: torch.Tensor) -> torch.Tensor:
    """[..., 10] regression code -> [..., 9] boxes (inverse of :func:`encode_box_code`)."""
    assert code.shape[-1] == CODE_DIM, code.shape
    cx, cy, ll, lw, cz, lh, s, c, vx, vy = code.unbind(-1)
    yaw = torch.atan2(s, c)
    return torch.stack([cx, cy, cz, ll.exp(), lw.exp(), lh.exp(), yaw, vx, vy], dim=-1)  # [..., 9]


def box_corners(boxes: torch.Tensor) -> torch.Tensor:
    """[M, >=7] boxes -> [M, 8, 3] corners in the boxes' frame.

    Corner order: bottom face (z - h/2) front-left, front-right, back-right, back-left, then the top
    face in the same order ("front" = +l/2 along the heading, "left" = +w/2).
    """
    x, y, z, l, w, h, yaw = boxes[:, :7].unbind(-1)
    sx = torch.tensor([1, 1, -1, -1, 1, 1, -1, -1], dtype=boxes.dtype, device=boxes.device) * 0.5
    sy = torch.tensor([1, -1, -1, 1, 1, -1, -1, 1], dtype=boxes.dtype, device=boxes.device) * 0.5
    sz = torch.tensor([-1, -1, -1, -1, 1, 1, 1, 1], dtype=boxes.dtype, device=boxes.device) * 0.5
    local = torch.stack([l[:, None] * sx, w[:, None] * sy, h[:, None] * sz], dim=-1)  # [M, 8, 3]
    cos, sin = yaw.cos()[:, None], yaw.sin()[:, None]
    rx = local[..., 0] * cos - local[..., 1] * sin
    ry = local[..., 0] * sin + local[..., 1] * cos
    return torch.stack([rx + x[:, None], ry + y[:, None], local[..., 2] + z[:, None]], dim=-1)


# ------------------------------------------------------------------ nuScenes global <-> lidar


def yaw_from_quaternion(q: Quaternion) -> float:
    """Heading (rotation about z) of a quaternion, radians."""
    v = q.rotate(np.array([1.0, 0.0, 0.0]))
    return float(math.atan2(v[1], v[0]))


def global_to_lidar(
    center_global: np.ndarray,
    size_wlh: np.ndarray,
    rotation_global: Quaternion,
    velocity_global_xy: np.ndarray,
    ego2global: np.ndarray,
    lidar2ego: np.ndarray,
) -> np.ndarray:
    """One nuScenes global box -> our 9-vector in the lidar frame (4x4 homogeneous transforms)."""
    from pyquaternion import Quaternion

    global2lidar = np.linalg.inv(ego2global @ lidar2ego)
    center = global2lidar[:3, :3] @ np.asarray(center_global, dtype=np.float64) + global2lidar[:3, 3]
    rot_lidar = Quaternion(matrix=global2lidar[:3, :3], atol=1e-6, rtol=1e-6) * rotation_global
    vel_g = np.array([velocity_global_xy[0], velocity_global_xy[1], 0.0], dtype=np.float64)
    vel = global2lidar[:3, :3] @ vel_g
    w, l, h = (float(s) for s in size_wlh)
    yaw = float(wrap_angle(yaw_from_quaternion(rot_lidar)))
    return np.array([*center, l, w, h, yaw, vel[0], vel[1]], dtype=np.float64)


def lidar_to_global(
    box: np.ndarray, ego2global: np.ndarray, lidar2ego: np.ndarray
) -> tuple[np.ndarray, np.ndarray, Quaternion, np.ndarray]:
    """Our 9-vector -> (center_global[3], size_wlh[3], rotation_global, velocity_global_xy[2])."""
    from pyquaternion import Quaternion

    lidar2global = ego2global @ lidar2ego
    x, y, z, l, w, h, yaw, vx, vy = (float(v) for v in box)
    center = lidar2global[:3, :3] @ np.array([x, y, z]) + lidar2global[:3, 3]
    rot = Quaternion(matrix=lidar2global[:3, :3], atol=1e-6, rtol=1e-6) * Quaternion(
        axis=[0, 0, 1], radians=yaw
    )
    vel = lidar2global[:3, :3] @ np.array([vx, vy, 0.0])
    return center, np.array([w, l, h]), rot, vel[:2]


# ------------------------------------------------------------------ official info conventions


def from_mmdet3d_v0(gt_boxes: np.ndarray, gt_velocity: np.ndarray | None = None) -> np.ndarray:
    """Official BEVFormer / mmdet3d<1.0 info boxes [M, 7] (x,y,z,w,l,h,rot) -> ours [M, 9].

    The old convention: ``rot = -yaw - pi/2`` and sizes ``(w, l, h)``; z is the gravity centre in
    the infos written by ``create_data.py`` (``get_box_type`` shifts to bottom later in the pipeline).
    """
    b = np.asarray(gt_boxes, dtype=np.float64).reshape(-1, 7)
    vel = np.zeros((len(b), 2)) if gt_velocity is None else np.asarray(gt_velocity).reshape(-1, 2)
    yaw = wrap_angle(-b[:, 6] - np.pi / 2)
    return np.concatenate([b[:, :3], b[:, 4:5], b[:, 3:4], b[:, 5:6], yaw[:, None], vel], axis=1)


def to_mmdet3d_v0(boxes: np.ndarray) -> np.ndarray:
    """Ours [M, 9] -> official BEVFormer / mmdet3d<1.0 [M, 7] (x,y,z,w,l,h,rot)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, BOX_DIM)
    rot = wrap_angle(-b[:, 6] - np.pi / 2)
    return np.concatenate([b[:, :3], b[:, 4:5], b[:, 3:4], b[:, 5:6], rot[:, None]], axis=1)


def from_mmdet3d_v1(
    bboxes_3d: np.ndarray, velocity: np.ndarray | None = None, z_is_bottom: bool = False
) -> np.ndarray:
    """mmdet3d>=1.0 lidar boxes [M, 7] (x,y,z,l,w,h,yaw) -> ours [M, 9].

    The info files (v1 ``gt_boxes`` and v2 ``instances[*].bbox_3d``) store the gravity centre; the
    in-memory ``LiDARInstance3DBoxes`` use the bottom centre (``z_is_bottom=True``).
    """
    b = np.asarray(bboxes_3d, dtype=np.float64).reshape(-1, 7)
    vel = np.zeros((len(b), 2)) if velocity is None else np.asarray(velocity).reshape(-1, 2)
    z = b[:, 2:3] + b[:, 5:6] / 2 if z_is_bottom else b[:, 2:3]
    return np.concatenate([b[:, :2], z, b[:, 3:6], wrap_angle(b[:, 6:7]), vel], axis=1)


def to_mmdet3d_v1(boxes: np.ndarray, z_is_bottom: bool = False) -> np.ndarray:
    """Ours [M, 9] -> mmdet3d>=1.0 [M, 7] (x,y,z,l,w,h,yaw)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, BOX_DIM)
    z = b[:, 2:3] - b[:, 5:6] / 2 if z_is_bottom else b[:, 2:3]
    return np.concatenate([b[:, :2], z, b[:, 3:7]], axis=1)
