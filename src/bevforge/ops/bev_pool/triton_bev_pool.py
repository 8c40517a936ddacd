"""Triton kernels for BEV pooling (BEVPoolv2 style: the ``[P, C]`` frustum features are never stored).

Shape letters as in :mod:`bevforge.ops.bev_pool.plan`: B batch, N cameras, D depth bins, fH x fW feature
map, C channels, HW = bev_h * bev_w cells, P valid points, I non-empty cells, J context pixels with points.
Same contract as :mod:`bevforge.ops.bev_pool.reference` (the spec).

- forward: one program per (interval = output cell, block of channels); it walks the cell's points in
  chunks of ``BLOCK_P``, gathers ``depth[point]`` and ``context[pixel, c-block]``, accumulates in fp32
  and writes the cell once (cells without points stay zero);
- grad_depth: one program per ``BLOCK_P`` points: ``dot(grad_out[cell], context[pixel])`` over channels;
- grad_context: one program per (context pixel interval of the by-pixel regrouping, block of channels):
  ``sum over the pixel's points of depth[point] * grad_out[cell]``: every pixel is written by one
  program, so no atomics and a deterministic result.

Inputs may be fp32, fp16 or bf16 (accumulation is fp32). Ranks are the plan's int64 indices; the
dispatch (``bevforge.ops.bev_pool``) only sends tensors with fewer than 2**31 elements.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bevforge.ops.dispatch import launch


@triton.jit
def _bev_pool_fwd_kernel(
    depth_ptr,  # [B*N*D*fH*fW]
    ctx_ptr,  # [B*N*fH*fW, C]
    ranks_depth_ptr,  # [P] int64
    ranks_feat_ptr,  # [P] int64
    ranks_bev_ptr,  # [P] int64
    starts_ptr,  # [I] int64
    lengths_ptr,  # [I] int64
    out_ptr,  # [B, C, HW], zero-initialised
    C,
    HW,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    i = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)  # [BC]
    c_mask = c < C
    start = tl.load(starts_ptr + i)
    length = tl.load(lengths_ptr + i)
    offs = tl.arange(0, BLOCK_P)  # [BP]
    acc = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for k in range(0, length, BLOCK_P):
        p_mask = k + offs < length  # [BP]
        p = start + k + offs
        rd = tl.load(ranks_depth_ptr + p, mask=p_mask, other=0)
        rf = tl.load(ranks_feat_ptr + p, mask=p_mask, other=0)
        dv = tl.load(depth_ptr + rd, mask=p_mask, other=0.0).to(tl.float32)  # [BP]
        cv = tl.load(
            ctx_ptr + rf[:, None] * C + c[None, :], mask=p_mask[:, None] & c_mask[None, :], other=0.0
        ).to(tl.float32)  # [BP, BC]
        acc += tl.sum(dv[:, None] * cv, axis=0)
    rb = tl.load(ranks_bev_ptr + start)
    b = rb // HW
    cell = rb % HW
    tl.store(out_ptr + (b * C + c) * HW + cell, acc.to(out_ptr.dtype.element_ty), mask=c_mask)


@triton.jit
def _bev_pool_grad_depth_kernel(
    ctx_ptr,  # [B*N*fH*fW, C]
    gout_ptr,  # [B*HW, C] (grad_out channels-last)
    ranks_depth_ptr,  # [P] int64
    ranks_feat_ptr,  # [P] int64
    ranks_bev_ptr,  # [P] int64
    gdepth_ptr,  # [B*N*D*fH*fW], zero-initialised
    P,
    C,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)  # [BP]
    p_mask = p < P
    rd = tl.load(ranks_depth_ptr + p, mask=p_mask, other=0)
    rf = tl.load(ranks_feat_ptr + p, mask=p_mask, other=0)
    rb = tl.load(ranks_bev_ptr + p, mask=p_mask, other=0)
    acc = tl.zeros((BLOCK_P,), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)  # [BC]
        m = p_mask[:, None] & (c < C)[None, :]  # [BP, BC]
        g = tl.load(gout_ptr + rb[:, None] * C + c[None, :], mask=m, other=0.0).to(tl.float32)
        x = tl.load(ctx_ptr + rf[:, None] * C + c[None, :], mask=m, other=0.0).to(tl.float32)
        acc += tl.sum(g * x, axis=1)
    tl.store(gdepth_ptr + rd, acc.to(gdepth_ptr.dtype.element_ty), mask=p_mask)


@triton.jit
def _bev_pool_grad_context_kernel(
    depth_ptr,  # [B*N*D*fH*fW]
    gout_ptr,  # [B*HW, C] (grad_out channels-last)
    ranks_depth_ptr,  # [P] int64
    ranks_feat_ptr,  # [P] int64
    ranks_bev_ptr,  # [P] int64
    feat_order_ptr,  # [P] int64: the points regrouped by context pixel
    starts_ptr,  # [J] int64
    lengths_ptr,  # [J] int64
    gctx_ptr,  # [B*N*fH*fW, C], zero-initialised
    C,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    j = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)  # [BC]
    c_mask = c < C
    start = tl.load(starts_ptr + j)
    length = tl.load(lengths_ptr + j)
    offs = tl.arange(0, BLOCK_P)  # [BP]
    acc = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for k in range(0, length, BLOCK_P):
        q_mask = k + offs < length  # [BP]
        idx = tl.load(feat_order_ptr + start + k + offs, mask=q_mask, other=0)
        rd = tl.load(ranks_depth_ptr + idx, mask=q_mask, other=0)
        rb = tl.load(ranks_bev_ptr + idx, mask=q_mask, other=0)
        dv = tl.load(depth_ptr + rd, mask=q_mask, other=0.0).to(tl.float32)  # [BP]
        g = tl.load(
            gout_ptr + rb[:, None] * C + c[None, :], mask=q_mask[:, None] & c_mask[None, :], other=0.0
        ).to(tl.float32)  # [BP, BC]
        acc += tl.sum(dv[:, None] * g, axis=0)
    rf = tl.load(ranks_feat_ptr + tl.load(feat_order_ptr + start))
    tl.store(gctx_ptr + rf * C + c, acc.to(gctx_ptr.dtype.element_ty), mask=c_mask)


def _launch_params(C: int) -> tuple[int, int, int]:
    """(BLOCK_P, BLOCK_C, num_warps): up to 64 channels per program, about 2048 fp32 values per tile."""
    block_c = min(max(triton.next_power_of_2(C), 16), 64)
    block_p = max(16, 2048 // block_c) if C > 0 else 16
    return min(block_p, 64), block_c, 4


def bev_pool_forward(
    depth: torch.Tensor,
    context: torch.Tensor,
    ranks_depth: torch.Tensor,
    ranks_feat: torch.Tensor,
    ranks_bev: torch.Tensor,
    interval_starts: torch.Tensor,
    interval_lengths: torch.Tensor,
    batch_size: int,
    bev_h: int,
    bev_w: int,
) -> torch.Tensor:
    """Triton forward; returns ``[B, C, bev_h, bev_w]`` in ``context.dtype``."""
    C = context.shape[-1]
    out = torch.zeros(batch_size, C, bev_h, bev_w, device=context.device, dtype=context.dtype)
    num_intervals = interval_starts.shape[0]
    if num_intervals == 0 or C == 0:
        return out
    block_p, block_c, warps = _launch_params(C)
    grid = (num_intervals, triton.cdiv(C, block_c))
    launch(
        "bev-pool forward",
        _bev_pool_fwd_kernel,
        grid,
        depth.contiguous(),
        context.contiguous(),
        ranks_depth,
        ranks_feat,
        ranks_bev,
        interval_starts,
        interval_lengths,
        out,
        C,
        bev_h * bev_w,
        block_p,
        block_c,
        num_warps=warps,
    )
    return out


def bev_pool_backward(
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
    """Triton backward: (grad_depth, grad_context) in the dtypes of depth and context."""
    C = context.shape[-1]
    grad_depth = torch.zeros_like(depth, memory_format=torch.contiguous_format)
    grad_context = torch.zeros_like(context, memory_format=torch.contiguous_format)
    P = ranks_depth.shape[0]
    if P == 0 or C == 0:
        return grad_depth, grad_context
    depth = depth.contiguous()
    context = context.contiguous()
    # [B, C, H, W] -> [B, H, W, C]: one row of C per cell, read coalesced by both kernels
    gout_cells = grad_out.permute(0, 2, 3, 1).contiguous()
    block_p, block_c, warps = _launch_params(C)
    launch(
        "bev-pool depth-gradient",
        _bev_pool_grad_depth_kernel,
        (triton.cdiv(P, block_p),),
        context,
        gout_cells,
        ranks_depth,
        ranks_feat,
        ranks_bev,
        grad_depth,
        P,
        C,
        block_p,
        block_c,
        num_warps=warps,
    )
    grid = (feat_interval_starts.shape[0], triton.cdiv(C, block_c))
    launch(
        "bev-pool context-gradient",
        _bev_pool_grad_context_kernel,
        grid,
        depth,
        gout_cells,
        ranks_depth,
        ranks_feat,
        ranks_bev,
        feat_order,
        feat_interval_starts,
        feat_interval_lengths,
        grad_context,
        C,
        block_p,
        block_c,
        num_warps=warps,
    )
    return grad_depth, grad_context
