"""Projection of the pillar reference points into the cameras (official ``point_sampling``), per sample.

Shape letters: B batch, N cameras, Z points per pillar, Q BEV queries.

Unlike the official code, the per-camera hit masks are kept for every batch element (the official
spatial cross-attention later uses batch element 0 only).
"""

from __future__ import annotations

import torch

from bevforge.geometry.reference_points import denormalise_points
from bevforge.ops.constants import device_constant

#: depth below which a point counts as behind the camera (official ``eps``)
_DEPTH_EPS = 1e-5


def project_to_cameras(
    ref_3d_norm: torch.Tensor,
    pc_range: tuple[float, ...],
    lidar2img: torch.Tensor,
    img_hw: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Project normalised pillar points into every camera of every sample.

    Args:
        ref_3d_norm: ``[Z, Q, 3]`` normalised points (:func:`pillar_reference_points_3d`).
        pc_range: point cloud range in metres (x0, y0, z0, x1, y1, z1), lidar frame.
        lidar2img: ``[B, N, 4, 4]`` lidar points -> pixels of the (padded) network input images.
        img_hw: (H, W) in pixels that normalises the image coordinates (the padded input size: the
            feature maps cover the padded image).

    Returns:
        ``ref_cam [B, N, Q, Z, 2]`` normalised (u, v) in [0, 1] when inside the image, and
        ``hit [B, N, Q, Z]`` bool: in front of the camera and strictly inside the image.
    """
    if ref_3d_norm.dim() != 3 or lidar2img.dim() != 4 or lidar2img.shape[-2:] != (4, 4):
        raise ValueError(
            f"expected ref_3d [Z, Q, 3] and lidar2img [B, N, 4, 4], got {tuple(ref_3d_norm.shape)} "
            f"and {tuple(lidar2img.shape)}"
        )
    # Elementwise products instead of matmul: the official code turns TF32 off here; this is exact fp32.
    points = denormalise_points(ref_3d_norm.float(), pc_range)  # [Z, Q, 3] metres
    mat = lidar2img.float()  # [B, N, 4, 4]
    # [B, N, 1, 1, 3, 3] * [1, 1, Z, Q, 1, 3] -> sum -> [B, N, Z, Q, 3]
    cam = (mat[:, :, None, None, :3, :3] * points[None, None, :, :, None, :]).sum(-1)
    cam = cam + mat[:, :, None, None, :3, 3]  # [B, N, Z, Q, 3]: (u*d, v*d, d)
    depth = cam[..., 2:3]  # [B, N, Z, Q, 1]
    hit = depth > _DEPTH_EPS
    uv = cam[..., 0:2] / torch.clamp(depth, min=_DEPTH_EPS)  # [B, N, Z, Q, 2] pixels
    img_h, img_w = img_hw
    uv = uv / device_constant([float(img_w), float(img_h)], uv.dtype, uv.device)  # normalised (u, v)
    hit = hit & (uv[..., 1:2] > 0.0) & (uv[..., 1:2] < 1.0) & (uv[..., 0:1] < 1.0) & (uv[..., 0:1] > 0.0)
    # [B, N, Z, Q, 2] -> [B, N, Q, Z, 2]
    ref_cam = uv.permute(0, 1, 3, 2, 4).contiguous()
    # [B, N, Z, Q, 1] -> [B, N, Q, Z]
    hit = hit.squeeze(-1).permute(0, 1, 3, 2).contiguous()
    return ref_cam, hit
