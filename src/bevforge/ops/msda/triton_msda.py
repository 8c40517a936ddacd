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

The sampling points come either as normalised locations ``[B, Q, M, L, P, 2]`` (``FROM_OFFSETS`` off,
the contract of the reference) or as offsets in cells of each level ``[B, Q, M, L, P, 2]`` around
fp32 reference points ``[B, Q, L_r, Z, 2]`` (``FROM_OFFSETS`` on: :func:`msda_forward` given a
``reference``): the kernel then forms each location as ``ref + offset / (W, H)`` in fp32, with an IEEE
division as ``torch.addcdiv`` does, so the locations are bitwise those of
:func:`bevforge.ops.msda.shapes.sampling_locations` and the fp32 locations tensor is never written, read
or kept for backward; the backward writes the offsets' gradient (the location's gradient times
``1 / (W, H)``, as ``addcdiv``'s backward) in the offsets' dtype. Point ``p`` of level ``l`` takes
reference ``z = p % Z`` of level ``l`` (``L_r = L``) or of the one level row (``L_r = 1``).

Indices are int32: the dispatch (``bevforge.ops.msda``) only sends tensors with fewer than 2**31
elements and D, L, P within ``MAX_HEAD_DIM``, ``MAX_LEVELS``, ``MAX_POINTS`` defined there.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bevforge.ops.dispatch import launch
from bevforge.ops.msda.reference import output_dtype


@triton.jit
def _corner_ptrs(v_base, start, yy, xx, h, w, q_mask, d, d_mask, MD: tl.constexpr):
    """Pointers [BQ, BD] to value rows of pixel (yy, xx) and their mask (False = outside: zero padding)."""
    inside = q_mask & (xx >= 0) & (xx < w) & (yy >= 0) & (yy < h)  # [BQ]
    s = start + yy * w + xx  # [BQ] token index into S
    ptrs = v_base + s[:, None] * MD + d[None, :]  # [BQ, BD]
    return ptrs, inside[:, None] & d_mask[None, :]


@triton.jit
def _level(shapes_ptr, starts_ptr, lvl):
    """Level ``lvl``'s (H, W) and first token (int32, loaded from int64 or int32) and (H, W) in fp32."""
    h = tl.load(shapes_ptr + 2 * lvl).to(tl.int32)
    w = tl.load(shapes_ptr + 2 * lvl + 1).to(tl.int32)
    start = tl.load(starts_ptr + lvl).to(tl.int32)
    return h, w, start, h.to(tl.float32), w.to(tl.float32)


@triton.jit
def _pixel_coords(pts_ptr, ref_ptr, a_idx, r_idx, q_mask, hf, wf, FROM_OFFSETS: tl.constexpr):
    """Bilinear corner indices and fractions of the sampling points ``a_idx`` ([BQ] flat (q, m, l, p)):
    their locations, or (``FROM_OFFSETS``) reference ``r_idx`` ([BQ] flat (q, l_r, z)) + offset / (W, H)."""
    lx = tl.load(pts_ptr + a_idx * 2, mask=q_mask, other=0.0).to(tl.float32)
    ly = tl.load(pts_ptr + a_idx * 2 + 1, mask=q_mask, other=0.0).to(tl.float32)
    if FROM_OFFSETS:
        # fp32, IEEE division: bitwise the locations torch.addcdiv(ref, offsets, (W, H)) gives
        lx = tl.load(ref_ptr + r_idx * 2, mask=q_mask, other=0.0) + tl.math.div_rn(lx, wf)
        ly = tl.load(ref_ptr + r_idx * 2 + 1, mask=q_mask, other=0.0) + tl.math.div_rn(ly, hf)
    return _bilinear(lx, ly, hf, wf)


@triton.jit
def _bilinear(lx, ly, hf, wf):
    """Top-left corner (x0, y0) int32 and fractions (fx, fy) of normalised fp32 locations (lx, ly) [BQ]."""
    # align_corners=False: pixel centres at integers; clamp far-away points so the int cast cannot
    # overflow (a point beyond [-1, W] has all four corners outside either way)
    x = tl.minimum(tl.maximum(lx * wf - 0.5, -2.0), wf + 1.0)
    y = tl.minimum(tl.maximum(ly * hf - 0.5, -2.0), hf + 1.0)
    x0f = tl.floor(x)
    y0f = tl.floor(y)
    return x0f.to(tl.int32), y0f.to(tl.int32), x - x0f, y - y0f


@triton.jit
def _accumulate_sample(acc, v_base, start, x0, y0, fx, fy, aw, h, w, q_mask, d, d_mask, MD: tl.constexpr):
    """``acc [BQ, BD]`` + ``aw [BQ]`` times the bilinear sample at corner (x0, y0) and fractions (fx, fy),
    corner by corner (rows outside ``q_mask`` and corners outside the map read nothing)."""
    ptr, msk = _corner_ptrs(v_base, start, y0, x0, h, w, q_mask, d, d_mask, MD)
    acc += (aw * (1.0 - fy) * (1.0 - fx))[:, None] * tl.load(ptr, mask=msk, other=0.0).to(tl.float32)
    ptr, msk = _corner_ptrs(v_base, start, y0, x0 + 1, h, w, q_mask, d, d_mask, MD)
    acc += (aw * (1.0 - fy) * fx)[:, None] * tl.load(ptr, mask=msk, other=0.0).to(tl.float32)
    ptr, msk = _corner_ptrs(v_base, start, y0 + 1, x0, h, w, q_mask, d, d_mask, MD)
    acc += (aw * fy * (1.0 - fx))[:, None] * tl.load(ptr, mask=msk, other=0.0).to(tl.float32)
    ptr, msk = _corner_ptrs(v_base, start, y0 + 1, x0 + 1, h, w, q_mask, d, d_mask, MD)
    acc += (aw * fy * fx)[:, None] * tl.load(ptr, mask=msk, other=0.0).to(tl.float32)
    return acc


@triton.jit
def _sample_grads(g, v_base, gv_base, start, x0, y0, fx, fy, aw, h, w, q_mask, d, d_mask, MD: tl.constexpr):
    """The backward of one bilinear sample weighted by ``aw [BQ]`` under ``g [BQ, BD]`` (the output's
    gradient): scatters the value gradient (fp32 atomics into ``gv_base``), returns ``(d out / d aw,
    <g, d sample / d fx>, <g, d sample / d fy>)`` [BQ] (the fractions' gradients without aw and W, H)."""
    hx = 1.0 - fx
    hy = 1.0 - fy
    # corner (y0, x0): weight hy*hx; <grad_out, v> per query; value grad scattered
    ptr, msk = _corner_ptrs(v_base, start, y0, x0, h, w, q_mask, d, d_mask, MD)
    gptr, _ = _corner_ptrs(gv_base, start, y0, x0, h, w, q_mask, d, d_mask, MD)
    gv00 = tl.sum(g * tl.load(ptr, mask=msk, other=0.0).to(tl.float32), axis=1)  # [BQ]
    tl.atomic_add(gptr, (aw * hy * hx)[:, None] * g, mask=msk, sem="relaxed")
    ptr, msk = _corner_ptrs(v_base, start, y0, x0 + 1, h, w, q_mask, d, d_mask, MD)
    gptr, _ = _corner_ptrs(gv_base, start, y0, x0 + 1, h, w, q_mask, d, d_mask, MD)
    gv01 = tl.sum(g * tl.load(ptr, mask=msk, other=0.0).to(tl.float32), axis=1)
    tl.atomic_add(gptr, (aw * hy * fx)[:, None] * g, mask=msk, sem="relaxed")
    ptr, msk = _corner_ptrs(v_base, start, y0 + 1, x0, h, w, q_mask, d, d_mask, MD)
    gptr, _ = _corner_ptrs(gv_base, start, y0 + 1, x0, h, w, q_mask, d, d_mask, MD)
    gv10 = tl.sum(g * tl.load(ptr, mask=msk, other=0.0).to(tl.float32), axis=1)
    tl.atomic_add(gptr, (aw * fy * hx)[:, None] * g, mask=msk, sem="relaxed")
    ptr, msk = _corner_ptrs(v_base, start, y0 + 1, x0 + 1, h, w, q_mask, d, d_mask, MD)
    gptr, _ = _corner_ptrs(gv_base, start, y0 + 1, x0 + 1, h, w, q_mask, d, d_mask, MD)
    gv11 = tl.sum(g * tl.load(ptr, mask=msk, other=0.0).to(tl.float32), axis=1)
    tl.atomic_add(gptr, (aw * fy * fx)[:, None] * g, mask=msk, sem="relaxed")
    # d out / d attn = the bilinear sample; d sample / d x = (corner differences) * W
    g_attn = hy * hx * gv00 + hy * fx * gv01 + fy * hx * gv10 + fy * fx * gv11
    g_fx = hy * (gv01 - gv00) + fy * (gv11 - gv10)
    g_fy = hx * (gv10 - gv00) + fx * (gv11 - gv01)
    return g_attn, g_fx, g_fy


@triton.jit
def _msda_fwd_kernel(
    value_ptr,  # [B, S, M, D]
    shapes_ptr,  # [L, 2] int64 (or int32) (H, W)
    starts_ptr,  # [L] int64 (or int32)
    pts_ptr,  # [B, Q, M, L, P, 2] locations, or offsets in cells (FROM_OFFSETS)
    ref_ptr,  # [B, Q, L_r, Z, 2] fp32 reference points (FROM_OFFSETS; else unused)
    attn_ptr,  # [B, Q, M, L, P]
    out_ptr,  # [B, Q, M * D]
    S,
    Q,
    M: tl.constexpr,
    D: tl.constexpr,
    L,
    P,
    Z,  # reference points per level row (point p takes z = p % Z)
    REF_Q,  # L_r * Z: reference entries per query
    REF_L,  # Z where L_r = L, 0 where L_r = 1
    FROM_OFFSETS: tl.constexpr,
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
    r_row = (b * Q + q) * REF_Q  # [BQ] flat index of reference (b, q, 0, 0)
    acc = tl.zeros((BLOCK_Q, BLOCK_D), dtype=tl.float32)
    for lvl in range(L):
        h, w, start, hf, wf = _level(shapes_ptr, starts_ptr, lvl)
        for p in range(P):
            a_idx = a_row + lvl * P + p
            aw = tl.load(attn_ptr + a_idx, mask=q_mask, other=0.0).to(tl.float32)
            r_idx = r_row + lvl * REF_L + p % Z
            x0, y0, fx, fy = _pixel_coords(pts_ptr, ref_ptr, a_idx, r_idx, q_mask, hf, wf, FROM_OFFSETS)
            acc = _accumulate_sample(acc, v_base, start, x0, y0, fx, fy, aw, h, w, q_mask, d, d_mask, M * D)
    out_ptrs = out_ptr + ((b * Q + q) * M + m)[:, None] * D + d[None, :]  # [BQ, BD] into [B, Q, M*D]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=q_mask[:, None] & d_mask[None, :])


@triton.jit
def _msda_bwd_kernel(
    value_ptr,  # [B, S, M, D]
    shapes_ptr,  # [L, 2] int64 (or int32)
    starts_ptr,  # [L] int64 (or int32)
    pts_ptr,  # [B, Q, M, L, P, 2] locations, or offsets in cells (FROM_OFFSETS)
    ref_ptr,  # [B, Q, L_r, Z, 2] fp32 (FROM_OFFSETS; else unused)
    attn_ptr,  # [B, Q, M, L, P]
    gout_ptr,  # [B, Q, M * D]
    gvalue_ptr,  # [B, S, M, D] fp32, zero-initialised (atomics)
    gpts_ptr,  # [B, Q, M, L, P, 2] gradient of the locations, or of the offsets (FROM_OFFSETS)
    gattn_ptr,  # [B, Q, M, L, P]
    S,
    Q,
    M: tl.constexpr,
    D: tl.constexpr,
    L,
    P,
    Z,
    REF_Q,
    REF_L,
    FROM_OFFSETS: tl.constexpr,
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
    r_row = (b * Q + q) * REF_Q  # [BQ]
    g_ptrs = gout_ptr + ((b * Q + q) * M + m)[:, None] * D + d[None, :]  # [BQ, BD]
    g = tl.load(g_ptrs, mask=qd_mask, other=0.0).to(tl.float32)
    for lvl in range(L):
        h, w, start, hf, wf = _level(shapes_ptr, starts_ptr, lvl)
        for p in range(P):
            a_idx = a_row + lvl * P + p
            aw = tl.load(attn_ptr + a_idx, mask=q_mask, other=0.0).to(tl.float32)
            r_idx = r_row + lvl * REF_L + p % Z
            x0, y0, fx, fy = _pixel_coords(pts_ptr, ref_ptr, a_idx, r_idx, q_mask, hf, wf, FROM_OFFSETS)
            g_attn, g_fx, g_fy = _sample_grads(
                g, v_base, gv_base, start, x0, y0, fx, fy, aw, h, w, q_mask, d, d_mask, M * D
            )
            tl.store(gattn_ptr + a_idx, g_attn.to(gattn_ptr.dtype.element_ty), mask=q_mask)
            g_lx = aw * g_fx * wf  # d out / d location
            g_ly = aw * g_fy * hf
            if FROM_OFFSETS:  # d location / d offset = 1 / (W, H): times the reciprocal, as addcdiv
                g_lx = g_lx * tl.math.div_rn(1.0, wf)
                g_ly = g_ly * tl.math.div_rn(1.0, hf)
            tl.store(gpts_ptr + a_idx * 2, g_lx.to(gpts_ptr.dtype.element_ty), mask=q_mask)
            tl.store(gpts_ptr + a_idx * 2 + 1, g_ly.to(gpts_ptr.dtype.element_ty), mask=q_mask)


#: (BLOCK_Q, num_warps) of the forward and the backward kernel; None: :func:`_launch_params`'s choice from
#: D. ``bevforge bench kernel --sweep`` times others. Compiled offline for sm_90 with the runtime's
#: specialisation (``tests/kernels/test_kernels_compile_cuda.py``), the default tile (64 queries x 32
#: channels, 4 warps) takes 59 registers in the forward and 144 in the backward (3 blocks per SM), 32
#: queries on 4 warps 47 / 78 (6 blocks): occupancy against queries in flight per warp, for the sweep.
LAUNCH: dict[str, tuple[int, int] | None] = {"fwd": None, "bwd": None}


def _launch_params(
    Q: int, D: int, kernel: str, launch: dict[str, tuple[int, int] | None] = LAUNCH
) -> tuple[int, int, int]:
    """(BLOCK_Q, BLOCK_D, num_warps) of ``kernel`` ("fwd" / "bwd"): ``launch`` (:data:`LAUNCH`; the camera
    kernels pass theirs), else about 2048 fp32 accumulators per program."""
    block_d = max(triton.next_power_of_2(D), 1)
    if launch[kernel] is not None:
        block_q, warps = launch[kernel]
        return block_q, block_d, warps
    block_q = max(16, min(128, 2048 // block_d))
    block_q = min(block_q, max(16, triton.next_power_of_2(Q)))
    return block_q, block_d, 4


def _prepare(
    value: torch.Tensor, spatial_shapes: torch.Tensor, level_start_index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The level shapes ``[L, 2]`` and starts ``[L]`` on the value's device, as they come (int64: the
    kernels cast them to int32 as they load them; no conversion kernels per call)."""
    shapes = spatial_shapes.to(device=value.device).contiguous()  # [L, 2]
    starts = level_start_index.to(device=value.device).contiguous()  # [L]
    return shapes, starts


def _reference_args(
    points: torch.Tensor, reference: torch.Tensor | None
) -> tuple[torch.Tensor, int, int, int]:
    """``(ref, Z, REF_Q, REF_L)`` of the kernels: ``reference [B, Q, L_r, Z, 2]`` (contiguous), or the
    points themselves as an unused pointer when the points are locations."""
    if reference is None:
        return points, 1, 0, 0
    _, _, L_r, Z, _ = reference.shape
    return reference.contiguous(), Z, L_r * Z, Z if L_r > 1 else 0


def msda_forward(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    points: torch.Tensor,
    attention_weights: torch.Tensor,
    reference: torch.Tensor | None = None,
) -> torch.Tensor:
    """Triton forward; ``points [B, Q, M, L, P, 2]``: the sampling locations, or with ``reference [B, Q,
    L_r, Z, 2]`` fp32 the offsets in cells around it (the module docstring). Returns ``[B, Q, M * D]`` in
    the promoted dtype of value, locations (or reference) and weights (``output_dtype``), fp32
    accumulation."""
    B, S, M, D = value.shape
    _, Q, _, L, P, _ = points.shape
    shapes, starts = _prepare(value, spatial_shapes, level_start_index)
    value = value.contiguous()
    pts = points.contiguous()
    attn = attention_weights.contiguous()
    dtype = output_dtype(value, pts if reference is None else reference, attn)
    out = torch.empty(B, Q, M * D, device=value.device, dtype=dtype)
    if out.numel() == 0:
        return out.zero_()
    ref, Z, ref_q, ref_l = _reference_args(pts, reference)
    block_q, block_d, warps = _launch_params(Q, D, "fwd")
    grid = (triton.cdiv(Q, block_q), B * M)
    name = "msda" if reference is None else "msda-offsets"  # the op that called (BEVFORGE_KERNELS_OFF)
    launch(f"{name} forward", _msda_fwd_kernel, grid,
        value, shapes, starts, pts, ref, attn, out, S, Q, M, D, L, P, Z, ref_q, ref_l,
        reference is not None, block_q, block_d, num_warps=warps,
    )  # fmt: skip
    return out


def msda_backward(
    grad_out: torch.Tensor,
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    points: torch.Tensor,
    attention_weights: torch.Tensor,
    reference: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton backward: gradients of (value, points, attention_weights) in their dtypes, ``points`` and
    ``reference`` as in :func:`msda_forward` (no gradient for the reference)."""
    B, S, M, D = value.shape
    _, Q, _, L, P, _ = points.shape
    shapes, starts = _prepare(value, spatial_shapes, level_start_index)
    value = value.contiguous()
    pts = points.contiguous()
    attn = attention_weights.contiguous()
    grad_out = grad_out.contiguous()
    grad_value = torch.zeros(B, S, M, D, device=value.device, dtype=torch.float32)  # atomics in fp32
    if B * Q * M == 0 or S == 0:
        return grad_value.to(value.dtype), torch.zeros_like(pts), torch.zeros_like(attn)
    grad_pts = torch.empty_like(pts)  # every (q, m, l, p) is written by exactly one program
    grad_attn = torch.empty_like(attn)
    ref, Z, ref_q, ref_l = _reference_args(pts, reference)
    block_q, block_d, warps = _launch_params(Q, D, "bwd")
    grid = (triton.cdiv(Q, block_q), B * M)
    name = "msda" if reference is None else "msda-offsets"
    launch(f"{name} backward", _msda_bwd_kernel, grid,
        value, shapes, starts, pts, ref, attn, grad_out, grad_value, grad_pts, grad_attn,
        S, Q, M, D, L, P, Z, ref_q, ref_l, reference is not None, block_q, block_d, num_warps=warps,
    )  # fmt: skip
    return grad_value.to(value.dtype), grad_pts, grad_attn
