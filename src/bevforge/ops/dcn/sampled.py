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
K taps are sampled by ONE bilinear ``grid_sample`` (``align_corners=True``, zero padding; ATen's native
``grid_sampler_2d``, as ``F.grid_sample`` would pick cuDNN's sampler on CUDA) on an fp32
``[B*G, K*Ho, Wo, 2]`` grid (``align_corners=True`` maps -1/+1 to the centres of pixels 0 and W-1, the
same integer-at-centre convention as torchvision), multiplied by the mask, and the columns
``[B, C*K, L]`` (row ``c * K + k``, the order of ``weight.view(O, C * K)``) go through one batched
matmul in the autocast dtype (bf16/fp16 tensor cores under AMP; the sampling coordinates, bilinear
weights and sampler gradients stay fp32). Like torchvision, the columns are not kept for backward: the
backward samples them again, so the activation memory is that of torchvision's op (inputs only). The
backward is explicit (GEMM grads + ``grid_sampler_2d_backward`` + the mask grad, or the Triton custom
ops), so ``torch.compile`` traces it without graph breaks.

Forward columns kernel: on CUDA (``BEVFORGE_KERNELS=auto|triton``, see :mod:`bevforge.ops.dispatch`) the
forward's columns come from one Triton pass (:mod:`bevforge.ops.dcn.triton_columns`: the samples are
taken from the input in its own dtype and layout and written once, in the GEMM dtype) instead of the fp32
input copy + ``grid_sample`` + mask/cast passes; :func:`columns_ineligible_reason` says when it is not
used. Under the same rule the backward takes the weight gradient's columns from that kernel and the input,
offset and mask gradients from one Triton pass over the columns' gradient
(:mod:`bevforge.ops.dcn.triton_backward`) instead of sampling again and ``grid_sampler_2d_backward``.

Channels-last inputs (``train.channels_last``; one weight group) take the kernels' pixel-major columns
``[B, L, K*C]`` when the kernel runs: the forward GEMM ``cols @ W'^T`` (``W' = weight.permute(0, 2, 3, 1)``,
a view of a channels-last weight) writes the channels-last output directly, and the backward's GEMMs read
a channels-last output gradient without a copy. The NCHW path's output is NCHW, which made every DCN
layer a layout switch in a channels-last backbone. :data:`NCHW_PIXEL_MAJOR` sends NCHW inputs the same way
(a channels-last copy of the input for the kernels' vector loads, the output and the input gradient NCHW):
on, since the H200 timed it (``python -m bevforge.ops.dcn.bench``, variant ``triton-pm``, bf16 forward +
backward at 9cdd050): 2.53 ms against 6.62 ms for the channel-major kernels at R101 stage 3
``[6, 256, 58, 100]``, 2.33 against 4.48 ms at stage 4 ``[6, 512, 29, 50]`` (copies included). The
channel-major kernels remain the path of weight groups (``Gw > 1``).

Numerics: the grid round trip (pixels -> [-1, 1] -> pixels) is exact only up to fp32 rounding, so a sample
exactly on an integer position (zero offsets) may land a rounding error to either side: values and the
input/mask/weight gradients agree to fp32 precision, but the offset gradient there (the function has a
kink at integer positions) may be the other one-sided difference than torchvision's.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import torch.nn.functional as F

from bevforge.ops.dispatch import LazyOp, kernel_choice, placement_ineligible_reason, select_kernel

__all__ = ["columns_ineligible_reason", "deform_conv2d_sampled"]

_COLUMNS_OP = LazyOp("bevforge.ops.dcn.triton_columns", "dcn_columns_op", "dcn")
_BACKWARD_OP = LazyOp("bevforge.ops.dcn.triton_backward", "dcn_backward_op", "dcn")
_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


_BILINEAR, _ZEROS = 0, 0  # aten grid_sampler enums


class _Geometry(NamedTuple):
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]


def _sampling_input(x: torch.Tensor) -> torch.Tensor:
    """``x`` in the sampling dtype (fp32; fp64 stays fp64), a size-1 side padded to 2: ``[B, C, Hs, Ws]``.

    ``align_corners=True`` maps [-1, 1] onto [0, size - 1], so a size-1 side has no scale; a zero
    row/column appended there gives the same samples and gradients (corners past the image are zero)."""
    x = x.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
    H, W = x.shape[-2:]
    if H == 1 or W == 1:
        x = F.pad(x, (0, int(W == 1), 0, int(H == 1)))  # [B, C, max(H, 2), max(W, 2)]
    return x


def _base_grid(
    geo: _Geometry, out_hw: tuple[int, int], in_hw: tuple[int, int], dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The zero-offset sampling positions of every tap, normalised for ``align_corners=True``:
    x ``[K, 1, Wo]`` and y ``[K, Ho, 1]`` (computed in float64 on the host, copied over once per shape
    by :func:`_base_grid_cached`)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = geo
    (Ho, Wo), (Hs, Ws) = out_hw, in_hw
    sy, sx = 2.0 / (Hs - 1), 2.0 / (Ws - 1)
    taps = [(i, j) for i in range(kh) for j in range(kw)]  # tap k = i * kw + j
    xs = [[(wo * sw - pw + j * dw) * sx - 1.0 for wo in range(Wo)] for _, j in taps]  # [K, Wo]
    ys = [[(ho * sh - ph + i * dh) * sy - 1.0 for ho in range(Ho)] for i, _ in taps]  # [K, Ho]
    base_x = torch.tensor(xs, dtype=torch.float64).to(device, dtype).view(len(taps), 1, Wo)  # [K, 1, Wo]
    base_y = torch.tensor(ys, dtype=torch.float64).to(device, dtype).view(len(taps), Ho, 1)  # [K, Ho, 1]
    return base_x, base_y


@functools.lru_cache(maxsize=256)
def _base_grid_cached(
    geo: _Geometry, out_hw: tuple[int, int], in_hw: tuple[int, int], dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.inference_mode(False):  # normal tensors even if first built in an inference_mode eval
        return _base_grid(geo, out_hw, in_hw, dtype, device)


def _grid(offset: torch.Tensor, geo: _Geometry, Hs: int, Ws: int, dtype: torch.dtype) -> torch.Tensor:
    """The sampling grid ``[B*G, K*Ho, Wo, (x, y)]`` of every tap, normalised for ``align_corners=True``:
    the cached zero-offset positions plus the offsets scaled to [-1, 1] units (three kernels)."""
    B, _, Ho, Wo = offset.shape
    K = geo.kernel[0] * geo.kernel[1]
    G = offset.shape[1] // (2 * K)
    base = _base_grid if torch.compiler.is_compiling() else _base_grid_cached
    base_x, base_y = base(geo, (Ho, Wo), (Hs, Ws), dtype, offset.device)  # [K, 1, Wo], [K, Ho, 1]
    off = offset.to(dtype).reshape(B, G, K, 2, Ho, Wo)  # [B, G, K, (dy, dx), Ho, Wo] input pixels
    grid_x = torch.add(base_x, off[:, :, :, 1], alpha=2.0 / (Ws - 1))  # [B, G, K, Ho, Wo]
    grid_y = torch.add(base_y, off[:, :, :, 0], alpha=2.0 / (Hs - 1))  # [B, G, K, Ho, Wo]
    grid = torch.stack((grid_x, grid_y), dim=-1)  # [B, G, K, Ho, Wo, (x, y)]
    return grid.view(B * G, K * Ho, Wo, 2)  # [B*G, K*Ho, Wo, (x, y)], [-1, 1] inside the image


def _sample(xs: torch.Tensor, grid: torch.Tensor, G: int) -> torch.Tensor:
    """``[B, C, Hs, Ws]`` at ``grid`` -> ``[B*G, C/G, K*Ho, Wo]`` (channel c in offset group c // (C/G)).

    The native ATen kernel, called directly: ``F.grid_sample`` would pick cuDNN's sampler on CUDA for
    these arguments, and the backward below calls the native backward."""
    B, C, Hs, Ws = xs.shape
    return torch.ops.aten.grid_sampler_2d(
        xs.reshape(B * G, C // G, Hs, Ws), grid, _BILINEAR, _ZEROS, True
    )  # [B*G, C/G, K*Ho, Wo]


def _columns(
    sampled: torch.Tensor,
    mask: torch.Tensor | None,
    B: int,
    G: int,
    K: int,
    out_hw: tuple[int, int],
    dtype: torch.dtype,
) -> torch.Tensor:
    """Modulated columns ``[B, C * K, Ho * Wo]`` in ``dtype``, row ``c * K + k`` (the order of
    ``weight.view(O, C * K)``); the mask product (fp32) and the cast to the GEMM dtype are one pass."""
    Ho, Wo = out_hw
    sampled = sampled.view(B, G, -1, K, Ho, Wo)  # [B, G, C/G, K, Ho, Wo]
    if mask is None:
        cols = sampled.to(dtype)
    else:
        cols = torch.empty(sampled.shape, dtype=dtype, device=sampled.device)  # [B, G, C/G, K, Ho, Wo]
        torch.mul(sampled, mask.to(sampled.dtype).reshape(B, G, 1, K, Ho, Wo), out=cols)
    return cols.view(B, -1, Ho * Wo)  # [B, C*K, L]


def columns_ineligible_reason(
    x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor | None, gemm_dtype: torch.dtype, K: int
) -> str | None:
    """None when the Triton columns kernel can build the forward columns of these inputs, else why not."""
    tensors = [t for t in (x, offset, mask) if t is not None]
    reason = placement_ineligible_reason(tensors, "grid_sample path")
    if reason is not None:
        return reason
    if any(t.dtype not in _SUPPORTED_DTYPES for t in tensors) or gemm_dtype not in _SUPPORTED_DTYPES:
        return f"dtypes {[t.dtype for t in tensors]} -> {gemm_dtype} (supported: fp32, fp16, bf16)"
    cols_numel = x.shape[0] * x.shape[1] * K * offset.shape[-2] * offset.shape[-1]  # B * C*K * L
    if max(cols_numel, *(t.numel() for t in tensors)) > 2**31 - 1:
        return "more than 2**31 elements (the kernel indexes with int32)"
    return None


def _columns_kernel(
    x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor | None, gemm_dtype: torch.dtype, K: int
):
    """The Triton columns op when the dispatch allows it, else None."""
    choice = kernel_choice()
    if choice == "reference":
        return None
    reason = columns_ineligible_reason(x, offset, mask, gemm_dtype, K)
    return select_kernel(choice, _COLUMNS_OP, reason, "Triton DCN columns kernel")


def is_channels_last(x: torch.Tensor) -> bool:
    """``x [B, C, H, W]`` laid out channels-last (and not also NCHW-contiguous, as when C or H * W is 1)."""
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def to_pixel_major(cols: torch.Tensor, C: int, K: int) -> torch.Tensor:
    """Columns ``[B, C*K, L]`` (row ``c * K + k``) -> pixel-major ``[B, L, K*C]`` (a copy)."""
    B, _, L = cols.shape
    return cols.view(B, C, K, L).permute(0, 3, 2, 1).reshape(B, L, K * C)  # [B, L, K, C] -> [B, L, K*C]


#: NCHW inputs take the pixel-major columns too, through a channels-last copy of the input (module doc)
NCHW_PIXEL_MAJOR = True


def _kernel_input(x: torch.Tensor) -> torch.Tensor:
    """``x`` as the pixel-major kernels read it best: channels-last (a copy of an NCHW ``x``)."""
    return x if is_channels_last(x) else x.contiguous(memory_format=torch.channels_last)


def _pixel_major_weight(weight: torch.Tensor, gemm_dtype: torch.dtype) -> torch.Tensor:
    """``weight [O, C, kh, kw]`` -> ``[O, K*C]`` (element ``k * C + c``) in the GEMM dtype: a view of a
    channels-last weight, else a small copy."""
    O = weight.shape[0]
    return weight.to(gemm_dtype).permute(0, 2, 3, 1).reshape(O, -1)  # [O, kh, kw, C] -> [O, K*C]


def _forward_columns(
    x: torch.Tensor,
    offset: torch.Tensor,
    mask: torch.Tensor | None,
    geo: _Geometry,
    G: int,
    gemm_dtype: torch.dtype,
) -> torch.Tensor:
    """The forward's modulated columns ``[B, C * K, L]`` in ``gemm_dtype``: the Triton kernel when the
    dispatch allows it, else sampled (fp32 copy of ``x`` -> ``grid_sample`` -> mask product and cast)."""
    B, K = x.shape[0], geo.kernel[0] * geo.kernel[1]
    Ho, Wo = offset.shape[-2:]
    op = _columns_kernel(x, offset, mask, gemm_dtype, K)
    if op is not None:
        geometry = [list(v) for v in geo]  # kernel, stride, padding, dilation
        return op(x, offset, mask, *geometry, gemm_dtype)
    xs = _sampling_input(x)
    sampled = _sample(xs, _grid(offset, geo, xs.shape[-2], xs.shape[-1], xs.dtype), G)
    return _columns(sampled, mask, B, G, K, (Ho, Wo), gemm_dtype)


class _SampledDeformConv(torch.autograd.Function):
    """Forward: sample -> columns -> GEMM. Backward: GEMM grads, then the input, offset and mask grads
    from the columns' gradient: one Triton pass where the dispatch allows it, else the sampled backward.

    Runs with autocast off; ``gemm_dtype`` (decided by the caller from the autocast state) is explicit."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        x: torch.Tensor,
        offset: torch.Tensor,
        mask: torch.Tensor | None,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        geo: _Geometry,
        gemm_dtype: torch.dtype,
    ) -> torch.Tensor:
        B, C = x.shape[:2]
        O, Cg = weight.shape[:2]
        Gw, K = C // Cg, geo.kernel[0] * geo.kernel[1]
        G = offset.shape[1] // (2 * K)
        Ho, Wo = offset.shape[-2:]
        L = Ho * Wo
        op = _columns_kernel(x, offset, mask, gemm_dtype, K)
        channels_last = is_channels_last(x)
        ctx.pixel_major = op is not None and Gw == 1 and (channels_last or NCHW_PIXEL_MAJOR)
        # the output is a tensor of its own (not a view of the GEMM's output): callers may modify it in place
        if ctx.pixel_major:
            geometry = [list(v) for v in geo]  # kernel, stride, padding, dilation
            cols = op(_kernel_input(x), offset, mask, *geometry, gemm_dtype, True)  # [B, L, K*C]
            w = _pixel_major_weight(weight, gemm_dtype)  # [O, K*C]
            if channels_last:
                out = torch.empty_strided(  # [B, O, Ho, Wo] channels-last
                    (B, O, Ho, Wo), (L * O, 1, Wo * O, O), dtype=gemm_dtype, device=x.device
                )
                out_rows = out.permute(0, 2, 3, 1).view(B * L, O)  # [B*L, O], the same memory
                if bias is None:
                    torch.mm(cols.view(B * L, K * C), w.t(), out=out_rows)
                else:  # the bias in the GEMM (cuBLASLt's epilogue), not a broadcast pass over the output
                    torch.addmm(bias.to(gemm_dtype), cols.view(B * L, K * C), w.t(), out=out_rows)
            else:  # NCHW output: [O, K*C] @ [B, K*C, L] (the columns transposed, a view)
                out = cols.new_empty(B, O, Ho, Wo)
                torch.matmul(w, cols.transpose(1, 2), out=out.view(B, O, L))
                if bias is not None:
                    out.add_(bias.to(gemm_dtype).view(1, O, 1, 1))
        else:
            cols = _forward_columns(x, offset, mask, geo, G, gemm_dtype)  # [B, C*K, L]
            cols = cols.view(B, Gw, -1, L)  # [B, Gw, C/Gw*K, L]
            w = weight.to(gemm_dtype).reshape(Gw, O // Gw, -1)  # [Gw, O/Gw, C/Gw*K]
            out = cols.new_empty(B, O, Ho, Wo)
            torch.matmul(w, cols, out=out.view(B, Gw, O // Gw, L))  # [B, Gw, O/Gw, L]
            if bias is not None:
                out.add_(bias.to(gemm_dtype).view(1, O, 1, 1))  # the GEMM's fresh output
        ctx.save_for_backward(x, offset, mask, weight)
        ctx.geo, ctx.gemm_dtype, ctx.has_bias = geo, gemm_dtype, bias is not None
        ctx.bias_dtype = bias.dtype if bias is not None else None
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):  # type: ignore[override]
        x, offset, mask, weight = ctx.saved_tensors
        need_x, need_off, need_mask, need_w, need_b = ctx.needs_input_grad[:5]
        geo, gd = ctx.geo, ctx.gemm_dtype
        B, C = x.shape[:2]
        O, Cg = weight.shape[:2]
        Gw, K = C // Cg, geo.kernel[0] * geo.kernel[1]
        Ho, Wo = grad_out.shape[-2:]
        grad_b = None
        with torch.autocast(x.device.type, enabled=False):
            if need_b and ctx.has_bias:
                acc = torch.promote_types(grad_out.dtype, torch.float32)
                grad_b = grad_out.sum(dim=(0, 2, 3), dtype=acc).to(ctx.bias_dtype)  # [O]
            kernel_op = _backward_kernel(x, offset, mask, gd, K)
            needs = ctx.needs_input_grad
            if kernel_op is not None and ctx.pixel_major:
                grads = _backward_pixel_major(kernel_op, grad_out, x, offset, mask, weight, geo, gd, needs)
            else:
                g = grad_out.to(gd).reshape(B, Gw, O // Gw, Ho * Wo)  # [B, Gw, O/Gw, L]
                if kernel_op is not None:
                    grads = _backward_with_kernel(kernel_op, g, x, offset, mask, weight, geo, gd, needs)
                else:
                    grads = _backward_sampled(g, x, offset, mask, weight, geo, gd, needs)
        grad_x, grad_off, grad_mask, grad_w = grads
        return grad_x, grad_off, grad_mask, grad_w, grad_b, None, None


#: the Triton backward kernel under ``BEVFORGE_KERNELS=auto|triton`` (the forward columns kernel's
#: eligibility); False keeps the sampled backward with the columns kernel (``ops/dcn/bench.py`` compares)
BACKWARD_KERNEL = True


def _backward_kernel(
    x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor | None, gemm_dtype: torch.dtype, K: int
):
    """The Triton backward op when the dispatch allows it (the forward columns kernel's rules), else None."""
    choice = kernel_choice()
    if choice == "reference" or not BACKWARD_KERNEL:
        return None
    reason = columns_ineligible_reason(x, offset, mask, gemm_dtype, K)
    return select_kernel(choice, _BACKWARD_OP, reason, "Triton DCN backward kernel")


def _grad_weight(g: torch.Tensor, cols: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``g [B, Gw, O/Gw, L]``, ``cols [B, C*K, L]`` (GEMM dtype) -> ``grad_weight`` like ``weight``:
    per image (no copy of the transposed columns), summed over images in fp32."""
    B, Gw, _, L = g.shape
    cols = cols.view(B, Gw, -1, L)  # [B, Gw, C/Gw*K, L]
    acc = torch.promote_types(g.dtype, torch.float32)
    grad_w = torch.matmul(g, cols.transpose(-1, -2)).sum(dim=0, dtype=acc)  # [Gw, O/Gw, C/Gw*K]
    return grad_w.reshape(weight.shape).to(weight.dtype)


def _grad_columns(g: torch.Tensor, weight: torch.Tensor, gemm_dtype: torch.dtype) -> torch.Tensor:
    """``g [B, Gw, O/Gw, L]`` -> the columns' gradient ``[B, Gw, C/Gw*K, L]`` in the GEMM dtype."""
    Gw, O = g.shape[1], weight.shape[0]
    w = weight.to(gemm_dtype).reshape(Gw, O // Gw, -1)  # [Gw, O/Gw, C/Gw*K]
    return torch.matmul(w.transpose(1, 2), g)


def _backward_with_kernel(op, g, x, offset, mask, weight, geo, gd, needs):
    """Columns for the weight gradient from the forward's Triton kernel; input, offset and mask gradients
    from one Triton pass over the columns' gradient (:mod:`bevforge.ops.dcn.triton_backward`)."""
    need_x, need_off, need_mask, need_w = needs[:4]
    B, C = x.shape[:2]
    K, L = geo.kernel[0] * geo.kernel[1], g.shape[-1]
    geometry = [list(v) for v in geo]  # kernel, stride, padding, dilation
    grad_x = grad_off = grad_mask = grad_w = None
    if need_w:
        grad_w = _grad_weight(g, _COLUMNS_OP.get()(x, offset, mask, *geometry, gd), weight)
    if need_x or need_off or need_mask:
        grad_cols = _grad_columns(g, weight, gd).view(B, C * K, L)  # [B, C*K, L]
        gx, goff, gmask = op(grad_cols, x, offset, mask, *geometry, need_x)
        grad_x = gx.to(x.dtype) if need_x else None
        grad_off = goff.to(offset.dtype) if need_off else None
        grad_mask = gmask.to(mask.dtype) if need_mask else None
    return grad_x, grad_off, grad_mask, grad_w


def _backward_pixel_major(op, grad_out, x, offset, mask, weight, geo, gd, needs):
    """The pixel-major path (one weight group): ``grad_out [B, O, Ho, Wo]`` read as ``[B*L, O]`` rows
    (a view when it is channels-last), the weight gradient from the pixel-major columns (one GEMM over
    every image, fp32 accumulation), the input, offset and mask gradients from the backward kernel over
    the pixel-major columns' gradient ``[B, L, K*C]``; the input gradient in ``x``'s memory format.
    Returns ``(grad_x, grad_off, grad_mask, grad_w)``."""
    need_x, need_off, need_mask, need_w = needs[:4]
    B, C = x.shape[:2]
    O, _, kh, kw = weight.shape
    L = grad_out.shape[-2] * grad_out.shape[-1]
    geometry = [list(v) for v in geo]  # kernel, stride, padding, dilation
    g = grad_out.to(gd).permute(0, 2, 3, 1).reshape(B * L, O)  # [B*L, O]
    xk = _kernel_input(x)  # channels-last
    grad_x = grad_off = grad_mask = grad_w = None
    if need_w:
        cols = _COLUMNS_OP.get()(xk, offset, mask, *geometry, gd, True).view(B * L, -1)  # [B*L, K*C]
        grad_w = torch.mm(g.t(), cols).view(O, kh, kw, C).permute(0, 3, 1, 2)  # [O, C, kh, kw]
        grad_w = grad_w.to(weight.dtype)
    if need_x or need_off or need_mask:
        grad_cols = torch.mm(g, _pixel_major_weight(weight, gd)).view(B, L, -1)  # [B, L, K*C]
        gx, goff, gmask = op(grad_cols, xk, offset, mask, *geometry, need_x, True)
        fmt = torch.channels_last if xk is x else torch.contiguous_format  # x's own layout
        grad_x = gx.to(x.dtype, memory_format=fmt) if need_x else None  # one pass: cast (+ layout)
        grad_off = goff.to(offset.dtype) if need_off else None
        grad_mask = gmask.to(mask.dtype) if need_mask else None
    return grad_x, grad_off, grad_mask, grad_w


def _backward_sampled(g, x, offset, mask, weight, geo, gd, needs):
    """Sample again (as torchvision's im2col in backward), GEMM grads, then the native grid_sampler
    backward (input and grid grads) and the mask grad."""
    need_x, need_off, need_mask, need_w = needs[:4]
    B, C, H, W = x.shape
    K = geo.kernel[0] * geo.kernel[1]
    G = offset.shape[1] // (2 * K)
    Ho, Wo = offset.shape[-2:]
    grad_x = grad_off = grad_mask = grad_w = None
    xs = _sampling_input(x)
    Hs, Ws = xs.shape[-2:]
    grid = _grid(offset, geo, Hs, Ws, xs.dtype)  # [B*G, K*Ho, Wo, 2]
    sampled = _sample(xs, grid, G)  # [B*G, C/G, K*Ho, Wo]
    if need_w:
        grad_w = _grad_weight(g, _columns(sampled, mask, B, G, K, (Ho, Wo), gd), weight)
    if need_x or need_off or need_mask:
        grad_cols = _grad_columns(g, weight, gd).view(B, G, C // G, K, Ho, Wo)  # [B, G, C/G, K, Ho, Wo]
        if need_mask:  # products promote to the sampling dtype
            grad_mask = grad_cols * sampled.view(B, G, C // G, K, Ho, Wo)  # [B, G, C/G, K, Ho, Wo]
            grad_mask = grad_mask.sum(dim=2)  # [B, G, K, Ho, Wo]
            grad_mask = grad_mask.view(B, G * K, Ho, Wo).to(mask.dtype)
        del sampled
        if mask is None:
            grad_cols = grad_cols.to(xs.dtype)
        else:  # [B, G, C/G, K, Ho, Wo], one pass: product and cast
            grad_cols = grad_cols * mask.to(xs.dtype).reshape(B, G, 1, K, Ho, Wo)
    if need_x or need_off:
        grad_xs, grad_grid = torch.ops.aten.grid_sampler_2d_backward(
            grad_cols.view(B * G, C // G, K * Ho, Wo),
            xs.reshape(B * G, C // G, Hs, Ws),
            grid,
            _BILINEAR,
            _ZEROS,
            True,
            [need_x, need_off],
        )  # [B*G, C/G, Hs, Ws], [B*G, K*Ho, Wo, (x, y)]
        if need_x:
            grad_x = grad_xs.reshape(B, C, Hs, Ws)[:, :, :H, :W].to(x.dtype)  # [B, C, H, W]
        if need_off:
            grad_grid = grad_grid.reshape(B, G, K, Ho, Wo, 2)  # d/d(normalised x, y)
            grad_dy = grad_grid[..., 1] * (2.0 / (Hs - 1))  # [B, G, K, Ho, Wo] per pixel
            grad_dx = grad_grid[..., 0] * (2.0 / (Ws - 1))  # [B, G, K, Ho, Wo]
            grad_off = torch.stack((grad_dy, grad_dx), dim=3)  # [B, G, K, (dy, dx), Ho, Wo]
            grad_off = grad_off.view(B, 2 * G * K, Ho, Wo).to(offset.dtype)
    return grad_x, grad_off, grad_mask, grad_w


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
        gemm_dtype = torch.promote_types(input.dtype, weight.dtype)
    geo = _Geometry((kh, kw), stride, padding, dilation)
    with torch.autocast(device_type, enabled=False):
        return _SampledDeformConv.apply(input, offset, mask, weight, bias, geo, gemm_dtype)
