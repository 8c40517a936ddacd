"""The BEV pooling plan: which frustum points land in which BEV cell, sorted for segment sums.

Shape letters: B batch, N cameras, D depth bins, fH x fW feature map, C channels, H x W = bev_h x bev_w
BEV cells, P valid frustum points (inside the grid), I non-empty output cells, J context pixels that
receive at least one point.

A frustum point is one (b, n, d, h, w) of the depth distribution; its BEV cell is
``cell_index[b, n, d, h, w] = row * bev_w + col`` (row = y index from y_min, col = x index from x_min,
the query convention of docs/CONTRACTS.md), or -1 when it falls outside the grid or the z range.
The plan depends only on the calibration and the image augmentation, so it is cacheable while they are
fixed (BEVPoolv2's "precomputed ranks").
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

__all__ = ["BEVPoolPlan", "plan_bev_pool"]


@dataclass(frozen=True)
class BEVPoolPlan:
    """Points sorted by output cell (``ranks_bev`` ascending), one interval per non-empty cell.

    - ``ranks_depth [P]`` int64: flat index of the point into ``depth [B, N, D, fH, fW]``;
    - ``ranks_feat [P]`` int64: flat index of its pixel into ``context [B, N, fH, fW, C]`` rows, i.e.
      ``((b * N + n) * fH + h) * fW + w``;
    - ``ranks_bev [P]`` int64: flat output cell ``b * bev_h * bev_w + row * bev_w + col``;
    - ``interval_starts [I]``, ``interval_lengths [I]`` int64: the points of output cell
      ``ranks_bev[interval_starts[i]]`` are ``interval_starts[i] : interval_starts[i] + interval_lengths[i]``;
    - ``feat_order [P]``, ``feat_interval_starts [J]``, ``feat_interval_lengths [J]`` int64: the same points
      regrouped by context pixel (``ranks_feat[feat_order]`` ascending), used by the kernel backward to
      sum the context gradient per pixel without atomics;
    - ``batch_size, num_cams, depth_bins, feat_h, feat_w, bev_h, bev_w``: the sizes it was made for.
    """

    ranks_depth: torch.Tensor
    ranks_feat: torch.Tensor
    ranks_bev: torch.Tensor
    interval_starts: torch.Tensor
    interval_lengths: torch.Tensor
    feat_order: torch.Tensor
    feat_interval_starts: torch.Tensor
    feat_interval_lengths: torch.Tensor
    batch_size: int
    num_cams: int
    depth_bins: int
    feat_h: int
    feat_w: int
    bev_h: int
    bev_w: int

    @property
    def num_points(self) -> int:
        return int(self.ranks_depth.shape[0])

    @property
    def num_intervals(self) -> int:
        return int(self.interval_starts.shape[0])

    def to(self, device: torch.device | str) -> BEVPoolPlan:
        """The same plan with its tensors on ``device``."""
        values = {
            f.name: (
                getattr(self, f.name).to(device)
                if isinstance(getattr(self, f.name), torch.Tensor)
                else getattr(self, f.name)
            )
            for f in fields(self)
        }
        return BEVPoolPlan(**values)


def _intervals(sorted_keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(starts, lengths) of the runs of equal values in a sorted 1-D tensor."""
    _, lengths = torch.unique_consecutive(sorted_keys, return_counts=True)  # [I]
    starts = torch.cumsum(lengths, 0) - lengths  # [I]
    return starts, lengths


def plan_bev_pool(cell_index: torch.Tensor, bev_h: int, bev_w: int) -> BEVPoolPlan:
    """Sort the frustum points of ``cell_index [B, N, D, fH, fW]`` (int, -1 = outside) by BEV cell.

    Vectorised (argsort + unique_consecutive), on ``cell_index``'s device. Raises ``ValueError`` for a
    wrong rank, a float tensor or a cell index beyond ``bev_h * bev_w``.
    """
    if cell_index.dim() != 5:
        raise ValueError(
            f"plan_bev_pool: cell_index must be [B, N, D, fH, fW], got shape {tuple(cell_index.shape)}"
        )
    if cell_index.is_floating_point() or cell_index.is_complex() or cell_index.dtype == torch.bool:
        raise ValueError(
            f"plan_bev_pool: cell_index must be an integer tensor (row * bev_w + col, -1 outside), "
            f"got {cell_index.dtype}; compute it with .long() after flooring the coordinates"
        )
    if bev_h <= 0 or bev_w <= 0:
        raise ValueError(f"plan_bev_pool: bev_h, bev_w must be positive, got {bev_h}, {bev_w}")
    B, N, D, fH, fW = cell_index.shape
    num_cells = bev_h * bev_w
    flat = cell_index.reshape(-1).long()  # [B*N*D*fH*fW]
    if flat.numel() and int(flat.max()) >= num_cells:
        raise ValueError(
            f"plan_bev_pool: cell_index holds {int(flat.max())} >= bev_h * bev_w = {num_cells}; points "
            "outside the grid must be -1 (mask them before flattening row * bev_w + col)"
        )
    ranks_depth = torch.nonzero(flat >= 0).squeeze(1)  # [P] flat index into [B, N, D, fH, fW]
    cell = flat[ranks_depth]  # [P]
    pixel = ranks_depth % (fH * fW)  # [P] h * fW + w
    cam = ranks_depth // (D * fH * fW)  # [P] b * N + n
    ranks_feat = cam * (fH * fW) + pixel  # [P] flat (b, n, h, w)
    ranks_bev = (cam // N) * num_cells + cell  # [P] flat (b, row, col)
    order = torch.argsort(ranks_bev, stable=True)  # [P]
    ranks_depth, ranks_feat, ranks_bev = ranks_depth[order], ranks_feat[order], ranks_bev[order]
    interval_starts, interval_lengths = _intervals(ranks_bev)
    feat_order = torch.argsort(ranks_feat, stable=True)  # [P] into the bev-sorted points
    feat_interval_starts, feat_interval_lengths = _intervals(ranks_feat[feat_order])
    return BEVPoolPlan(
        ranks_depth=ranks_depth,
        ranks_feat=ranks_feat,
        ranks_bev=ranks_bev,
        interval_starts=interval_starts,
        interval_lengths=interval_lengths,
        feat_order=feat_order,
        feat_interval_starts=feat_interval_starts,
        feat_interval_lengths=feat_interval_lengths,
        batch_size=B,
        num_cams=N,
        depth_bins=D,
        feat_h=fH,
        feat_w=fW,
        bev_h=bev_h,
        bev_w=bev_w,
    )
