"""``torch.ops.bevforge.bev_pool``: the Triton BEV pooling kernels as a ``torch.library`` custom op.

Registered with a fake (meta) implementation and an autograd formula, so ``torch.compile``,
``torch.export`` and AOTAutograd see one opaque op with a known output shape instead of tracing into
Triton launches. The op takes the plan's tensors one by one (custom ops take tensors and ints, not
dataclasses); :func:`bev_pool_plan_op` unpacks a :class:`BEVPoolPlan`. Shape letters as in
:mod:`bevforge.ops.bev_pool.plan`.

The op runs on CUDA tensors, or on CPU tensors when ``TRITON_INTERPRET=1`` was set before Triton was
imported (the test path). The dispatch in ``bevforge.ops.bev_pool`` decides when it is used.
"""

from __future__ import annotations

import torch

from bevforge.ops.bev_pool import triton_bev_pool
from bevforge.ops.bev_pool.plan import BEVPoolPlan

__all__ = ["bev_pool_backward_op", "bev_pool_op", "bev_pool_plan_op"]


def _check(depth: torch.Tensor, context: torch.Tensor, ranks: tuple[torch.Tensor, ...]) -> None:
    if depth.dim() != 5 or context.dim() != 5:
        raise ValueError(
            f"bev_pool: expected depth [B, N, D, fH, fW] and context [B, N, fH, fW, C], got "
            f"{tuple(depth.shape)} and {tuple(context.shape)}"
        )
    if depth.dtype != context.dtype:
        raise ValueError(f"bev_pool: depth dtype {depth.dtype} differs from context dtype {context.dtype}")
    for r in ranks:
        if r.dtype != torch.int64 or r.dim() != 1:
            raise ValueError(f"bev_pool: plan tensors must be 1-D int64, got {r.dtype} {tuple(r.shape)}")


@torch.library.custom_op("bevforge::bev_pool", mutates_args=())
def bev_pool_op(
    depth: torch.Tensor,
    context: torch.Tensor,
    ranks_depth: torch.Tensor,
    ranks_feat: torch.Tensor,
    ranks_bev: torch.Tensor,
    interval_starts: torch.Tensor,
    interval_lengths: torch.Tensor,
    feat_order: torch.Tensor,
    feat_interval_starts: torch.Tensor,
    feat_interval_lengths: torch.Tensor,
    batch_size: int,
    bev_h: int,
    bev_w: int,
) -> torch.Tensor:
    """``depth [B, N, D, fH, fW]``, ``context [B, N, fH, fW, C]`` + plan tensors -> ``[B, C, bev_h, bev_w]``
    in ``context.dtype`` (fp32 accumulation). ``feat_*`` are used by the backward only."""
    _check(depth, context, (ranks_depth, ranks_feat, ranks_bev, interval_starts, interval_lengths))
    return triton_bev_pool.bev_pool_forward(
        depth,
        context,
        ranks_depth,
        ranks_feat,
        ranks_bev,
        interval_starts,
        interval_lengths,
        batch_size,
        bev_h,
        bev_w,
    )


@bev_pool_op.register_fake
def _bev_pool_fake(depth, context, rd, rf, rb, starts, lengths, fo, fs, fl, batch_size, bev_h, bev_w):
    _check(depth, context, (rd, rf, rb, starts, lengths))
    return context.new_empty(batch_size, context.shape[-1], bev_h, bev_w)


@torch.library.custom_op("bevforge::bev_pool_backward", mutates_args=())
def bev_pool_backward_op(
    grad_out: torch.Tensor,
    depth: torch.Tensor,
    context: torch.Tensor,
    ranks_depth: torch.Tensor,
    ranks_feat: torch.Tensor,
    ranks_bev: torch.Tensor,
    feat_order: torch.Tensor,
    feat_interval_starts: torch.Tensor,
    feat_interval_lengths: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of (depth, context): per point dot products, per context pixel segment sums."""
    return triton_bev_pool.bev_pool_backward(
        grad_out,
        depth,
        context,
        ranks_depth,
        ranks_feat,
        ranks_bev,
        feat_order,
        feat_interval_starts,
        feat_interval_lengths,
    )


@bev_pool_backward_op.register_fake
def _bev_pool_backward_fake(grad_out, depth, context, rd, rf, rb, fo, fs, fl):
    return (
        torch.empty_like(depth, memory_format=torch.contiguous_format),
        torch.empty_like(context, memory_format=torch.contiguous_format),
    )


def _setup_context(ctx, inputs, output) -> None:
    depth, context, rd, rf, rb, _, _, fo, fs, fl, *_ = inputs
    ctx.save_for_backward(depth, context, rd, rf, rb, fo, fs, fl)


def _backward(ctx, grad_out: torch.Tensor):
    depth, context, rd, rf, rb, fo, fs, fl = ctx.saved_tensors
    grad_depth, grad_context = bev_pool_backward_op(grad_out, depth, context, rd, rf, rb, fo, fs, fl)
    # the plan (integer tensors) and the sizes get no gradient
    return (grad_depth, grad_context) + (None,) * 11


bev_pool_op.register_autograd(_backward, setup_context=_setup_context)


def bev_pool_plan_op(depth: torch.Tensor, context: torch.Tensor, plan: BEVPoolPlan) -> torch.Tensor:
    """:func:`bev_pool_op` with the tensors of ``plan``."""
    return bev_pool_op(
        depth,
        context,
        plan.ranks_depth,
        plan.ranks_feat,
        plan.ranks_bev,
        plan.interval_starts,
        plan.interval_lengths,
        plan.feat_order,
        plan.feat_interval_starts,
        plan.feat_interval_lengths,
        plan.batch_size,
        plan.bev_h,
        plan.bev_w,
    )
