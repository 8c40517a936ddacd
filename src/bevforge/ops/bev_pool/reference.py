"""BEV pooling, pure PyTorch (the spec, the fallback, the ONNX path and the test oracle).

Shape letters as in :mod:`bevforge.ops.bev_pool.plan` (B, N, D, fH, fW, C, H = bev_h, W = bev_w, P).

Contract: ``depth [B, N, D, fH, fW]`` (a distribution over depth bins, usually softmaxed),
``context [B, N, fH, fW, C]`` and a :class:`~bevforge.ops.bev_pool.plan.BEVPoolPlan` made from the
frustum's BEV cells; returns ``[B, C, H, W]`` (in the promoted dtype of depth and context) where every
output cell holds ``sum over its points p of depth[p] * context[pixel of p]`` (zero for cells without
points).

The reference gathers the ``[P, C]`` products of the valid points and scatter-adds them into the cells
(``scatter_add`` exports to ONNX ``ScatterElements(reduction="add")`` from opset 16); the Triton kernel
never materialises ``[P, C]`` (BEVPoolv2). Autograd flows through both ``depth`` and ``context``.
"""

from __future__ import annotations

import torch

from bevforge.ops.bev_pool.plan import BEVPoolPlan

__all__ = ["bev_pool_reference", "check_inputs", "promote"]


def check_inputs(depth: torch.Tensor, context: torch.Tensor, plan: BEVPoolPlan) -> None:
    """Ranks and sizes of ``depth``/``context`` against the plan; ``ValueError`` naming the mismatch."""
    if depth.dim() != 5 or context.dim() != 5:
        raise ValueError(
            f"bev_pool: expected depth [B, N, D, fH, fW] and context [B, N, fH, fW, C], got "
            f"{tuple(depth.shape)} and {tuple(context.shape)}"
        )
    want_depth = (plan.batch_size, plan.num_cams, plan.depth_bins, plan.feat_h, plan.feat_w)
    if tuple(depth.shape) != want_depth:
        raise ValueError(
            f"bev_pool: depth {tuple(depth.shape)} differs from the plan's [B, N, D, fH, fW] {want_depth}; "
            "rebuild the plan (plan_bev_pool) for these sizes"
        )
    want_ctx = (plan.batch_size, plan.num_cams, plan.feat_h, plan.feat_w)
    if tuple(context.shape[:4]) != want_ctx:
        raise ValueError(
            f"bev_pool: context {tuple(context.shape)} differs from the plan's [B, N, fH, fW, C] "
            f"{want_ctx} + (C,); context is channels-last (permute [B, N, C, fH, fW] with (0, 1, 3, 4, 2))"
        )
    devices = {depth.device, context.device, plan.ranks_bev.device}
    if len(devices) != 1:
        raise ValueError(
            f"bev_pool: depth on {depth.device}, context on {context.device}, plan on "
            f"{plan.ranks_bev.device}; move them to one device (plan.to(depth.device))"
        )
    for name, t in (("depth", depth), ("context", context)):
        if not t.is_floating_point():
            raise ValueError(f"bev_pool: {name} must be a floating-point tensor, got {t.dtype}")


def promote(depth: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both in their promoted dtype (autocast gives an fp32 softmax depth and fp16/bf16 context)."""
    dtype = torch.promote_types(depth.dtype, context.dtype)
    return depth.to(dtype), context.to(dtype)


def bev_pool_reference(depth: torch.Tensor, context: torch.Tensor, plan: BEVPoolPlan) -> torch.Tensor:
    """``depth [B, N, D, fH, fW]``, ``context [B, N, fH, fW, C]`` -> ``[B, C, bev_h, bev_w]``."""
    check_inputs(depth, context, plan)
    depth, context = promote(depth, context)
    B, C = plan.batch_size, context.shape[-1]
    H, W = plan.bev_h, plan.bev_w
    depth_flat = depth.reshape(-1)  # [B*N*D*fH*fW]
    context_rows = context.reshape(-1, C)  # [B*N*fH*fW, C]
    # index_select: ~2x faster than advanced indexing on CPU
    point_depth = depth_flat.index_select(0, plan.ranks_depth)  # [P]
    point_context = context_rows.index_select(0, plan.ranks_feat)  # [P, C]
    weighted = point_depth.unsqueeze(1) * point_context  # [P, C]: every valid point's weighted context
    index = plan.ranks_bev.unsqueeze(1).expand(-1, C)  # [P, C]
    cells = torch.zeros(B * H * W, C, dtype=context.dtype, device=context.device)
    cells = cells.scatter_add(0, index, weighted)  # [B*H*W, C]
    # [B*H*W, C] -> [B, H, W, C] -> [B, C, H, W]
    return cells.view(B, H, W, C).permute(0, 3, 1, 2).contiguous()
