"""Triton kernels for multi-scale deformable attention (forward and backward).

Shape letters: B batch, S = sum_l H_l * W_l value tokens, M heads, D channels per head, Q queries,
L levels, P points per level. Same contract as :mod:`bevforge.ops.msda.reference` (the spec):
bilinear sampling with zero padding and ``align_corners=False``, i.e. pixel coordinate
``x = loc_x * W - 0.5`` (pixel centres at integers), corners outside the map contribute zero.

One program handles ``BLOCK_Q`` queries of one (batch, head) pair and all ``D`` channels; it loops over
levels and points with runtime loops: unrolled (L, P as compile-time constants) the BEVFormer-base SCA
backward took tens of seconds to compile on first use. Inputs may be fp32, fp16 or bf16;
everything is accumulated in fp32. The backward writes the gradients of the sampling locations and the
attention weights directly (each (q, m, l, p) belongs to one program) and scatters the value gradient
with fp32 atomics (many queries sample the same pixel).

Indices are int32: the dispatch (``bevforge.ops.msda``) only sends tensors with fewer than 2**31
elements and D, L, P within ``MAX_HEAD_DIM``, ``MAX_LEVELS``, ``MAX_POINTS`` defined there.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bevforge.ops.msda.reference import output_dtype


@triton.jit
def _corner_ptrs(v_base, start, yy, xx, h, w, q_mask, d, d_mask, MD: tl.constexpr):
    """Pointers [BQ, BD] to value rows of pixel (yy, xx) and their mask (False = outside: zero padding)."""
    inside = q_mask & (xx >= 0) & (xx < w) & (yy >= 0) & (yy < h)  # [BQ]
    s = start + yy * w + xx  # [BQ] token index into S
    ptrs = v_base + s[:, None] * MD + d[None, :]  # [BQ, BD]
    return ptrs, inside[:, None] & d_mask[None, :]


@triton.jit
def _pixel_coords(loc_ptr, a_idx, q_mask, hf, wf):
    """Bilinear corner indices and fractions of the sampling points ``a_idx`` ([BQ] flat (q, m, l, p))."""
    lx = tl.load(loc_ptr + a_idx * 2, mask=q_mask, other=0.0).to(tl.float32)
    ly = tl.load(loc_ptr + a_idx * 2 + 1, mask=q_mask, other=0.0).to(tl.float32)
    # align_corners=False: pixel centres at integers; clamp far-away points so the int cast cannot
    # overflow (a point beyond [-1, W] has all four corners outside either way)
    x = tl.minimum(tl.maximum(lx * wf - 0.5, -2.0), wf + 1.0)
    y = tl.minimum(tl.maximum(ly * hf - 0.5, -2.0), hf + 1.0)
    x0f = tl.floor(x)
    y0f = tl.floor(y)
    return x0f.to(tl.int32), y0f.to(tl.int32), x - x0f, y - y0f


@triton.jit
def _msda_fwd_kernel(
    value_ptr,  # [B, S, M, D]
    shapes_ptr,  # [L, 2] int32 (H, W)
    starts_ptr,  # [L] int32
    loc_ptr,  # [B, Q, M, L, P, 2]
    attn_ptr,  # [B, Q, M, L, P]
    out_ptr,  # [B, Q, M * D]
    S,
    Q,
    M: tl.constexpr,
    D: tl.constexpr,
    L,
    P,
    BLOCK_Q: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_q = tl.program_id(0)
    bm = tl.program_id(1)
    b = bm // M
    m = bm % M
    q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)  # [BQ]
    d = tl.arange(0, BLOCK_D)  # [BD]
    q_mask = q < Q
    d_mask = d < D
    v_base = value_ptr + b * S * M * D + m * D
    a_row = ((b * Q + q) * M + m) * (L * P)  # [BQ] flat index of (b, q, m, 0, 0)
    acc = tl.zeros((BLOCK_Q, BLOCK_D), dtype=tl.float32)
    for lvl in range(L):
        h = tl.load(shapes_ptr + 2 * lvl)
        w = tl.load(shapes_ptr + 2 * lvl + 1)
        start = tl.load(starts_ptr + lvl)
        hf = h.to(tl.float32)
        wf = w.to(tl.float32)
        for p in range(P):
            a_idx = a_row + lvl * P + p
            aw = tl.load(attn_ptr + a_idx, mask=q_mask, other=0.0).to(tl.float32)
            x0, y0, fx, fy = _pixel_coords(loc_ptr, a_idx, q_mask, hf, wf)
            ptr, msk = _corner_ptrs(v_base, start, y0, x0, h, w, q_mask, d, d_mask, M * D)
            acc += (aw * (1.0 - fy) * (1.0 - fx))[:, None] * tl.load(ptr, mask=msk, other=0.0).to(tl.float32)
            ptr, msk = _corner_ptrs(v_base, start, y0, x0 + 1, h, w, q_mask, d, d_mask, M * D)
            acc += (aw * (1.0 - fy) * fx)[:, None] * tl.load(ptr, mask=msk, other=0.0).to(tl.float32)
            ptr, msk = _corner_ptrs(v_base, start, y0 + 1, x0, h, w, q_mask, d, d_mask, M * D)
            acc += (aw * fy * (1.0 - fx))[:, None] * tl.load(ptr, mask=msk, other=0.0).to(tl.float32)
            ptr, msk = _corner_ptrs(v_base, start, y0 + 1, x0 + 1, h, w, q_mask, d, d_mask, M * D)
            acc += (aw * fy * fx)[:, None] * tl.load(ptr, mask=msk, other=0.0).to(tl.float32)
    out_ptrs = out_ptr + ((b * Q + q) * M + m)[:, None] * D + d[None, :]  # [BQ, BD] into [B, Q, M*D]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=q_mask[:, None] & d_mask[None, :])


@triton.jit
def _msda_bwd_kernel(
    value_ptr,  # [B, S, M, D]
    shapes_ptr,  # [L, 2] int32
    starts_ptr,  # [L] int32
    loc_ptr,  # [B, Q, M, L, P, 2]
    attn_ptr,  # [B, Q, M, L, P]
    gout_ptr,  # [B, Q, M * D]
    gvalue_ptr,  # [B, S, M, D] fp32, zero-initialised (atomics)
    gloc_ptr,  # [B, Q, M, L, P, 2]
    gattn_ptr,  # [B, Q, M, L, P]
    S,
    Q,
    M: tl.constexpr,
    D: tl.constexpr,
    L,
    P,
    BLOCK_Q: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_q = tl.program_id(0)
    bm = tl.program_id(1)
    b = bm // M
    m = bm % M
    q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)  # [BQ]
    d = tl.arange(0, BLOCK_D)  # [BD]
    q_mask = q < Q
    d_mask = d < D
    qd_mask = q_mask[:, None] & d_mask[None, :]
    v_base = value_ptr + b * S * M * D + m * D
    gv_base = gvalue_ptr + b * S * M * D + m * D
    a_row = ((b * Q + q) * M + m) * (L * P)  # [BQ]
    g_ptrs = gout_ptr + ((b * Q + q) * M + m)[:, None] * D + d[None, :]  # [BQ, BD]
    g = tl.load(g_ptrs, mask=qd_mask, other=0.0).to(tl.float32)
    for lvl in range(L):
        h = tl.load(shapes_ptr + 2 * lvl)
        w = tl.load(shapes_ptr + 2 * lvl + 1)
        start = tl.load(starts_ptr + lvl)
        hf = h.to(tl.float32)
        wf = w.to(tl.float32)
        for p in range(P):
            a_idx = a_row + lvl * P + p
            aw = tl.load(attn_ptr + a_idx, mask=q_mask, other=0.0).to(tl.float32)
            x0, y0, fx, fy = _pixel_coords(loc_ptr, a_idx, q_mask, hf, wf)
            hx = 1.0 - fx
            hy = 1.0 - fy
            # corner (y0, x0): weight hy*hx; <grad_out, v> per query; value grad scattered
            ptr, msk = _corner_ptrs(v_base, start, y0, x0, h, w, q_mask, d, d_mask, M * D)
            gptr, _ = _corner_ptrs(gv_base, start, y0, x0, h, w, q_mask, d, d_mask, M * D)
            gv00 = tl.sum(g * tl.load(ptr, mask=msk, other=0.0).to(tl.float32), axis=1)  # [BQ]
            tl.atomic_add(gptr, (aw * hy * hx)[:, None] * g, mask=msk, sem="relaxed")
            ptr, msk = _corner_ptrs(v_base, start, y0, x0 + 1, h, w, q_mask, d, d_mask, M * D)
            gptr, _ = _corner_ptrs(gv_base, start, y0, x0 + 1, h, w, q_mask, d, d_mask, M * D)
            gv01 = tl.sum(g * tl.load(ptr, mask=msk, other=0.0).to(tl.float32), axis=1)
            tl.atomic_add(gptr, (aw * hy * fx)[:, None] * g, mask=msk, sem="relaxed")
            ptr, msk = _corner_ptrs(v_base, start, y0 + 1, x0, h, w, q_mask, d, d_mask, M * D)
            gptr, _ = _corner_ptrs(gv_base, start, y0 + 1, x0, h, w, q_mask, d, d_mask, M * D)
            gv10 = tl.sum(g * tl.load(ptr, mask=msk, other=0.0).to(tl.float32), axis=1)
            tl.atomic_add(gptr, (aw * fy * hx)[:, None] * g, mask=msk, sem="relaxed")
            ptr, msk = _corner_ptrs(v_base, start, y0 + 1, x0 + 1, h, w, q_mask, d, d_mask, M * D)
            gptr, _ = _corner_ptrs(gv_base, start, y0 + 1, x0 + 1, h, w, q_mask, d, d_mask, M * D)
            gv11 = tl.sum(g * tl.load(ptr, mask=msk, other=0.0).to(tl.float32), axis=1)
            tl.atomic_add(gptr, (aw * fy * fx)[:, None] * g, mask=msk, sem="relaxed")
            # d out / d attn = the bilinear sample; d sample / d x = (corner differences) * W
            g_attn = hy * hx * gv00 + hy * fx * gv01 + fy * hx * gv10 + fy * fx * gv11
            g_fx = hy * (gv01 - gv00) + fy * (gv11 - gv10)
            g_fy = hx * (gv10 - gv00) + fx * (gv11 - gv01)
            tl.store(gattn_ptr + a_idx, g_attn.to(gattn_ptr.dtype.element_ty), mask=q_mask)
            tl.store(gloc_ptr + a_idx * 2, (aw * g_fx * wf).to(gloc_ptr.dtype.element_ty), mask=q_mask)
            tl.store(gloc_ptr + a_idx * 2 + 1, (aw * g_fy * hf).to(gloc_ptr.dtype.element_ty), mask=q_mask)


def _launch_params(Q: int, D: int) -> tuple[int, int, int]:
    """(BLOCK_Q, BLOCK_D, num_warps): about 2048 fp32 accumulators per program."""
    block_d = max(triton.next_power_of_2(D), 1)
    block_q = max(16, min(128, 2048 // block_d))
    block_q = min(block_q, max(16, triton.next_power_of_2(Q)))
    return block_q, block_d, 4


def _prepare(
    value: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    shapes_i32 = spatial_shapes.to(device=value.device, dtype=torch.int32).contiguous()  # [L, 2]
    starts_i32 = level_start_index.to(device=value.device, dtype=torch.int32).contiguous()  # [L]
    return shapes_i32, starts_i32


def msda_forward(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """Triton forward; returns ``[B, Q, M * D]`` in the inputs' promoted dtype (``output_dtype``), fp32
    accumulation."""
    B, S, M, D = value.shape
    _, Q, _, L, P, _ = sampling_locations.shape
    shapes_i32, starts_i32 = _prepare(value, spatial_shapes, level_start_index)
    value = value.contiguous()
    locs = sampling_locations.contiguous()
    attn = attention_weights.contiguous()
    out = torch.empty(B, Q, M * D, device=value.device, dtype=output_dtype(value, locs, attn))
    if out.numel() == 0:
        return out.zero_()
    block_q, block_d, warps = _launch_params(Q, D)
    grid = (triton.cdiv(Q, block_q), B * M)
    _msda_fwd_kernel[grid](
        value, shapes_i32, starts_i32, locs, attn, out, S, Q, M, D, L, P, block_q, block_d, num_warps=warps
    )
    return out


def msda_backward(
    grad_out: torch.Tensor,
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton backward: gradients of (value, sampling_locations, attention_weights), in their dtypes."""
    B, S, M, D = value.shape
    _, Q, _, L, P, _ = sampling_locations.shape
    shapes_i32, starts_i32 = _prepare(value, spatial_shapes, level_start_index)
    value = value.contiguous()
    locs = sampling_locations.contiguous()
    attn = attention_weights.contiguous()
    grad_out = grad_out.contiguous()
    grad_value = torch.zeros(B, S, M, D, device=value.device, dtype=torch.float32)  # atomics in fp32
    if B * Q * M == 0 or S == 0:
        return grad_value.to(value.dtype), torch.zeros_like(locs), torch.zeros_like(attn)
    grad_locs = torch.empty_like(locs)  # every (q, m, l, p) is written by exactly one program
    grad_attn = torch.empty_like(attn)
    block_q, block_d, warps = _launch_params(Q, D)
    grid = (triton.cdiv(Q, block_q), B * M)
    _msda_bwd_kernel[grid](
        value,
        shapes_i32,
        starts_i32,
        locs,
        attn,
        grad_out,
        grad_value,
        grad_locs,
        grad_attn,
        S,
        Q,
        M,
        D,
        L,
        P,
        block_q,
        block_d,
        num_warps=warps,
    )
    return grad_value.to(value.dtype), grad_locs, grad_attn
