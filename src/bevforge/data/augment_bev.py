"""BEV-space data augmentation (BDA): one rotation, scale and x/y flips of the lidar frame per sample.

Shape letters: M boxes, T frames, N cameras, S seg classes, H/W BEV grid (row = y, col = x).

The augmented lidar frame is ``p_aug = bda @ p_lidar`` with ``bda = F @ S @ R`` (official BEVDet
``bev_transform`` order): ``R`` a rotation about z by ``rot``, ``S = s * I3``, ``F = diag(+-1, +-1, 1)``
(``flip_x`` negates x, ``flip_y`` negates y). It is just another sensor frame, so every matrix that
reads lidar points is composed with ``inv(bda)``: ``lidar2img @ inv(bda)`` (same pixels) and
``lidar2ego @ inv(bda)`` (ego-motion code stays right). Boxes (structures/boxes.py): centres and
velocities ``@ bda`` (velocities scale with the frame), sizes ``* s``, yaw = heading of
``bda[:2, :2] @ (cos yaw, sin yaw)`` (so flip_y: ``-yaw``, flip_x: ``pi - yaw``, rotation: ``+rot``).
Seg targets are resampled on the same grid (nearest, zeros where the source grid has no cell).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from bevforge.config import ConfigError, DataConfig
from bevforge.structures.boxes import wrap_angle


@dataclass(frozen=True)
class BDASpec:
    """Ranges of the BEV augmentation (training only)."""

    rot_lim_deg: tuple[float, float] = (-22.5, 22.5)
    scale_lim: tuple[float, float] = (0.95, 1.05)
    flip_ratio: float = 0.5

    @classmethod
    def from_config(cls, d: DataConfig, train: bool) -> BDASpec | None:
        """``None`` unless training with ``data.bev_aug``; ConfigError on nonsense ranges."""
        check_bda_config(d)
        if not (d.bev_aug and train):
            return None
        return cls(
            rot_lim_deg=(float(d.bda_rot_lim_deg[0]), float(d.bda_rot_lim_deg[1])),
            scale_lim=(float(d.bda_scale_lim[0]), float(d.bda_scale_lim[1])),
            flip_ratio=float(d.bda_flip_ratio),
        )


def check_bda_config(d: DataConfig) -> None:
    for name in ("bda_rot_lim_deg", "bda_scale_lim"):
        v = getattr(d, name)
        if len(v) != 2 or not all(math.isfinite(float(x)) for x in v) or float(v[0]) > float(v[1]):
            raise ConfigError(f"data.{name}: expected (low, high) with low <= high; got {v}")
    if float(d.bda_scale_lim[0]) <= 0:
        raise ConfigError(
            f"data.bda_scale_lim: scales must be positive, e.g. (0.95, 1.05); got {d.bda_scale_lim}"
        )
    if not 0.0 <= float(d.bda_flip_ratio) <= 1.0:
        raise ConfigError(f"data.bda_flip_ratio: a probability in [0, 1]; got {d.bda_flip_ratio}")


@dataclass(frozen=True)
class BDA:
    """One sample's BEV augmentation."""

    rot_rad: float = 0.0
    scale: float = 1.0
    flip_x: bool = False  # x -> -x
    flip_y: bool = False  # y -> -y

    def matrix(self) -> np.ndarray:
        """``bda [4, 4]`` float64: lidar -> augmented lidar (``F @ S @ R``)."""
        c, s = math.cos(self.rot_rad), math.sin(self.rot_rad)
        rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        flip = np.diag([-1.0 if self.flip_x else 1.0, -1.0 if self.flip_y else 1.0, 1.0])
        m = np.eye(4)
        m[:3, :3] = flip @ (self.scale * rot)
        return m


def sample_bda(spec: BDASpec, rng: np.random.Generator) -> BDA:
    rot = math.radians(float(rng.uniform(*spec.rot_lim_deg)))
    scale = float(rng.uniform(*spec.scale_lim))
    flip_x = bool(rng.uniform() < spec.flip_ratio)
    flip_y = bool(rng.uniform() < spec.flip_ratio)
    return BDA(rot_rad=rot, scale=scale, flip_x=flip_x, flip_y=flip_y)


def bda_boxes(boxes: np.ndarray, bda: BDA) -> np.ndarray:
    """``[M, 9]`` boxes (ours, float64) -> the same boxes in the augmented lidar frame."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 9).copy()
    a = bda.matrix()[:3, :3]  # [3, 3]
    heading = np.stack([np.cos(b[:, 6]), np.sin(b[:, 6])], axis=1) @ a[:2, :2].T  # [M, 2]
    b[:, 0:3] = b[:, 0:3] @ a.T
    b[:, 3:6] *= bda.scale
    b[:, 6] = wrap_angle(np.arctan2(heading[:, 1], heading[:, 0]))
    b[:, 7:9] = b[:, 7:9] @ a[:2, :2].T  # NaN velocities stay NaN
    return b


def bda_calibration(matrix: torch.Tensor, bda: BDA) -> torch.Tensor:
    """``[..., 4, 4]`` ``X`` reading lidar points (lidar2img, lidar2ego) -> ``X @ inv(bda)`` (dtype kept)."""
    inv = torch.from_numpy(np.linalg.inv(bda.matrix()))  # [4, 4] float64
    return (matrix.double() @ inv).to(matrix.dtype)  # [..., 4, 4]


def bda_seg(seg: torch.Tensor, bda: BDA, point_cloud_range: tuple[float, ...]) -> torch.Tensor:
    """``[S, H, W]`` BEV targets (row = y, col = x over ``point_cloud_range``) -> augmented (nearest)."""
    assert seg.dim() == 3, seg.shape
    _, h, w = seg.shape
    x0, y0, _, x1, y1, _ = (float(v) for v in point_cloud_range)
    dx, dy = (x1 - x0) / w, (y1 - y0) / h
    ys = y0 + (torch.arange(h, dtype=torch.float64) + 0.5) * dy  # [H] cell centres
    xs = x0 + (torch.arange(w, dtype=torch.float64) + 0.5) * dx  # [W]
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")  # [H, W] augmented-frame centres
    inv = torch.from_numpy(np.linalg.inv(bda.matrix()[:2, :2]))  # [2, 2]; bda has no xy translation
    src = torch.stack([gx, gy], dim=-1) @ inv.T  # [H, W, 2] lidar-frame points
    col = torch.floor((src[..., 0] - x0) / dx).long()  # [H, W]
    row = torch.floor((src[..., 1] - y0) / dy).long()
    inside = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    out = seg[:, row.clamp(0, h - 1), col.clamp(0, w - 1)]  # [S, H, W]
    return out * inside.to(seg.dtype)
