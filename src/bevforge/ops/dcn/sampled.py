"""Modulated deformable conv (DCNv2) as one ``grid_sample`` + one batched GEMM.

Shape letters: B images, C input channels, O output channels, H/W input pixels, Ho/Wo output pixels,
L = Ho * Wo, K = kh * kw kernel taps, G offset groups, Gw weight (conv) groups.

Contract: the same as ``torchvision.ops.deform_conv2d`` (the spec and the test oracle):
- ``offset [B, 2 * G * K, Ho, Wo]``: per offset group and tap ``k = i * kw + j`` the pair (dy, dx)
  (interleaved, dy first), in input pixels;
- ``mask [B, G * K, Ho, Wo]`` (DCNv2 modulation; None = 1, DCNv1);
- tap (i, j) of output (ho, wo) samples the input at ``y = ho * sh - ph + i * dh + dy``,
  ``x = wo * sw - pw + j * dw + dx`` (integer = pixel centre), bilinear, every corner outside the image
  counts as zero (so a sample at ``y <= -1`` or ``y >= H`` is 0, as torchvision's bilinear_interpolate);
- ``weight [O, C / Gw, kh, kw]``, ``bias [O]``; returns ``[B, O, Ho, Wo]``.

Why: torchvision's op runs in fp32 under autocast (im2col + fp32 GEMM, col2im in backward). Here the
K taps are sampled by ONE ``F.grid_sample(align_corners=True, padding_mode="zeros")`` on an fp32
``[B*G, K*Ho, Wo, 2]`` grid (``align_corners=True`` maps -1/+1 to the centres of pixels 0 and W-1, the
same integer-at-centre convention as torchvision), multiplied by the mask, and the columns
``[B, C*K, L]`` (row ``c * K + k``, the order of ``weight.view(O, C * K)``) go through one batched
matmul in the autocast dtype (bf16/fp16 tensor cores under AMP; the sampling coordinates and the
bilinear weights stay fp32). Like torchvision, the columns are not kept for backward: the backward
samples them again (one more ``grid_sample``), so the activation memory is that of torchvision's op.

Numerics: the grid round trip (pixels -> [-1, 1] -> pixels) is exact only up to fp32 rounding, so a sample
exactly on an integer position (zero offsets) may land a rounding error to either side: values and the
input/mask/weight gradients agree to fp32 precision, but the offset gradient there (the function has a
kink at integer positions) may be the other one-sided difference than torchvision's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["deform_conv2d_sampled"]


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _columns(
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor | None,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> torch.Tensor:
    """The sampled, modulated columns ``[B, C * K, Ho * Wo]`` (fp32, fp64 for fp64 input)."""
    B, C, H, W = x.shape
    Ho, Wo = offset.shape[-2:]
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    K = kh * kw
    G = offset.shape[1] // (2 * K)
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    x = x.to(dtype)
    # align_corners=True maps [-1, 1] onto [0, size - 1]: a size-1 side has no scale. A zero row/column
    # appended there gives the same samples (corners past the image are zero either way) and grads.
    if H == 1 or W == 1:
        x = F.pad(x, (0, int(W == 1), 0, int(H == 1)))  # [B, C, max(H, 2), max(W, 2)]
    Hs, Ws = x.shape[-2:]
    dev = x.device
    tap_i = torch.arange(kh, device=dev, dtype=dtype).repeat_interleave(kw)  # [K] row of tap k
    tap_j = torch.arange(kw, device=dev, dtype=dtype).repeat(kh)  # [K] column of tap k
    rows = torch.arange(Ho, device=dev, dtype=dtype) * sh - ph  # [Ho]
    cols = torch.arange(Wo, device=dev, dtype=dtype) * sw - pw  # [Wo]
    base_y = (tap_i * dh)[:, None, None] + rows[None, :, None]  # [K, Ho, 1] input rows
    base_x = (tap_j * dw)[:, None, None] + cols[None, None, :]  # [K, 1, Wo] input columns
    off = offset.to(dtype).view(B, G, K, 2, Ho, Wo)  # [B, G, K, (dy, dx), Ho, Wo]
    y_px = off[:, :, :, 0] + base_y  # [B, G, K, Ho, Wo]
    x_px = off[:, :, :, 1] + base_x  # [B, G, K, Ho, Wo]
    grid = torch.stack((x_px * (2.0 / (Ws - 1)) - 1.0, y_px * (2.0 / (Hs - 1)) - 1.0), dim=-1)
    grid = grid.view(B * G, K * Ho, Wo, 2)  # [B*G, K*Ho, Wo, (x, y)] in [-1, 1] inside the image
    sampled = F.grid_sample(
        x.view(B * G, C // G, Hs, Ws),  # [B*G, C/G, Hs, Ws]: channel c belongs to offset group c // (C/G)
        grid,
        mode="bilinear",
        padding_mode="zeros",
        align_corners=True,
    )  # [B*G, C/G, K*Ho, Wo]
    sampled = sampled.view(B, G, C // G, K, Ho, Wo)
    if mask is not None:
        sampled = sampled * mask.to(dtype).view(B, G, 1, K, Ho, Wo)  # [B, G, C/G, K, Ho, Wo]
    return sampled.reshape(B, C * K, Ho * Wo)  # [B, C*K, L], row c * K + k


class _SampledDeformConv(torch.autograd.Function):
    """Forward: columns -> GEMM; backward: columns again, GEMM grads, then autograd through the sampling.

    Runs with autocast off; ``gemm_dtype`` (decided by the caller from the autocast state) is explicit."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        x: torch.Tensor,
        offset: torch.Tensor,
        mask: torch.Tensor | None,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        geometry: tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]],
        gemm_dtype: torch.dtype,
    ) -> torch.Tensor:
        B = x.shape[0]
        O, Cg = weight.shape[:2]
        Gw = x.shape[1] // Cg
        Ho, Wo = offset.shape[-2:]
        cols = _columns(x, offset, mask, *geometry).to(gemm_dtype)  # [B, C*K, L]
        cols = cols.view(B, Gw, -1, Ho * Wo)  # [B, Gw, C/Gw*K, L]
        w = weight.to(gemm_dtype).reshape(Gw, O // Gw, -1)  # [Gw, O/Gw, C/Gw*K]
        out = torch.matmul(w, cols).view(B, O, Ho, Wo)  # [B, Gw, O/Gw, L] -> [B, O, Ho, Wo]
        if bias is not None:
            out = out + bias.to(gemm_dtype).view(1, O, 1, 1)
        ctx.save_for_backward(x, offset, mask, weight)
        ctx.geometry, ctx.gemm_dtype, ctx.has_bias = geometry, gemm_dtype, bias is not None
        return out

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        x, offset, mask, weight = ctx.saved_tensors
        need_x, need_off, need_mask, need_w, need_b = ctx.needs_input_grad[:5]
        B = x.shape[0]
        O, Cg = weight.shape[:2]
        Gw = x.shape[1] // Cg
        L = grad_out.shape[-2] * grad_out.shape[-1]
        gd = ctx.gemm_dtype
        with torch.autocast(x.device.type, enabled=False):
            g = grad_out.to(gd).reshape(B, Gw, O // Gw, L)  # [B, Gw, O/Gw, L]
            leaves = [
                t.detach().requires_grad_(need) if t is not None else None
                for t, need in ((x, need_x), (offset, need_off), (mask, need_mask))
            ]
            sampling_grads = [t for t in leaves if t is not None and t.requires_grad]
            grad_x = grad_off = grad_mask = grad_w = grad_b = None
            with torch.set_grad_enabled(bool(sampling_grads)):
                cols = _columns(leaves[0], leaves[1], leaves[2], *ctx.geometry).to(gd)  # [B, C*K, L]
                cols = cols.view(B, Gw, -1, L)  # [B, Gw, C/Gw*K, L]
            if need_w:
                # one GEMM contracting over (B, L): [Gw, O/Gw, C/Gw*K]
                grad_w = torch.einsum("bgol,bgkl->gok", g, cols.detach()).reshape(weight.shape)
                grad_w = grad_w.to(weight.dtype)
            if need_b and ctx.has_bias:
                grad_b = grad_out.sum(dim=(0, 2, 3))  # [O]
            if sampling_grads:
                w = weight.to(gd).reshape(Gw, O // Gw, -1)  # [Gw, O/Gw, C/Gw*K]
                grad_cols = torch.matmul(w.transpose(1, 2), g)  # [B, Gw, C/Gw*K, L]
                grads = iter(torch.autograd.grad(cols, sampling_grads, grad_cols))
                grad_x, grad_off, grad_mask = (
                    next(grads).to(t.dtype) if t is not None and t.requires_grad else None for t in leaves
                )
        return grad_x, grad_off, grad_mask, grad_w, grad_b, None, None


def deform_conv2d_sampled(
    input: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Drop-in for ``torchvision.ops.deform_conv2d`` (same arguments, see the module doc).

    Under autocast the GEMMs run in the autocast dtype and the result has that dtype; otherwise
    everything runs in the promoted dtype of ``input`` and ``weight``."""
    assert input.dim() == 4 and offset.dim() == 4 and weight.dim() == 4, (input.shape, offset.shape)
    B, C, H, W = input.shape
    O, Cg, kh, kw = weight.shape
    stride, padding, dilation = _pair(stride), _pair(padding), _pair(dilation)
    K = kh * kw
    if Cg == 0 or C % Cg or O % (C // Cg):
        raise ValueError(f"weight {tuple(weight.shape)} does not split input channels {C} into groups")
    if offset.shape[1] == 0 or offset.shape[1] % (2 * K) or C % (offset.shape[1] // (2 * K)):
        raise ValueError(
            f"offset has {offset.shape[1]} channels: need 2 * groups * {K} (kernel {kh}x{kw}) with "
            f"groups dividing the {C} input channels"
        )
    G = offset.shape[1] // (2 * K)
    Ho = (H + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    Wo = (W + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    if offset.shape[0] != B or tuple(offset.shape[-2:]) != (Ho, Wo):
        raise ValueError(f"offset {tuple(offset.shape)} must be [{B}, {2 * G * K}, {Ho}, {Wo}]")
    if mask is not None and tuple(mask.shape) != (B, G * K, Ho, Wo):
        raise ValueError(f"mask {tuple(mask.shape)} must be [{B}, {G * K}, {Ho}, {Wo}]")
    device_type = input.device.type
    if torch.is_autocast_enabled(device_type):
        gemm_dtype = torch.get_autocast_dtype(device_type)
    else:
        gemm_dtype = torch.result_type(input, weight)
    geometry = ((kh, kw), stride, padding, dilation)
    with torch.autocast(device_type, enabled=False):
        return _SampledDeformConv.apply(input, offset, mask, weight, bias, geometry, gemm_dtype)
