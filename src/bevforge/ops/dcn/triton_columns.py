"""Triton kernel: the modulated DCNv2 columns in one pass (sample, modulate, cast, write).

Shape letters as :mod:`bevforge.ops.dcn.sampled` (the contract): B images, C input channels, H/W input
pixels, Ho/Wo output pixels, L = Ho * Wo, K = kh * kw taps, G offset groups.

``cols [B, C * K, L]`` (row ``c * K + k``, the order of ``weight.view(O, C * K)``) is what the sampled
path builds from an fp32 copy of the input, an fp32 ``grid_sample`` output ``[B, C, K * L]`` and a mask
product + cast pass; here each program reads ``BLOCK_C`` channels x ``BLOCK_L`` output pixels of the input
in its own dtype and layout (NCHW or channels-last: strides are arguments), computes the K taps'
bilinear samples in fp32 (torchvision's rule: pixel centres at integers, every corner outside the image
is zero) and stores the modulated columns once, in the GEMM dtype. The sample coordinates are computed in
input pixels directly (no [-1, 1] round trip), so values agree with the sampled path to fp32 rounding.

Two column layouts (``pixel_major``), the same kernel through the output strides:
- ``[B, C * K, L]`` (row ``c * K + k``): for NCHW activations, ``out [B, O, L] = W [O, C*K] @ cols``;
- ``[B, L, K * C]`` (pixel-major, element ``k * C + c`` of each pixel's row): for channels-last
  activations, ``out [B*L, O] = cols @ W'^T`` with ``W' = weight.permute(0, 2, 3, 1)`` (a view of a
  channels-last weight) is the channels-last output itself. Each corner is then one pixel's contiguous
  channel vector (vector loads and stores along channels, the access pattern of DCNv3/v4's kernels),
  where the channel-major layout reads one channel plane per row of the tile.
Launch constants per layout: :data:`LAUNCH`.

The weight gradient of :class:`~bevforge.ops.dcn.sampled._SampledDeformConv` takes its columns from
here again (they are not kept); the input, offset and mask gradients come from
:mod:`bevforge.ops.dcn.triton_backward`. Indices are int32; the dispatch
(:func:`bevforge.ops.dcn.sampled.columns_ineligible_reason`) sends only tensors with fewer than 2**31
elements.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bevforge.ops.dispatch import launch

#: pixel_major -> (BLOCK_C channels, BLOCK_L output pixels, warps) per program, read at each launch
#: (``python -m bevforge.ops.dcn.bench --sweep [--channels-last]`` times others). Set from the H200 sweep
#: at 9cdd050 (R101 stage 3, bf16 forward): channel-major 0.81 ms against 1.30 ms for (16, 64, 4),
#: pixel-major 0.35 ms against 0.49 ms for (64, 16, 4) (benchmarks/results/kernel.md)
LAUNCH = {False: (16, 128, 4), True: (128, 32, 8)}


def cols_strides(cols: torch.Tensor, C: int, K: int, pixel_major: bool) -> tuple[int, int, int, int]:
    """Element strides ``(image, channel, tap, pixel)`` of columns ``[B, C*K, L]`` (channel-major) or
    ``[B, L, K*C]`` (pixel-major) whose last dimension is contiguous."""
    assert cols.stride(-1) == 1, cols.stride()
    if pixel_major:  # [B, L, K*C]: element k * C + c
        return cols.stride(0), 1, C, cols.stride(1)
    return cols.stride(0), K * cols.stride(1), cols.stride(1), 1  # [B, C*K, L]: row c * K + k


@triton.jit
def _corner(x_row, y, x, H, W, sxh, sxw, c_mask, l_mask):
    """``[BC, BL]`` input values at integer pixel (y, x) ([BL] each), zero outside the image."""
    inside = l_mask & (y >= 0) & (y < H) & (x >= 0) & (x < W)  # [BL]
    ptrs = x_row + (y * sxh + x * sxw)[None, :]  # [BC, BL]
    return tl.load(ptrs, mask=c_mask[:, None] & inside[None, :], other=0.0).to(tl.float32)


@triton.jit
def tap_position(
    off_ptr, b, oc, ho, wo, i, j, sob, soc, sol_h, sol_w,
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, H, W, l_mask,
):  # fmt: skip
    """Where tap (i, j) of output pixels (ho, wo) ([BL] each) samples the input: the zero-offset position
    plus the offsets of channels ``oc`` (dy) and ``oc + 1`` (dx), in input pixels (integer = pixel
    centre). Returns the top-left corner ``(y0, x0)`` (int32) and the fractions ``(ly, lx)`` (fp32), all
    ``[BL]``. A position far outside moves to just outside (all four corners stay outside), so the int
    cast cannot overflow. Shared by the columns kernel and the backward kernel."""
    o_ptr = off_ptr + b * sob + ho * sol_h + wo * sol_w  # [BL]
    dy = tl.load(o_ptr + oc * soc, mask=l_mask, other=0.0).to(tl.float32)
    dx = tl.load(o_ptr + (oc + 1) * soc, mask=l_mask, other=0.0).to(tl.float32)
    y = (ho * stride_h - pad_h + i * dil_h).to(tl.float32) + dy  # [BL] input row
    x = (wo * stride_w - pad_w + j * dil_w).to(tl.float32) + dx  # [BL] input column
    Hf, Wf = H * 1.0, W * 1.0  # fp32 (an int arg equal to 1 is a constexpr: no .to())
    y = tl.minimum(tl.maximum(y, -2.0), Hf + 1.0)
    x = tl.minimum(tl.maximum(x, -2.0), Wf + 1.0)
    y0f, x0f = tl.floor(y), tl.floor(x)
    return y0f.to(tl.int32), x0f.to(tl.int32), y - y0f, x - x0f


@triton.jit
def _dcn_columns_kernel(
    x_ptr, off_ptr, mask_ptr, out_ptr,
    H, W, Wo, L, Cg, G,
    sxb, sxc, sxh, sxw,  # input strides (elements)
    sob, soc, sol_h, sol_w,  # offset strides
    smb, smc, sml_h, sml_w,  # mask strides
    scb, scc, sck, scl,  # column strides: image, channel, tap, pixel (either layout)
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    HAS_MASK: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr,
):  # fmt: skip
    """Grid ``(B * G, cdiv(L, BLOCK_L), cdiv(C / G, BLOCK_C))``: writes the column of (channel c, tap k,
    pixel l) for the program's channels c (of offset group g) and output pixels l, every tap k."""
    pid_bg, pid_l, pid_c = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    b, g = pid_bg // G, pid_bg % G
    K: tl.constexpr = KH * KW
    l = pid_l * BLOCK_L + tl.arange(0, BLOCK_L)  # [BL] flat output pixel
    l_mask = l < L
    ho, wo = l // Wo, l % Wo  # [BL]
    c_local = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)  # [BC] channel within the group
    c_mask = c_local < Cg
    chan = g * Cg + c_local  # [BC] input channel
    x_row = x_ptr + b * sxb + chan[:, None] * sxc  # [BC, 1] pointer to channel planes
    out_row = out_ptr + b * scb + chan[:, None] * scc + l[None, :] * scl  # [BC, BL] at tap 0
    for k in tl.static_range(K):
        i, j = k // KW, k % KW
        y0, x0, ly, lx = tap_position(
            off_ptr, b, (g * K + k) * 2, ho, wo, i, j, sob, soc, sol_h, sol_w,
            stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, H, W, l_mask,
        )  # fmt: skip
        hy, hx = 1.0 - ly, 1.0 - lx
        val = (hy * hx)[None, :] * _corner(x_row, y0, x0, H, W, sxh, sxw, c_mask, l_mask)
        val += (hy * lx)[None, :] * _corner(x_row, y0, x0 + 1, H, W, sxh, sxw, c_mask, l_mask)
        val += (ly * hx)[None, :] * _corner(x_row, y0 + 1, x0, H, W, sxh, sxw, c_mask, l_mask)
        val += (ly * lx)[None, :] * _corner(x_row, y0 + 1, x0 + 1, H, W, sxh, sxw, c_mask, l_mask)
        if HAS_MASK:
            m_ptr = mask_ptr + b * smb + (g * K + k) * smc + ho * sml_h + wo * sml_w  # [BL]
            val *= tl.load(m_ptr, mask=l_mask, other=0.0).to(tl.float32)[None, :]
        tl.store(out_row + k * sck, val.to(out_ptr.dtype.element_ty), mask=c_mask[:, None] & l_mask[None, :])


def _out_shape(
    x: torch.Tensor, offset: torch.Tensor, kernel: list[int], pixel_major: bool
) -> tuple[int, int, int]:
    CK, L = x.shape[1] * kernel[0] * kernel[1], offset.shape[-2] * offset.shape[-1]
    return (x.shape[0], L, CK) if pixel_major else (x.shape[0], CK, L)


@torch.library.custom_op("bevforge::dcn_columns", mutates_args=())
def dcn_columns_op(
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor | None,
    kernel: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    out_dtype: torch.dtype,
    pixel_major: bool = False,
) -> torch.Tensor:
    """``x [B, C, H, W]``, ``offset [B, 2*G*K, Ho, Wo]``, ``mask [B, G*K, Ho, Wo]`` or None ->
    ``cols [B, C*K, Ho*Wo]`` (``pixel_major``: ``[B, Ho*Wo, K*C]``) in ``out_dtype`` (fp32, fp16 or
    bf16)."""
    B, C, H, W = x.shape
    Ho, Wo = offset.shape[-2:]
    K = kernel[0] * kernel[1]
    G = offset.shape[1] // (2 * K)
    Cg, L = C // G, Ho * Wo
    out = torch.empty(_out_shape(x, offset, kernel, pixel_major), dtype=out_dtype, device=x.device)
    m = mask if mask is not None else offset  # a valid pointer; never read when HAS_MASK is False
    block_c, block_l, num_warps = LAUNCH[pixel_major]
    grid = (B * G, triton.cdiv(L, block_l), triton.cdiv(Cg, block_c))
    launch("dcn columns", _dcn_columns_kernel, grid,
        x, offset, m, out,
        H, W, Wo, L, Cg, G,
        *x.stride(), *offset.stride(), *m.stride(), *cols_strides(out, C, K, pixel_major),
        stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
        HAS_MASK=mask is not None, KH=kernel[0], KW=kernel[1], BLOCK_C=block_c, BLOCK_L=block_l,
        num_warps=num_warps,
    )  # fmt: skip
    return out


@dcn_columns_op.register_fake
def _dcn_columns_fake(x, offset, mask, kernel, stride, padding, dilation, out_dtype, pixel_major=False):
    return x.new_empty(_out_shape(x, offset, kernel, pixel_major), dtype=out_dtype)
