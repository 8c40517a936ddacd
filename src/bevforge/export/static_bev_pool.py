"""BEV pooling for ONE fixed plan as gathers and sums: no scatter, no data-dependent size (for export).

Shape letters as in :mod:`bevforge.ops.bev_pool.plan`: B batch, N cameras, D depth bins, fH x fW feature
map, C channels, H x W = bev_h x bev_w, P valid frustum points, I non-empty cells; ``L_k`` the padded
length of bucket k, ``I_k`` its cells.

For a fixed camera rig the plan (which frustum point lands in which BEV cell) is a constant, so the
"splat" is a segment sum over constant index lists (BEVPoolv2 / TensorRT deployments precompute it the
same way). The non-empty cells are grouped into buckets by their point count rounded up to a power of
two; bucket k gathers ``depth [I_k, L_k]`` and ``context [I_k, L_k, C]`` through constant padded index
tables (the pad points at an appended zero) and sums over ``L_k``; one last gather puts the cell sums
(and a zero row for the empty cells) in grid order. At most 2x the ``[P, C]`` products of the
scatter_add reference are materialised; the graph has only ``Gather``, ``Mul``, ``ReduceSum``,
``Concat``, ``Reshape``, ``Transpose`` (no ``ScatterElements``/``ScatterND``, whose CPU kernels in
onnxruntime are not all race-free on repeated indices: see :mod:`bevforge.export.symbolics`), and every
cell's sum runs in one fixed order on every runtime.
"""

from __future__ import annotations

import torch
from torch import nn

from bevforge.ops.bev_pool.plan import BEVPoolPlan


class StaticBEVPool(nn.Module):
    """``forward(depth [B, N, D, fH, fW], context [B, N, fH, fW, C]) -> [B, C, H, W]`` for the plan given
    at construction (the sizes must be the plan's); equals :func:`bevforge.ops.bev_pool.bev_pool`."""

    def __init__(self, plan: BEVPoolPlan) -> None:
        super().__init__()
        plan = plan.to("cpu")
        self.sizes = (plan.batch_size, plan.num_cams, plan.depth_bins, plan.feat_h, plan.feat_w)
        self.bev_hw = (plan.bev_h, plan.bev_w)
        num_depth = plan.batch_size * plan.num_cams * plan.depth_bins * plan.feat_h * plan.feat_w
        num_pixels = plan.batch_size * plan.num_cams * plan.feat_h * plan.feat_w
        num_cells = plan.batch_size * plan.bev_h * plan.bev_w
        starts, lengths = plan.interval_starts, plan.interval_lengths  # [I], [I]
        # bucket of every cell: its point count rounded up to a power of two
        pow2 = torch.ceil(torch.log2(lengths.double().clamp(min=1))).long()  # [I]
        slot = torch.full((num_cells,), -1, dtype=torch.long)  # [B*H*W] row of the cell in the sums
        self.num_buckets = 0
        filled = 0
        for k in torch.unique(pow2).tolist():
            cells = torch.nonzero(pow2 == k).squeeze(1)  # [I_k] intervals of this bucket
            width = 1 << int(k)  # L_k
            offsets = torch.arange(width)  # [L_k]
            points = starts[cells, None] + offsets  # [I_k, L_k] into the bev-sorted points
            pad = offsets[None, :] >= lengths[cells, None]  # [I_k, L_k]
            points = points.clamp(max=max(plan.num_points - 1, 0))
            # padded entries point at the appended zero (index num_depth / num_pixels)
            depth_idx = torch.where(pad, num_depth, plan.ranks_depth[points])  # [I_k, L_k]
            feat_idx = torch.where(pad, num_pixels, plan.ranks_feat[points])  # [I_k, L_k]
            self.register_buffer(f"depth_index_{self.num_buckets}", depth_idx, persistent=False)
            self.register_buffer(f"feat_index_{self.num_buckets}", feat_idx, persistent=False)
            slot[plan.ranks_bev[starts[cells]]] = torch.arange(filled, filled + cells.numel())
            filled += cells.numel()
            self.num_buckets += 1
        slot = torch.where(slot < 0, filled, slot)  # empty cells read the zero row after the sums
        self.register_buffer("cell_slot", slot, persistent=False)  # [B*H*W]
        self.num_points = plan.num_points
        self.padded_points = sum(
            int(getattr(self, f"depth_index_{k}").numel()) for k in range(self.num_buckets)
        )

    def forward(self, depth: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        if tuple(depth.shape) != self.sizes or tuple(context.shape[:4]) != self.sizes[:2] + self.sizes[3:]:
            raise ValueError(
                f"StaticBEVPool was built for depth {self.sizes} [B, N, D, fH, fW] and context "
                f"{self.sizes[:2] + self.sizes[3:]} + (C,); got {tuple(depth.shape)} and "
                f"{tuple(context.shape)}: export again for these sizes"
            )
        dtype = torch.promote_types(depth.dtype, context.dtype)
        batch, channels = self.sizes[0], context.shape[-1]
        depth_flat = torch.cat(
            [depth.reshape(-1).to(dtype), depth.new_zeros(1, dtype=dtype)]
        )  # [B*N*D*fH*fW+1]
        rows = context.reshape(-1, channels).to(dtype)  # [B*N*fH*fW, C]
        rows = torch.cat([rows, rows.new_zeros(1, channels)])  # [B*N*fH*fW + 1, C]
        sums = []
        for k in range(self.num_buckets):
            depth_idx = getattr(self, f"depth_index_{k}")  # [I_k, L_k]
            feat_idx = getattr(self, f"feat_index_{k}")  # [I_k, L_k]
            d = depth_flat.index_select(0, depth_idx.reshape(-1)).view(depth_idx.shape)  # [I_k, L_k]
            c = rows.index_select(0, feat_idx.reshape(-1)).view(*feat_idx.shape, channels)  # [I_k, L_k, C]
            sums.append((d.unsqueeze(-1) * c).sum(dim=1))  # [I_k, C]
        sums.append(rows.new_zeros(1, channels))  # the empty cells' row
        cells = torch.cat(sums).index_select(0, self.cell_slot)  # [B*H*W, C]
        height, width = self.bev_hw
        # [B*H*W, C] -> [B, H, W, C] -> [B, C, H, W]
        return cells.view(batch, height, width, channels).permute(0, 3, 1, 2).contiguous()
