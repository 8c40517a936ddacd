"""Lift-Splat-Shoot view transformer (BEVDet's ``LSSViewTransformer``): image features -> BEV features.

Shape letters: B batch, N cameras, D depth bins, C context channels, C_in image-feature channels,
fH/fW feature-map size (stride ``feat_downsample`` of the padded input image), H/W BEV grid.

Lift: a 1x1 conv predicts, per feature cell, a softmax over D depth bins and C context channels.
Geometry: every frustum point ``(u, v, d)`` (the feature cell's centre in INPUT-image pixels, a depth
bin) goes to the lidar frame through ``inv(lidar2img)`` applied to ``(u d, v d, d, 1)``; ``lidar2img``
already holds every image augmentation (resize, crop, flip, rotate) and every BEV augmentation, so the
model needs no other matrix. This is exact for a pinhole camera. Splat: each point falls into one BEV
cell over ``pc_range`` (row = y from y_min, col = x from x_min, docs/CONTRACTS.md); points outside the
grid or outside ``[z_min, z_max)`` are dropped; ``ops.bev_pool`` sums ``depth x context`` per cell.

Pixel convention: pixel i covers ``[i, i+1)`` (as the resize ``diag(sx, sy)`` in ``data/transforms.py``
and BEVFormer's ``grid_sample(align_corners=False)``), so feature cell j is centred at input pixel
``(j + 0.5) * stride``. The official code spreads ``linspace(0, W_in - 1, fW)`` instead (the same
points up to half an input pixel at the centre, ~7 px at the borders for 704 / 16).
"""

from __future__ import annotations

import torch
from torch import nn

from bevforge.ops.bev_pool.plan import BEVPoolPlan


def depth_bin_centres(depth_bins: tuple[float, float, float]) -> torch.Tensor:
    """``(start, stop, step)`` in metres -> ``[D]`` depths ``start, start + step, ... < stop`` (official
    ``torch.arange(*grid_config['depth'])``: 59 bins for ``(1, 60, 1)``)."""
    start, stop, step = (float(v) for v in depth_bins)
    if step <= 0 or stop <= start or start <= 0:
        raise ValueError(f"depth_bins {depth_bins}: need 0 < start < stop and step > 0 (metres)")
    return torch.arange(start, stop - 1e-6, step, dtype=torch.float64).float()  # [D]


def frustum_points(feat_hw: tuple[int, int], stride: int, depth_m: torch.Tensor) -> torch.Tensor:
    """``[D, fH, fW, 3]`` frustum points ``(u_px, v_px, depth_m)``: feature-cell centres in input-image
    pixels x the depth bins."""
    feat_h, feat_w = feat_hw
    dev, dt = depth_m.device, depth_m.dtype
    u = (torch.arange(feat_w, device=dev, dtype=dt) + 0.5) * stride  # [fW]
    v = (torch.arange(feat_h, device=dev, dtype=dt) + 0.5) * stride  # [fH]
    num_d = depth_m.shape[0]
    return torch.stack(
        [
            u.view(1, 1, feat_w).expand(num_d, feat_h, feat_w),
            v.view(1, feat_h, 1).expand(num_d, feat_h, feat_w),
            depth_m.view(num_d, 1, 1).expand(num_d, feat_h, feat_w),
        ],
        dim=-1,
    )  # [D, fH, fW, 3]


def frustum_to_lidar(frustum: torch.Tensor, lidar2img: torch.Tensor) -> torch.Tensor:
    """Frustum ``[D, fH, fW, 3]`` (u, v, d) and ``lidar2img [B, N, 4, 4]`` -> lidar points
    ``[B, N, D, fH, fW, 3]`` (metres): ``inv(lidar2img) @ (u d, v d, d, 1)``, inverted in float64."""
    assert frustum.dim() == 4 and frustum.shape[-1] == 3, frustum.shape
    assert lidar2img.dim() == 4 and lidar2img.shape[-2:] == (4, 4), lidar2img.shape
    img2lidar = torch.linalg.inv(lidar2img.double())  # [B, N, 4, 4]
    f = frustum.double()
    depth = f[..., 2:3]
    homog = torch.cat([f[..., :2] * depth, depth, torch.ones_like(depth)], dim=-1)  # [D, fH, fW, 4]
    points = torch.einsum("bnij,dhwj->bndhwi", img2lidar[..., :3, :], homog)  # [B, N, D, fH, fW, 3]
    return points.to(lidar2img.dtype)


def bev_cell_index(
    points_lidar: torch.Tensor, pc_range: tuple[float, ...], bev_h: int, bev_w: int
) -> torch.Tensor:
    """Lidar points ``[..., 3]`` -> flat BEV cell ``row * bev_w + col`` ``[...]`` int64, -1 outside the
    grid or outside ``[z_min, z_max)``. Cells are ``[x_min + col dx, x_min + (col + 1) dx)`` (floor)."""
    x_min, y_min, z_min, x_max, y_max, z_max = (float(v) for v in pc_range)
    x, y, z = points_lidar.unbind(-1)
    col = torch.floor((x - x_min) / ((x_max - x_min) / bev_w))
    row = torch.floor((y - y_min) / ((y_max - y_min) / bev_h))
    inside = (col >= 0) & (col < bev_w) & (row >= 0) & (row < bev_h) & (z >= z_min) & (z < z_max)
    cell = (row * bev_w + col).long()
    return torch.where(inside, cell, torch.full_like(cell, -1))


class LSSViewTransformer(nn.Module):
    """Depth net + lift + splat. ``forward(feats [B, N, C_in, fH, fW], lidar2img [B, N, 4, 4])`` ->
    ``(bev [B, C, bev_h, bev_w], depth [B, N, D, fH, fW])`` (depth: per-cell softmax over the bins)."""

    def __init__(
        self,
        in_channels: int,
        context_channels: int,
        depth_bins: tuple[float, float, float],
        feat_downsample: int,
        pc_range: tuple[float, ...],
        bev_h: int,
        bev_w: int,
    ) -> None:
        super().__init__()
        if len(pc_range) != 6:
            raise ValueError(f"pc_range needs 6 values (x/y/z min, x/y/z max), got {pc_range}")
        self.register_buffer("depth_m", depth_bin_centres(depth_bins), persistent=False)  # [D]
        self.num_depth = int(self.depth_m.shape[0])
        self.context_channels = context_channels
        self.feat_downsample = feat_downsample
        self.pc_range = tuple(float(v) for v in pc_range)
        self.bev_h, self.bev_w = bev_h, bev_w
        self.depth_net = nn.Conv2d(in_channels, self.num_depth + context_channels, kernel_size=1)

    @torch.no_grad()
    def cell_index(self, feat_hw: tuple[int, int], lidar2img: torch.Tensor) -> torch.Tensor:
        """``[B, N, D, fH, fW]`` int64 BEV cell of every frustum point (-1: dropped)."""
        frustum = frustum_points(feat_hw, self.feat_downsample, self.depth_m)  # [D, fH, fW, 3]
        points = frustum_to_lidar(frustum, lidar2img.float())  # [B, N, D, fH, fW, 3]
        return bev_cell_index(points, self.pc_range, self.bev_h, self.bev_w)

    @torch.no_grad()
    def pool_plan(self, feat_hw: tuple[int, int], lidar2img: torch.Tensor) -> BEVPoolPlan:
        """The :func:`plan_bev_pool` plan of ``lidar2img [B, N, 4, 4]``; in eval mode the last plan is
        cached and reused while ``lidar2img`` keeps its shape, dtype, device and values (a fixed rig at
        inference: BEVPoolv2's precomputed ranks). Training always recomputes (augmented rigs differ)."""
        from bevforge.ops.bev_pool import plan_bev_pool

        if self.training or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            return plan_bev_pool(self.cell_index(feat_hw, lidar2img), self.bev_h, self.bev_w)
        cache = getattr(self, "_plan_cache", None)  # (feat_hw, lidar2img copy, plan); not in state_dict
        if (
            cache is not None
            and cache[0] == tuple(feat_hw)
            and cache[1].shape == lidar2img.shape
            and cache[1].dtype == lidar2img.dtype
            and cache[1].device == lidar2img.device
            and torch.equal(cache[1], lidar2img)
        ):
            return cache[2]
        plan = plan_bev_pool(self.cell_index(feat_hw, lidar2img), self.bev_h, self.bev_w)
        self._plan_cache = (tuple(feat_hw), lidar2img.detach().clone(), plan)
        return plan

    def forward(self, feats: torch.Tensor, lidar2img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        from bevforge.ops.bev_pool import bev_pool

        assert feats.dim() == 5, f"feats must be [B, N, C_in, fH, fW], got {tuple(feats.shape)}"
        assert lidar2img.shape == (*feats.shape[:2], 4, 4), (tuple(lidar2img.shape), tuple(feats.shape))
        num_b, num_n, _, feat_h, feat_w = feats.shape
        x = self.depth_net(feats.flatten(0, 1))  # [B*N, D + C, fH, fW]
        depth = x[:, : self.num_depth].softmax(dim=1)  # [B*N, D, fH, fW]
        depth = depth.view(num_b, num_n, self.num_depth, feat_h, feat_w)  # [B, N, D, fH, fW]
        context = x[:, self.num_depth :].view(num_b, num_n, self.context_channels, feat_h, feat_w)
        context = context.permute(0, 1, 3, 4, 2)  # [B, N, fH, fW, C]
        plan = self.pool_plan((feat_h, feat_w), lidar2img)
        bev = bev_pool(depth, context.contiguous(), plan)  # [B, C, bev_h, bev_w]
        return bev, depth
