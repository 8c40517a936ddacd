"""Reference points of the BEV queries (official BEVFormer ``get_reference_points``).

Shape letters: Z points per pillar, H/W BEV rows/cols (``bev_h``/``bev_w``), Q = H * W BEV queries.

Query ``i = row * W + col``; row follows lidar y (row 0 at y_min), col follows lidar x (col 0 at x_min).
All points here are *normalised* to [0, 1] over ``point_cloud_range`` (cell centres at (k + 0.5) / W).
"""

from __future__ import annotations

import torch

from bevforge.ops.constants import device_constant


def bev_reference_points_2d(
    bev_h: int, bev_w: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``[Q, 2]`` normalised (x, y) of the BEV cell centres (used by temporal self-attention)."""
    ys = (torch.arange(bev_h, device=device, dtype=dtype) + 0.5) / bev_h  # [H]
    xs = (torch.arange(bev_w, device=device, dtype=dtype) + 0.5) / bev_w  # [W]
    ref_y, ref_x = torch.meshgrid(ys, xs, indexing="ij")  # [H, W] each
    return torch.stack((ref_x.reshape(-1), ref_y.reshape(-1)), dim=-1)  # [Q, 2]


def pillar_reference_points_3d(
    bev_h: int,
    bev_w: int,
    num_points_in_pillar: int,
    z_range_m: float,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``[Z, Q, 3]`` normalised (x, y, z) of ``num_points_in_pillar`` heights in each BEV pillar.

    Heights are ``linspace(0.5, z_range_m - 0.5, Z) / z_range_m`` as in the official code (with the
    nuScenes range of 8 m: 0.0625, 0.354, 0.646, 0.9375 of the z range).
    """
    if num_points_in_pillar < 1:
        raise ValueError(f"num_points_in_pillar must be >= 1, got {num_points_in_pillar}")
    zs = torch.linspace(0.5, z_range_m - 0.5, num_points_in_pillar, device=device, dtype=dtype) / z_range_m
    xy = bev_reference_points_2d(bev_h, bev_w, device, dtype)  # [Q, 2]
    num_q = xy.shape[0]
    # [Z, 1, 1] -> [Z, Q, 1]
    z = zs.view(-1, 1, 1).expand(num_points_in_pillar, num_q, 1)
    # [Q, 2] -> [Z, Q, 2]
    xy = xy.unsqueeze(0).expand(num_points_in_pillar, num_q, 2)
    return torch.cat((xy, z), dim=-1)  # [Z, Q, 3]


def denormalise_points(points_norm: torch.Tensor, pc_range: tuple[float, ...]) -> torch.Tensor:
    """``[..., 3]`` normalised points -> metres in the lidar frame over ``pc_range`` (6 values)."""
    if len(pc_range) != 6:
        raise ValueError(f"point_cloud_range needs 6 values (x0, y0, z0, x1, y1, z1), got {pc_range}")
    lo = device_constant(pc_range[0:3], points_norm.dtype, points_norm.device)  # [3] (copied once)
    hi = device_constant(pc_range[3:6], points_norm.dtype, points_norm.device)  # [3]
    return points_norm * (hi - lo) + lo
