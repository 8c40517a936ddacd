"""Depth targets for BEVDepth-style depth supervision of the LSS depth net, from the LIDAR_TOP cloud.

Shape letters: P lidar points, N cameras, fH/fW image-feature size (the padded input image / ``stride``).

Every lidar point (lidar frame, metres) goes through the camera's ``lidar2img`` (the one the model sees,
image augmentation included): ``(u d, v d, d) = lidar2img @ (x, y, z, 1)``. Points with ``d > 0`` whose
pixel ``(u, v)`` lies inside the valid (un-padded) image ``[0, W) x [0, H)`` fall into feature cell
``(floor(v / stride), floor(u / stride))`` (pixel k covers ``[k, k+1)``, as ``nn/lss.py``). Each cell keeps
the SMALLEST depth of its points (the nearest surface, official BEVDepth ``get_downsampled_gt_depth``
takes the min over the cell's pixels); cells without a point hold 0 (= no target). The loss
(``losses/depth.py``) turns depths into one-hot depth bins.

A BEV augmentation (BDA) changes ``lidar2img`` into ``lidar2img @ inv(bda)`` and the cloud into
``bda @ points``; the product, so the depth map, is the same, so the dataset projects the un-augmented
cloud with the un-augmented ``lidar2img``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bevforge.errors import InputError

#: nuScenes ``.pcd.bin``: float32 (x, y, z, intensity, ring) per point
LIDAR_POINT_DIMS = 5


class LidarFileError(InputError, ValueError):
    """A LIDAR_TOP file is missing or not a nuScenes ``.pcd.bin`` (float32 x 5 per point)."""


def load_lidar_points(path: str | Path) -> np.ndarray:
    """``.pcd.bin`` -> ``[P, 3]`` float32 points (x, y, z) in the LIDAR_TOP frame, metres."""
    path = Path(path)
    if not path.is_file():
        raise LidarFileError(
            f"{path}: lidar file not found (infos lidar_path, relative to data.data_root); depth "
            "supervision (model.bevdet.depth_loss_weight > 0) needs the LIDAR_TOP sweeps"
        )
    raw = np.fromfile(path, dtype=np.float32)
    if raw.size % LIDAR_POINT_DIMS:
        raise LidarFileError(
            f"{path}: {raw.size} float32 values is not a multiple of {LIDAR_POINT_DIMS} (x, y, z, intensity, "
            "ring); not a nuScenes .pcd.bin"
        )
    return raw.reshape(-1, LIDAR_POINT_DIMS)[:, :3]  # [P, 3]


def depth_map(
    points_lidar: torch.Tensor,
    lidar2img: torch.Tensor,
    img_hw: tuple[int, int],
    feat_hw: tuple[int, int],
    stride: int,
    min_depth_m: float = 1e-3,
) -> torch.Tensor:
    """Per feature cell, the nearest lidar depth (module docstring).

    ``points_lidar [P, 3]`` metres, ``lidar2img [N, 4, 4]`` (pixels of the input image), ``img_hw`` the
    valid image size, ``feat_hw`` the feature grid of the padded image, ``stride`` input pixels per cell
    -> ``[N, fH, fW]`` float32 depth in metres, 0 where no point lands."""
    assert points_lidar.dim() == 2 and points_lidar.shape[1] == 3, tuple(points_lidar.shape)
    assert lidar2img.dim() == 3 and lidar2img.shape[1:] == (4, 4), tuple(lidar2img.shape)
    num_n = lidar2img.shape[0]
    feat_h, feat_w = feat_hw
    img_h, img_w = img_hw
    pts = points_lidar.double()
    homog = torch.cat([pts, torch.ones_like(pts[:, :1])], dim=1)  # [P, 4]
    cam = torch.einsum("nij,pj->npi", lidar2img.double()[:, :3], homog)  # [N, P, 3] = (u d, v d, d)
    depth = cam[..., 2]  # [N, P]
    ok = depth > min_depth_m
    safe = torch.where(ok, depth, torch.ones_like(depth))
    u, v = cam[..., 0] / safe, cam[..., 1] / safe  # [N, P] pixels
    ok &= (u >= 0) & (u < img_w) & (v >= 0) & (v < img_h)
    col = torch.floor(u / stride).long().clamp(0, feat_w - 1)
    row = torch.floor(v / stride).long().clamp(0, feat_h - 1)
    cam_idx = torch.arange(num_n).view(num_n, 1).expand_as(row)  # [N, P]
    flat = (cam_idx * feat_h + row) * feat_w + col  # [N, P] flat cell over [N, fH, fW]
    out = torch.full((num_n * feat_h * feat_w,), float("inf"), dtype=torch.float64)
    out.scatter_reduce_(0, flat[ok], depth[ok], reduce="amin", include_self=True)
    out = torch.where(torch.isinf(out), torch.zeros_like(out), out)
    return out.view(num_n, feat_h, feat_w).float()  # [N, fH, fW]


def depth_bin_targets(depth_m: torch.Tensor, bin_depths_m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Depths ``[...]`` (0 = none) -> (bin index ``[...]`` int64, valid ``[...]`` bool).

    The bin is the nearest bin depth (``bin_depths_m [D]``, evenly spaced as ``nn/lss.depth_bin_centres``,
    the depths at which LSS places its frustum points); depths more than half a step outside the bins
    and empty cells are not valid."""
    start = float(bin_depths_m[0])
    step = float(bin_depths_m[1] - bin_depths_m[0]) if bin_depths_m.numel() > 1 else 1.0
    idx = torch.round((depth_m - start) / step)
    valid = (depth_m > 0) & (idx >= 0) & (idx < bin_depths_m.numel())
    return torch.where(valid, idx, torch.zeros_like(idx)).long(), valid
