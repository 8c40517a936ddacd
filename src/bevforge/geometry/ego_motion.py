"""Ego-motion alignment of the previous BEV (official ``PerceptionTransformer.get_bev_features``).

Shape letters: B batch, H/W BEV rows/cols, Q = H * W, C channels.

can_bus layout (18, official): [0:3] ego translation in global (m), [3:7] rotation quaternion,
[7:10] accel, [10:13] rotation rate, [13:16] velocity, [16] yaw (rad, absolute), [17] yaw (deg).
The model feeds *deltas*: translation and yaw-in-degrees relative to the previous frame.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from bevforge.ops.constants import device_constant

#: rotation centre of the released checkpoints: (100, 100) pixels, the centre of a 200 x 200 BEV only
OFFICIAL_ROTATE_CENTER: tuple[float, float] = (100.0, 100.0)


def can_bus_deltas(
    can_bus_abs: torch.Tensor, prev_can_bus: torch.Tensor | None, prev_exists: torch.Tensor
) -> torch.Tensor:
    """Absolute can_bus -> the model input, exactly like the official test-time code.

    Args:
        can_bus_abs: ``[B, 18]`` absolute values of the current frame.
        prev_can_bus: ``[B, 18]`` absolute values of the previous frame (or None: no previous frame).
        prev_exists: ``[B]`` bool, the previous frame belongs to the same scene.

    Returns ``[B, 18]``: with a previous frame ``[0:3] -= prev[0:3]`` and ``[17] -= prev[17]``;
    otherwise ``[0:3] = 0`` and ``[17] = 0``. ``[16]`` (absolute yaw in rad) is kept.
    """
    if can_bus_abs.dim() != 2 or can_bus_abs.shape[-1] != 18:
        raise ValueError(f"can_bus must be [B, 18] (official layout), got {tuple(can_bus_abs.shape)}")
    out = can_bus_abs.clone()
    keep = prev_exists.to(device=out.device, dtype=torch.bool)[:, None]  # [B, 1]
    if prev_can_bus is None:
        prev_can_bus = torch.zeros_like(out)
    delta_pos = out[:, 0:3] - prev_can_bus[:, 0:3].to(out)  # [B, 3]
    delta_yaw = out[:, 17:18] - prev_can_bus[:, 17:18].to(out)  # [B, 1]
    out[:, 0:3] = torch.where(keep, delta_pos, torch.zeros_like(delta_pos))
    out[:, 17:18] = torch.where(keep, delta_yaw, torch.zeros_like(delta_yaw))
    return out


def bev_shift(
    can_bus_delta: torch.Tensor, bev_h: int, bev_w: int, grid_length_m: tuple[float, float]
) -> torch.Tensor:
    """``[B, 2]`` (x, y) shift, in normalised BEV units, of the reference points into the previous BEV.

    Official formula: the global translation ``(dx, dy)`` seen from the current absolute ego yaw
    (``can_bus[16]``) gives ``shift_y = |d| cos(yaw - atan2(dy, dx)) / grid_y / bev_h`` and
    ``shift_x = |d| sin(yaw - atan2(dy, dx)) / grid_x / bev_w`` (lidar y = ego forward, lidar x =
    ego right, as in nuScenes). ``grid_length_m = (grid_y, grid_x)`` metres per cell.
    """
    delta = can_bus_delta.double()  # official computes in float64 (numpy)
    dx, dy = delta[:, 0], delta[:, 1]  # [B]
    ego_angle_deg = delta[:, 16] / math.pi * 180.0
    length = torch.sqrt(dx**2 + dy**2)
    translation_angle_deg = torch.atan2(dy, dx) / math.pi * 180.0
    translation_angle_deg = torch.where(
        translation_angle_deg < 0, translation_angle_deg + 360.0, translation_angle_deg
    )
    bev_angle_rad = (ego_angle_deg - translation_angle_deg) / 180.0 * math.pi
    grid_y, grid_x = grid_length_m
    shift_y = length * torch.cos(bev_angle_rad) / grid_y / bev_h
    shift_x = length * torch.sin(bev_angle_rad) / grid_x / bev_w
    return torch.stack((shift_x, shift_y), dim=-1).to(can_bus_delta.dtype)  # [B, 2]


def rotate_bev(
    bev: torch.Tensor,
    angle_deg: torch.Tensor,
    bev_h: int,
    bev_w: int,
    center_xy: tuple[float, float] | None = None,
) -> torch.Tensor:
    """Rotate each sample's BEV map by its own angle, as ``torchvision...rotate`` (nearest, zero fill).

    Args:
        bev: ``[B, Q, C]`` BEV features, query ``row * W + col``.
        angle_deg: ``[B]`` rotation in degrees (counter-clockwise on the [C, H, W] image, i.e. the
            previous frame is turned by the ego yaw change).
        center_xy: rotation centre in pixels (x, y) from the top-left corner of the [H, W] image;
            None = the grid centre. The released checkpoints use (100, 100) (right only for 200 x 200).

    Batched re-implementation of torchvision's tensor ``rotate`` (inverse affine matrix + affine grid +
    ``grid_sample(mode="nearest", align_corners=False)``), so every sample gets its own angle.
    """
    if bev.dim() != 3 or bev.shape[1] != bev_h * bev_w:
        raise ValueError(f"bev must be [B, {bev_h}*{bev_w}, C], got {tuple(bev.shape)}")
    batch, _, channels = bev.shape
    # [B, Q, C] -> [B, H, W, C] -> [B, C, H, W]
    image = bev.reshape(batch, bev_h, bev_w, channels).permute(0, 3, 1, 2)
    if center_xy is None:
        cx, cy = 0.0, 0.0
    else:  # pixel coordinates with (0, 0) at the image centre
        cx, cy = center_xy[0] - bev_w * 0.5, center_xy[1] - bev_h * 0.5
    rot = torch.deg2rad(-angle_deg.double())  # [B]; torchvision inverts the angle direction
    cos, sin = torch.cos(rot), torch.sin(rot)
    # inverse rotation about the centre: [cos, sin, tx; -sin, cos, ty]
    tx = cos * (-cx) + sin * (-cy) + cx
    ty = -sin * (-cx) + cos * (-cy) + cy
    theta = torch.stack((cos, sin, tx, -sin, cos, ty), dim=-1).view(batch, 2, 3)  # [B, 2, 3]
    theta = theta.to(image.dtype if image.is_floating_point() else torch.float32)
    # base grid of output pixel centres, centred coordinates (torchvision _gen_affine_grid)
    xs = torch.linspace(-bev_w * 0.5 + 0.5, bev_w * 0.5 - 0.5, bev_w, device=bev.device, dtype=theta.dtype)
    ys = torch.linspace(-bev_h * 0.5 + 0.5, bev_h * 0.5 - 0.5, bev_h, device=bev.device, dtype=theta.dtype)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # [H, W]
    base = torch.stack((grid_x, grid_y, torch.ones_like(grid_x)), dim=-1).view(1, bev_h * bev_w, 3)
    scale = device_constant([0.5 * bev_w, 0.5 * bev_h], theta.dtype, bev.device)  # [2] (copied once)
    rescaled = theta.transpose(1, 2).to(bev.device) / scale  # [B, 3, 2]
    grid = base.expand(batch, -1, -1).bmm(rescaled).view(batch, bev_h, bev_w, 2)  # [B, H, W, 2]
    out = F.grid_sample(
        image, grid.to(image.dtype), mode="nearest", padding_mode="zeros", align_corners=False
    )
    # [B, C, H, W] -> [B, H, W, C] -> [B, Q, C]
    return out.permute(0, 2, 3, 1).reshape(batch, bev_h * bev_w, channels)
