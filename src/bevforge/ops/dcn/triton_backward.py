"""Triton kernel: the DCNv2 backward from the columns' gradient in one pass (input, offset and mask grads).

Shape letters as :mod:`bevforge.ops.dcn.sampled` (the contract): B images, C input channels, H/W input
pixels, Ho/Wo output pixels, L = Ho * Wo, K = kh * kw taps, G offset groups.

Given ``grad_cols [B, C * K, L]`` (= weight^T @ grad_out, row ``c * K + k``, in the GEMM dtype; or
pixel-major ``[B, L, K * C]``, the channels-last path's layout: :mod:`~bevforge.ops.dcn.triton_columns`)
the sampled path rebuilds the fp32 samples (an fp32 copy of the input, the [-1, 1] grid, one
``grid_sample``), forms the mask gradient (a product and a channel sum), modulates the columns' gradient
(a product) and calls ``grid_sampler_2d_backward``, then rescales and stacks the grid gradient: ~20
operators and several fp32 ``[B, C, K, L]`` passes per layer. Here each program owns one tap of
``BLOCK_L`` output pixels of one (image, offset group) (``B * G * K * L / BLOCK_L`` programs: enough for
an H100 even on R101's stage 4), computes the sample positions once and loops over the group's channels
in blocks of ``BLOCK_C``, reading the four corners and the columns' gradient once:

- ``grad_mask[b, g*K + k, l] = sum_c grad_cols * sample`` and the offset gradients
  ``d/d(dy, dx) = sum_c grad_cols * mask * d sample / d(y, x)`` are reduced over the channel loop in
  registers (no atomics) and stored once, fp32;
- ``grad_x`` (fp32, zero-initialised, in the input's memory format) receives ``grad_cols * mask *
  bilinear weight`` at the four corners through ``tl.atomic_add`` (relaxed: a sum needs no memory
  ordering; as torchvision's col2im and ATen's grid sampler backward do, so the fp32 summation order,
  and its last bits, vary from run to run). Channels-last, the four corners' atomics are vector atomics
  along channels.

Sample positions come from :func:`bevforge.ops.dcn.triton_columns.tap_position`, as in the forward
(torchvision's rule: pixel centres at integers, every corner outside the image is zero; a position far
outside is moved to just outside, so every corner, hence every gradient, is zero there).
Indices are int32; the dispatch sends only tensors with fewer than 2**31 elements.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bevforge.ops.dcn.triton_columns import cols_strides, tap_position
from bevforge.ops.dispatch import alert_not_deterministic, launch

#: pixel_major -> (BLOCK_C channels per loop step, BLOCK_L output pixels per program, warps), read at each
#: launch (``python -m bevforge.ops.dcn.bench --sweep [--channels-last]`` times others)
LAUNCH = {False: (16, 64, 4), True: (64, 16, 4)}


@triton.jit
def _load_corner(x_row, y, x, H, W, sxh, sxw, inside, c_mask):
    """``[BC, BL]`` input values at integer pixel (y, x) ([BL] each) where ``inside``, else zero."""
    ptrs = x_row + (y * sxh + x * sxw)[None, :]  # [BC, BL]
    return tl.load(ptrs, mask=c_mask[:, None] & inside[None, :], other=0.0).to(tl.float32)


@triton.jit
def _dcn_backward_kernel(
    gcol_ptr, x_ptr, off_ptr, mask_ptr, gx_ptr, goff_ptr, gmask_ptr,
    H, W, Wo, L, Cg, G,
    sxb, sxc, sxh, sxw,  # input strides (elements)
    sob, soc, sol_h, sol_w,  # offset strides
    smb, smc, sml_h, sml_w,  # mask strides
    sgb, sgc, sgk, sgl,  # columns' gradient strides: image, channel, tap, pixel (either layout)
    sxgb, sxgc, sxgh, sxgw,  # input gradient strides
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    HAS_MASK: tl.constexpr, NEED_X: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr,
):  # fmt: skip
    """Grid ``(B * G, cdiv(L, BLOCK_L), K)``: one tap of one (image, offset group) per program, so the
    offset and mask gradients need no cross-program reduction. Contiguous: the fp32 outputs
    ``goff [B, 2*G*K, L]``, ``gmask [B, G*K, L]``; ``gcol`` and ``gx [B, C, H, W]`` (fp32) by strides."""
    pid_bg, pid_l, k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b, g = pid_bg // G, pid_bg % G
    K: tl.constexpr = KH * KW
    i, j = k // KW, k % KW
    l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)  # [BL] flat output pixel
    l_mask = l < L
    ho, wo = l // Wo, l % Wo  # [BL]
    oc = (g * K + k) * 2  # offset channel of dy (dx is the next one)
    y0, x0, ly, lx = tap_position(
        off_ptr, b, oc, ho, wo, i, j, sob, soc, sol_h, sol_w,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, H, W, l_mask,
    )  # fmt: skip
    hy, hx = 1.0 - ly, 1.0 - lx
    y1, x1 = y0 + 1, x0 + 1
    in_y0, in_y1 = (y0 >= 0) & (y0 < H), (y1 >= 0) & (y1 < H)  # [BL]
    in_x0, in_x1 = (x0 >= 0) & (x0 < W), (x1 >= 0) & (x1 < W)
    in00, in01 = l_mask & in_y0 & in_x0, l_mask & in_y0 & in_x1
    in10, in11 = l_mask & in_y1 & in_x0, l_mask & in_y1 & in_x1
    if HAS_MASK:
        m_ptr = mask_ptr + b * smb + (g * K + k) * smc + ho * sml_h + wo * sml_w  # [BL]
        m = tl.load(m_ptr, mask=l_mask, other=0.0).to(tl.float32)
    else:
        m = tl.full([BLOCK_L], 1.0, tl.float32)
    acc_dy = tl.zeros([BLOCK_L], dtype=tl.float32)
    acc_dx = tl.zeros([BLOCK_L], dtype=tl.float32)
    acc_m = tl.zeros([BLOCK_L], dtype=tl.float32)
    for c0 in range(0, Cg, BLOCK_C):
        c_local = c0 + tl.arange(0, BLOCK_C)  # [BC] channel within the group
        c_mask = c_local < Cg
        chan = g * Cg + c_local  # [BC] input channel
        cl_mask = c_mask[:, None] & l_mask[None, :]  # [BC, BL]
        gc_ptrs = gcol_ptr + b * sgb + chan[:, None] * sgc + k * sgk + l[None, :] * sgl  # [BC, BL]
        gc = tl.load(gc_ptrs, mask=cl_mask, other=0.0).to(tl.float32)
        x_row = x_ptr + b * sxb + chan[:, None] * sxc  # [BC, 1]
        v00 = _load_corner(x_row, y0, x0, H, W, sxh, sxw, in00, c_mask)
        v01 = _load_corner(x_row, y0, x1, H, W, sxh, sxw, in01, c_mask)
        v10 = _load_corner(x_row, y1, x0, H, W, sxh, sxw, in10, c_mask)
        v11 = _load_corner(x_row, y1, x1, H, W, sxh, sxw, in11, c_mask)
        if HAS_MASK:
            sample = (hy * hx)[None, :] * v00 + (hy * lx)[None, :] * v01
            sample += (ly * hx)[None, :] * v10 + (ly * lx)[None, :] * v11
            acc_m += tl.sum(gc * sample, axis=0)
        gm = gc * m[None, :]  # [BC, BL] gradient of the unmodulated sample
        acc_dy += tl.sum(gm * (hx[None, :] * (v10 - v00) + lx[None, :] * (v11 - v01)), axis=0)
        acc_dx += tl.sum(gm * (hy[None, :] * (v01 - v00) + ly[None, :] * (v11 - v10)), axis=0)
        if NEED_X:
            gx_row = gx_ptr + b * sxgb + chan[:, None] * sxgc  # [BC, 1] fp32 channels
            tl.atomic_add(gx_row + (y0 * sxgh + x0 * sxgw)[None, :], gm * (hy * hx)[None, :],
                          mask=c_mask[:, None] & in00[None, :], sem="relaxed")  # fmt: skip
            tl.atomic_add(gx_row + (y0 * sxgh + x1 * sxgw)[None, :], gm * (hy * lx)[None, :],
                          mask=c_mask[:, None] & in01[None, :], sem="relaxed")  # fmt: skip
            tl.atomic_add(gx_row + (y1 * sxgh + x0 * sxgw)[None, :], gm * (ly * hx)[None, :],
                          mask=c_mask[:, None] & in10[None, :], sem="relaxed")  # fmt: skip
            tl.atomic_add(gx_row + (y1 * sxgh + x1 * sxgw)[None, :], gm * (ly * lx)[None, :],
                          mask=c_mask[:, None] & in11[None, :], sem="relaxed")  # fmt: skip
    goff_row = goff_ptr + (b * 2 * G * K + oc) * L + l  # [BL] dy channel; dx is the next one
    tl.store(goff_row, acc_dy, mask=l_mask)
    tl.store(goff_row + L, acc_dx, mask=l_mask)
    if HAS_MASK:
        tl.store(gmask_ptr + (b * G * K + g * K + k) * L + l, acc_m, mask=l_mask)


@torch.library.custom_op("bevforge::dcn_backward", mutates_args=())
def dcn_backward_op(
    grad_cols: torch.Tensor,
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor | None,
    kernel: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    need_x: bool,
    pixel_major: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``grad_cols [B, C*K, Ho*Wo]`` (``pixel_major``: ``[B, Ho*Wo, K*C]``), ``x [B, C, H, W]``, ``offset
    [B, 2*G*K, Ho, Wo]``, ``mask [B, G*K, Ho, Wo]`` or None -> fp32 ``(grad_x [B, C, H, W] in x's memory
    format, or [0] without need_x, grad_offset like offset, grad_mask like mask or [0] without a mask)``."""
    if need_x:  # the input gradient is summed with atomics; offset and mask gradients are not
        alert_not_deterministic("The Triton DCN backward (bevforge::dcn_backward)")
    B, C, H, W = x.shape
    Ho, Wo = offset.shape[-2:]
    K = kernel[0] * kernel[1]
    G = offset.shape[1] // (2 * K)
    Cg, L = C // G, Ho * Wo
    grad_cols = grad_cols.contiguous()  # [B, C*K, L] or [B, L, K*C]
    f32 = dict(dtype=torch.float32, device=x.device)
    grad_x = torch.zeros_like(x, dtype=torch.float32) if need_x else torch.empty(0, **f32)  # x's format
    gx_strides = grad_x.stride() if need_x else (0, 0, 0, 0)
    grad_off = torch.empty(B, 2 * G * K, Ho, Wo, **f32)
    grad_mask = torch.empty(B, G * K, Ho, Wo, **f32) if mask is not None else torch.empty(0, **f32)
    m = mask if mask is not None else offset  # a valid pointer; never read when HAS_MASK is False
    block_c, block_l, num_warps = LAUNCH[pixel_major]
    grid = (B * G, triton.cdiv(L, block_l), K)
    launch("dcn backward", _dcn_backward_kernel, grid,
        grad_cols, x, offset, m, grad_x, grad_off, grad_mask,
        H, W, Wo, L, Cg, G,
        *x.stride(), *offset.stride(), *m.stride(), *cols_strides(grad_cols, C, K, pixel_major), *gx_strides,
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        HAS_MASK=mask is not None, NEED_X=need_x, KH=kernel[0], KW=kernel[1],
        BLOCK_C=block_c, BLOCK_L=block_l, num_warps=num_warps,
    )  # fmt: skip
    return grad_x, grad_off, grad_mask


@dcn_backward_op.register_fake
def _dcn_backward_fake(
    grad_cols, x, offset, mask, kernel, stride, padding, dilation, need_x, pixel_major=False
):
    grad_x = torch.empty_like(x, dtype=torch.float32) if need_x else x.new_empty((0,), dtype=torch.float32)
    grad_mask = x.new_empty(mask.shape if mask is not None else (0,), dtype=torch.float32)
    return grad_x, offset.new_empty(offset.shape, dtype=torch.float32), grad_mask
