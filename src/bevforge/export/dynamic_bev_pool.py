"""LSS geometry + BEV pooling with the rig as a graph INPUT (``bevforge export --dynamic-rig``).

Shape letters: B batch, N cameras, D depth bins, fH x fW feature map, M = D * fH * fW frustum points per
camera, C context channels, H x W = bev_h x bev_w.

The graph computes what :class:`bevforge.nn.lss.LSSViewTransformer` computes at run time: frustum points
through ``inv(lidar2img)`` (float64; an affine inverse from cofactors, since ONNX has no matrix inverse),
the BEV cell of every point (:func:`bevforge.nn.lss.bev_cell_index`, the same float32 ops), then a
``scatter_add`` of every point's ``depth x context`` into its cell (dropped points into one extra cell
that is cut off). No data-dependent size: all ``B * N * M`` points are scattered (the static plan of
:mod:`bevforge.export.static_bev_pool` keeps only the valid ones), so it costs ``[B*N*M, C]`` floats.

``scatter_add`` exports to ``ScatterElements(reduction="add")`` with repeated indices. onnxruntime 1.32's
CPU kernel applies the updates sequentially in index order, i.e. in the order of the PyTorch reference
(bit-identical sums; checked by ``tests/unit/export/test_export_bevdet_dynamic.py``). Runtimes whose
kernel adds with atomics (CUDA) sum in another order (same values up to float rounding); a runtime that
parallelised it without atomics would lose updates, as onnxruntime's ``ScatterND`` does
(:mod:`bevforge.export.symbolics`): check a new runtime with that test before relying on it.
"""

from __future__ import annotations

import torch
from torch import nn

from bevforge.nn.lss import bev_cell_index, frustum_points


def _cross(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``u x v`` over the last axis (3) with elementwise ops (``torch.cross`` has no ONNX export)."""
    u0, u1, u2 = u.unbind(-1)
    v0, v1, v2 = v.unbind(-1)
    return torch.stack([u1 * v2 - u2 * v1, u2 * v0 - u0 * v2, u0 * v1 - u1 * v0], dim=-1)


def affine_inverse(m: torch.Tensor) -> torch.Tensor:
    """Inverse of affine 4x4 matrices ``[..., 4, 4]`` (last row ``0 0 0 1``) from the 3x3 cofactors:
    only elementwise ops and ``MatMul``, so it exports to ONNX. Same dtype as ``m`` (use float64)."""
    a = m[..., :3, :3]  # [..., 3, 3]
    r0, r1, r2 = a[..., 0, :], a[..., 1, :], a[..., 2, :]  # rows [..., 3]
    # inv(A) = [r1 x r2, r2 x r0, r0 x r1] (as columns) / det(A)
    c0 = _cross(r1, r2)  # [..., 3]
    cols = torch.stack([c0, _cross(r2, r0), _cross(r0, r1)], dim=-1)  # [..., 3, 3] columns
    det = (r0 * c0).sum(-1)  # [...]
    inv_a = cols / det[..., None, None]  # [..., 3, 3]
    t = -(inv_a @ m[..., :3, 3:4])  # [..., 3, 1]
    bottom = torch.tensor(
        [0.0, 0.0, 0.0, 1.0], dtype=m.dtype, device=m.device
    )  # no in-place write: no scatter
    bottom = bottom.expand(*m.shape[:-2], 1, 4)  # [..., 1, 4]
    return torch.cat([torch.cat([inv_a, t], dim=-1), bottom], dim=-2)  # [..., 4, 4]


class DynamicBEVPool(nn.Module):
    """``forward(depth [B, N, D, fH, fW], context [B, N, fH, fW, C], lidar2img [B, N, 4, 4])`` ->
    ``[B, C, H, W]``: the LSS splat of ``view_transformer`` for any rig, in exportable ops."""

    def __init__(self, view_transformer: nn.Module, feat_hw: tuple[int, int]) -> None:
        super().__init__()
        vt = view_transformer
        self.pc_range, self.bev_hw = vt.pc_range, (vt.bev_h, vt.bev_w)
        frustum = frustum_points(feat_hw, vt.feat_downsample, vt.depth_m.cpu()).double()  # [D, fH, fW, 3]
        depth = frustum[..., 2:3]
        homog = torch.cat([frustum[..., :2] * depth, depth, torch.ones_like(depth)], dim=-1)  # [D, fH, fW, 4]
        self.frustum_shape = tuple(frustum.shape[:3])  # (D, fH, fW)
        self.register_buffer("homog", homog.reshape(-1, 4).T.contiguous(), persistent=False)  # [4, M]

    def cell_index(self, lidar2img: torch.Tensor) -> torch.Tensor:
        """``[B, N, D, fH, fW]`` int64 BEV cell of every frustum point (-1 dropped), as the LSS has it."""
        img2lidar = affine_inverse(lidar2img.double())  # [B, N, 4, 4]
        points = img2lidar[..., :3, :] @ self.homog  # [B, N, 3, M] float64
        points = points.transpose(-1, -2).float()  # [B, N, M, 3] float32 as the LSS
        points = points.reshape(*lidar2img.shape[:2], *self.frustum_shape, 3)  # [B, N, D, fH, fW, 3]
        return bev_cell_index(points, self.pc_range, *self.bev_hw)

    def forward(self, depth: torch.Tensor, context: torch.Tensor, lidar2img: torch.Tensor) -> torch.Tensor:
        num_b, channels = depth.shape[0], context.shape[-1]
        height, width = self.bev_hw
        cells = self.cell_index(lidar2img)  # [B, N, D, fH, fW]
        offset = torch.arange(num_b, device=cells.device).view(num_b, 1, 1, 1, 1) * (height * width)
        dump = num_b * height * width  # dropped points go to this extra row
        flat = torch.where(cells >= 0, cells + offset, torch.full_like(cells, dump)).reshape(-1)  # [B*N*M]
        weighted = depth.unsqueeze(-1) * context.unsqueeze(2)  # [B, N, D, fH, fW, C]
        weighted = weighted.reshape(-1, channels)  # [B*N*M, C]
        index = flat.unsqueeze(1).expand(-1, channels)  # [B*N*M, C]
        out = weighted.new_zeros(dump + 1, channels).scatter_add(0, index, weighted)  # [B*H*W + 1, C]
        # [B*H*W, C] -> [B, H, W, C] -> [B, C, H, W]
        return out[:dump].view(num_b, height, width, channels).permute(0, 3, 1, 2).contiguous()
