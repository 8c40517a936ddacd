"""Triton kernels of the spatial cross-attention over cameras (``bevforge::msda_cameras``).

Shape letters: B batch, N cameras, S = sum_l H_l * W_l value tokens of a camera, M heads, D channels per
head, Q BEV queries, L levels, P points per level, Z pillar points per query.

Each BEV query predicts its offsets and weights once; every camera whose image its pillar hits samples
its own value map at ``ref_cam + offset / (W, H)`` (the query's pillar point ``p % Z`` projected into that
camera, plus the offset in cells of the level) with the same weights, and the query's output is the sum
over those cameras (the caller divides by their number). The spec:
:func:`bevforge.ops.msda.cameras.msda_cameras_reference` (per camera
:func:`bevforge.ops.msda.msda_from_offsets`, zeroed where the camera misses).

One program handles ``BLOCK_Q`` queries of one (batch, head) pair and all ``D`` channels: a tile of the
BEV grid (``TILE_W`` = 8 columns x ``BLOCK_Q / 8`` rows) when the queries form one (``grid_w``), else
``BLOCK_Q`` consecutive queries. Neighbouring cells see the same cameras: at BEVFormer-base (200 x 200
BEV, the nuScenes ring) 8 x 8 tiles evaluate 52 k (query, camera) rows where runs of 64 queries along a
row evaluate 84 k, the hit gather 59 k (its padding) and the hits are 46 k. It first reads
which cameras each of its queries hits (a bit per camera, ``[BQ]`` int32), then loops over levels and
points (the offsets and weights read once) and, inside, over the cameras any of its queries hits (a
camera none of them hits costs a scalar test); a query a camera misses reads nothing from it. No
gather of the hit queries per camera, no scatter back, no host read of their number, static shapes.
The forward accumulates every camera into one fp32 tile; the backward sums the offsets' and weights'
gradients over the cameras in fp32 (one store each) and scatters the value gradient with fp32 atomics.
The locations are formed as in the offsets kernel (:mod:`bevforge.ops.msda.triton_msda`): fp32, IEEE
division, bitwise ``torch.addcdiv``'s.

Indices are int32 (the dispatch only sends tensors with fewer than 2**31 elements); at most
``cameras.MAX_CAMERAS`` cameras (a bit each in an int32, the sign bit left alone).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bevforge.ops.dispatch import launch
from bevforge.ops.msda.cameras import TILE_W
from bevforge.ops.msda.reference import output_dtype
from bevforge.ops.msda.triton_msda import (
    _accumulate_sample,
    _bilinear,
    _launch_params,
    _level,
    _prepare,
    _sample_grads,
)

#: (BLOCK_Q, num_warps) of the forward and the backward kernel; None: 64 queries (an 8 x 8 tile) on 4 warps
#: at D = 32, as the MSDA kernels (``bevforge bench kernel --shape sca-base --sweep`` times others). ptxas
#: for sm_90 (offline, bf16, D = 32): 64 x 4 takes 72 / 121 registers (forward / backward), 32 x 4 48 / 64
#: (the backward spilling 4 bytes), 16 x 2 56 / 72, 128 x 8 80 / 127
LAUNCH: dict[str, tuple[int, int] | None] = {"fwd": None, "bwd": None}


@triton.jit
def _tile_queries(Q, M: tl.constexpr, GRID_W, TILE_W: tl.constexpr, BLOCK_Q: tl.constexpr):
    """(b, m, q [BQ], mask [BQ]) of this program: a ``TILE_W`` x ``BLOCK_Q / TILE_W`` tile of the
    ``GRID_W``-wide query grid (tiles row by row), for sample b and head m."""
    pid_q = tl.program_id(0)
    bm = tl.program_id(1)
    tiles_w = tl.cdiv(GRID_W, TILE_W)
    i = tl.arange(0, BLOCK_Q)  # [BQ]
    row = (pid_q // tiles_w) * (BLOCK_Q // TILE_W) + i // TILE_W
    col = (pid_q % tiles_w) * TILE_W + i % TILE_W
    q = row * GRID_W + col  # [BQ]
    return bm // M, bm % M, q, (col < GRID_W) & (q < Q)


@triton.jit
def _camera_bits(hit_ptr, b, q, q_mask, Q, N):
    """``[BQ]`` int32: bit n set where query q of sample b hits camera n (``hit [B, N, Q]`` uint8), and
    the same or-ed over the block (a scalar)."""
    bits = tl.zeros_like(q)
    any_bits = tl.sum(bits, axis=0)  # 0 (a scalar of the loop-carried type)
    for n in range(N):
        hit = tl.load(hit_ptr + (b * N + n) * Q + q, mask=q_mask, other=0).to(tl.int32)  # [BQ] 0 / 1
        bits = bits | (hit << n)
        any_bits = any_bits | (tl.max(hit, axis=0) << n)
    return bits, any_bits


@triton.jit
def _weight_and_offset(attn_ptr, off_ptr, a_idx, q_mask, hf, wf):
    """The weight and the offset in normalised units (IEEE division, as ``addcdiv``) of the sampling
    points ``a_idx`` ([BQ] flat (b, q, m, l, p)), fp32: read once for every camera."""
    aw = tl.load(attn_ptr + a_idx, mask=q_mask, other=0.0).to(tl.float32)
    dx = tl.math.div_rn(tl.load(off_ptr + a_idx * 2, mask=q_mask, other=0.0).to(tl.float32), wf)
    dy = tl.math.div_rn(tl.load(off_ptr + a_idx * 2 + 1, mask=q_mask, other=0.0).to(tl.float32), hf)
    return aw, dx, dy


@triton.jit
def _camera_point(ref_ptr, bits, b, n, q, q_mask, Q, N, Z, z, dx, dy, hf, wf):
    """For camera n: the block's rows that hit it ([BQ]; the others read nothing) and the bilinear corner
    and fractions of ``ref_cam[b, n, q, z] + (dx, dy)`` ([BQ] each)."""
    rows = q_mask & (((bits >> n) & 1) != 0)  # [BQ]
    r_idx = ((b * N + n) * Q + q) * Z + z  # [BQ] flat (b, n, q, z) of ref_cam [B, N, Q, Z, 2]
    lx = tl.load(ref_ptr + r_idx * 2, mask=rows, other=0.0) + dx
    ly = tl.load(ref_ptr + r_idx * 2 + 1, mask=rows, other=0.0) + dy
    x0, y0, fx, fy = _bilinear(lx, ly, hf, wf)
    return rows, x0, y0, fx, fy


@triton.jit
def _msda_cameras_fwd_kernel(
    value_ptr,  # [B, N, S, M, D]
    shapes_ptr,  # [L, 2] int64 (or int32) (H, W)
    starts_ptr,  # [L] int64 (or int32)
    ref_ptr,  # [B, N, Q, Z, 2] fp32 normalised pillar points in each camera
    hit_ptr,  # [B, N, Q] uint8
    off_ptr,  # [B, Q, M, L, P, 2] offsets in cells of each level
    attn_ptr,  # [B, Q, M, L, P]
    out_ptr,  # [B, Q, M * D]
    S,
    Q,
    N,
    M: tl.constexpr,
    D: tl.constexpr,
    L,
    P,
    Z,  # pillar points (point p takes z = p % Z)
    GRID_W,  # queries q = row * GRID_W + col (Q where they form no grid)
    TILE_W: tl.constexpr,  # columns of a program's tile (BLOCK_Q: a run of queries)
    BLOCK_Q: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    b, m, q, q_mask = _tile_queries(Q, M, GRID_W, TILE_W, BLOCK_Q)
    d = tl.arange(0, BLOCK_D)  # [BD]
    d_mask = d < D
    bits, any_bits = _camera_bits(hit_ptr, b, q, q_mask, Q, N)
    a_row = ((b * Q + q) * M + m) * (L * P)  # [BQ] flat index of (b, q, m, 0, 0)
    acc = tl.zeros((BLOCK_Q, BLOCK_D), dtype=tl.float32)
    for lvl in range(L):
        h, w, start, hf, wf = _level(shapes_ptr, starts_ptr, lvl)
        for p in range(P):
            a_idx = a_row + lvl * P + p
            aw, dx, dy = _weight_and_offset(attn_ptr, off_ptr, a_idx, q_mask, hf, wf)
            for n in range(N):
                if ((any_bits >> n) & 1) != 0:
                    rows, x0, y0, fx, fy = _camera_point(
                        ref_ptr, bits, b, n, q, q_mask, Q, N, Z, p % Z, dx, dy, hf, wf
                    )
                    v_base = value_ptr + (b * N + n) * S * M * D + m * D
                    acc = _accumulate_sample(
                        acc, v_base, start, x0, y0, fx, fy, aw, h, w, rows, d, d_mask, M * D
                    )
    out_ptrs = out_ptr + ((b * Q + q) * M + m)[:, None] * D + d[None, :]  # [BQ, BD] into [B, Q, M*D]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=q_mask[:, None] & d_mask[None, :])


@triton.jit
def _msda_cameras_bwd_kernel(
    value_ptr,  # [B, N, S, M, D]
    shapes_ptr,  # [L, 2] int64 (or int32)
    starts_ptr,  # [L] int64 (or int32)
    ref_ptr,  # [B, N, Q, Z, 2] fp32
    hit_ptr,  # [B, N, Q] uint8
    off_ptr,  # [B, Q, M, L, P, 2]
    attn_ptr,  # [B, Q, M, L, P]
    gout_ptr,  # [B, Q, M * D]
    gvalue_ptr,  # [B, N, S, M, D] fp32, zero-initialised (atomics)
    goff_ptr,  # [B, Q, M, L, P, 2]
    gattn_ptr,  # [B, Q, M, L, P]
    S,
    Q,
    N,
    M: tl.constexpr,
    D: tl.constexpr,
    L,
    P,
    Z,
    GRID_W,
    TILE_W: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    b, m, q, q_mask = _tile_queries(Q, M, GRID_W, TILE_W, BLOCK_Q)
    d = tl.arange(0, BLOCK_D)  # [BD]
    d_mask = d < D
    bits, any_bits = _camera_bits(hit_ptr, b, q, q_mask, Q, N)
    a_row = ((b * Q + q) * M + m) * (L * P)  # [BQ]
    g_ptrs = gout_ptr + ((b * Q + q) * M + m)[:, None] * D + d[None, :]  # [BQ, BD]
    g = tl.load(g_ptrs, mask=q_mask[:, None] & d_mask[None, :], other=0.0).to(tl.float32)
    for lvl in range(L):
        h, w, start, hf, wf = _level(shapes_ptr, starts_ptr, lvl)
        for p in range(P):
            a_idx = a_row + lvl * P + p
            aw, dx, dy = _weight_and_offset(attn_ptr, off_ptr, a_idx, q_mask, hf, wf)
            g_attn = tl.zeros_like(aw)  # [BQ] fp32 sums over the cameras
            g_fx = tl.zeros_like(aw)
            g_fy = tl.zeros_like(aw)
            for n in range(N):
                if ((any_bits >> n) & 1) != 0:
                    rows, x0, y0, fx, fy = _camera_point(
                        ref_ptr, bits, b, n, q, q_mask, Q, N, Z, p % Z, dx, dy, hf, wf
                    )
                    v_base = value_ptr + (b * N + n) * S * M * D + m * D
                    gv_base = gvalue_ptr + (b * N + n) * S * M * D + m * D
                    ga, gx, gy = _sample_grads(
                        g, v_base, gv_base, start, x0, y0, fx, fy, aw, h, w, rows, d, d_mask, M * D
                    )
                    g_attn += ga
                    g_fx += gx
                    g_fy += gy
            tl.store(gattn_ptr + a_idx, g_attn.to(gattn_ptr.dtype.element_ty), mask=q_mask)
            # d location / d offset = 1 / (W, H): times the reciprocal, as addcdiv's backward
            g_ox = aw * g_fx * wf * tl.math.div_rn(1.0, wf)
            g_oy = aw * g_fy * hf * tl.math.div_rn(1.0, hf)
            tl.store(goff_ptr + a_idx * 2, g_ox.to(goff_ptr.dtype.element_ty), mask=q_mask)
            tl.store(goff_ptr + a_idx * 2 + 1, g_oy.to(goff_ptr.dtype.element_ty), mask=q_mask)


def _hit_bytes(hit: torch.Tensor) -> torch.Tensor:
    """``hit [B, N, Q]`` bool as uint8 (a view, no copy, when contiguous)."""
    return hit.contiguous().view(torch.uint8)


def _launch(Q: int, D: int, grid_w: int, kernel: str) -> tuple[tuple[int, int], tuple[int, ...]]:
    """``(grid, (GRID_W, TILE_W, BLOCK_Q, BLOCK_D, num_warps))`` of ``kernel`` ("fwd" / "bwd"): tiles of
    :data:`TILE_W` columns where the ``Q`` queries form a ``grid_w``-wide grid, else runs of BLOCK_Q."""
    block_q, block_d, warps = _launch_params(Q, D, kernel, LAUNCH)
    if 0 < grid_w < Q and Q % grid_w == 0 and block_q % TILE_W == 0:
        tiles = triton.cdiv(grid_w, TILE_W) * triton.cdiv(Q // grid_w, block_q // TILE_W)
        return (tiles,), (grid_w, TILE_W, block_q, block_d, warps)
    return (triton.cdiv(Q, block_q),), (Q, block_q, block_q, block_d, warps)


def _operands(value, spatial_shapes, level_start_index, reference, hit, offsets, attention_weights):
    """The kernels' leading tensor operands (contiguous, the level tables on the value's device, ``hit`` as
    bytes) and sizes ``(B, S, Q, N, M, D, L, P, Z)``."""
    B, N, S, M, D = value.shape
    _, Q, _, L, P, _ = offsets.shape
    shapes, starts = _prepare(value, spatial_shapes, level_start_index)
    value, ref, off, attn = (t.contiguous() for t in (value, reference, offsets, attention_weights))
    return (value, shapes, starts, ref, _hit_bytes(hit), off, attn), (B, S, Q, N, M, D, L, P, ref.shape[3])


def msda_cameras_forward(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    reference: torch.Tensor,
    hit: torch.Tensor,
    offsets: torch.Tensor,
    attention_weights: torch.Tensor,
    grid_w: int = 0,
) -> torch.Tensor:
    """``value [B, N, S, M, D]``, ``reference [B, N, Q, Z, 2]`` fp32, ``hit [B, N, Q]`` bool, ``offsets
    [B, Q, M, L, P, 2]`` (cells), ``attention_weights [B, Q, M, L, P]`` -> ``[B, Q, M * D]`` summed over
    the cameras each query hits, in the promoted dtype of value, reference and weights. ``grid_w``: the
    queries' grid width (``q = row * grid_w + col``, processed in tiles), 0 for none."""
    operands, (B, S, Q, N, M, D, L, P, Z) = _operands(
        value, spatial_shapes, level_start_index, reference, hit, offsets, attention_weights
    )
    dtype = output_dtype(value, reference, attention_weights)
    out = torch.empty(B, Q, M * D, device=value.device, dtype=dtype)
    if out.numel() == 0 or N == 0:
        return out.zero_()
    (tiles,), (grid_w, tile_w, block_q, block_d, warps) = _launch(Q, D, grid_w, "fwd")
    launch("msda-cameras forward", _msda_cameras_fwd_kernel, (tiles, B * M),
        *operands, out, S, Q, N, M, D, L, P, Z, grid_w, tile_w, block_q, block_d, num_warps=warps,
    )  # fmt: skip
    return out


def msda_cameras_backward(
    grad_out: torch.Tensor,
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    reference: torch.Tensor,
    hit: torch.Tensor,
    offsets: torch.Tensor,
    attention_weights: torch.Tensor,
    grid_w: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of (value, offsets, attention_weights) in their dtypes (none for reference and hit)."""
    operands, (B, S, Q, N, M, D, L, P, Z) = _operands(
        value, spatial_shapes, level_start_index, reference, hit, offsets, attention_weights
    )
    grad_value = torch.zeros(B, N, S, M, D, device=value.device, dtype=torch.float32)  # atomics in fp32
    if B * Q * M * N == 0 or S == 0:
        return grad_value.to(value.dtype), torch.zeros_like(offsets), torch.zeros_like(attention_weights)
    grad_off = torch.empty_like(operands[5])  # every (q, m, l, p) is written by exactly one program
    grad_attn = torch.empty_like(operands[6])
    (tiles,), (grid_w, tile_w, block_q, block_d, warps) = _launch(Q, D, grid_w, "bwd")
    launch("msda-cameras backward", _msda_cameras_bwd_kernel, (tiles, B * M),
        *operands, grad_out.contiguous(), grad_value, grad_off, grad_attn, S, Q, N, M, D, L, P, Z,
        grid_w, tile_w, block_q, block_d, num_warps=warps,
    )  # fmt: skip
    return grad_value.to(value.dtype), grad_off, grad_attn
