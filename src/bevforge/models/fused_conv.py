"""ResNet blocks with each frozen conv -> BN -> ReLU (-> residual add) as one cuDNN call
(``model.backbone.fuse_conv_relu``).

cuDNN convolutions take no bias: ``F.conv2d`` on CUDA adds it in a second pass over the output, a broadcast
that CUDA runs with its generic strided kernel (one per conv: 222 per BEVFormer-base training step, the
largest share of the 33 ms it spent in that kernel on an H200 at 9cdd050), and the ReLU and the residual add
are passes of their own. With the BN folded into the conv (``models/frozen_bn.py``), cuDNN's fused
convolutions do it all in the conv's epilogue: ``aten::cudnn_convolution_relu`` (conv -> bias -> ReLU) and
``aten::cudnn_convolution_add_relu`` (conv -> bias -> + z -> ReLU: a bottleneck's last conv with its
residual; the downsample conv then runs without its bias, which joins the last conv's).

They have no autograd formula. Where a gradient is needed, :class:`_FusedConvReLU` gives them the backward
of the ops they replace (ReLU's from its output, then ``aten::convolution_backward``): the same kernels
and the same saved tensors (the input, the weight, the output) as autograd's.

Used on CUDA with cuDNN, outside ``torch.compile`` (inductor fuses the bias and ReLU itself), exports,
traces and deterministic mode, for blocks whose every BN is frozen; elsewhere, and after the first failure
of a fused call (an unsupported configuration: a warning, then the plain ops for the rest of the process),
the plain blocks of ``models/frozen_bn.py``. A DCN conv (``ModulatedDeformConv2d``) runs as before, its
add and ReLU after it.

Shape letters: B* images, C channels, H/W pixels; O output channels.
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from bevforge.models.frozen_bn import (
    FoldCache,
    autocast_dtype,
    block_pairs,
    conv_bn,
    folded_conv,
    is_frozen,
    run_block,
)

#: why the fused cuDNN calls are off for this process (set by their first failure), else None
FUSED_DISABLED: str | None = None

Geometry = tuple[list[int], list[int], list[int], int]  # stride, padding, dilation, groups


def _cudnn_conv_relu(x, weight, bias, stride, padding, dilation, groups) -> torch.Tensor:
    """``relu(conv(x) + bias)``, one cuDNN call (output in the input's memory format)."""
    return torch.ops.aten.cudnn_convolution_relu(x, weight, bias, stride, padding, dilation, groups)


def _cudnn_conv_add_relu(x, weight, z, bias, stride, padding, dilation, groups) -> torch.Tensor:
    """``relu(conv(x) + z + bias)``, one cuDNN call."""
    alpha = 1.0  # z's weight
    return torch.ops.aten.cudnn_convolution_add_relu(
        x, weight, z, alpha, bias, stride, padding, dilation, groups
    )


class _FusedConvReLU(torch.autograd.Function):
    """``relu(conv(x, weight) + bias [+ z])`` as one cuDNN call, with the backward of the plain ops:
    ReLU's from the output (``threshold_backward``), then the conv's (``convolution_backward``); ``z``'s
    gradient is the ReLU's. Saves what autograd saves for them: ``x``, ``weight`` and the output."""

    @staticmethod
    def forward(ctx, x, weight, bias, z, geometry: Geometry):  # type: ignore[override]
        if z is None:
            out = _cudnn_conv_relu(x, weight, bias, *geometry)
        else:
            out = _cudnn_conv_add_relu(x, weight, z, bias, *geometry)
        ctx.save_for_backward(x, weight, out)
        ctx.geometry = geometry
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):  # type: ignore[override]
        x, weight, out = ctx.saved_tensors
        need_x, need_w, need_b, need_z = ctx.needs_input_grad[:4]
        stride, padding, dilation, groups = ctx.geometry
        grad = torch.ops.aten.threshold_backward(grad_out, out, 0)  # [B*, O, H', W']
        grad_x = grad_w = grad_b = None
        if need_x or need_w or need_b:
            bias_sizes = [weight.shape[0]] if need_b else None
            mask = [need_x, need_w, need_b]
            grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
                grad, x, weight, bias_sizes, stride, padding, dilation, False, [0, 0], groups, mask
            )
        return grad_x, grad_w, grad_b, grad if need_z else None, None


def _cudnn_usable(x: torch.Tensor) -> bool:
    """cuDNN runs ``x``'s convs, and nothing needs the plain ops: no ``torch.compile`` (inductor fuses the
    bias and ReLU itself), no export or trace, no deterministic mode (the fused calls pick any algorithm)."""
    if torch.compiler.is_compiling():  # first: under dynamo nothing else here is traced
        return False
    return (
        x.is_cuda
        and torch.version.hip is None
        and torch.backends.cudnn.enabled
        and torch.backends.cudnn.is_available()
        and not torch.jit.is_tracing()
        and not torch.onnx.is_in_onnx_export()
        and not torch.are_deterministic_algorithms_enabled()
    )


def _fusable(pairs: list[tuple[nn.Module, nn.BatchNorm2d]], x: torch.Tensor) -> bool:
    """The fused calls may run ``pairs`` on ``x``: not disabled, cuDNN usable, every BN frozen."""
    return FUSED_DISABLED is None and _cudnn_usable(x) and all(is_frozen(conv, bn) for conv, bn in pairs)


def _disable(error: RuntimeError) -> None:
    global FUSED_DISABLED
    FUSED_DISABLED = f"{type(error).__name__}: {error}".splitlines()[0]
    warnings.warn(
        f"model.backbone.fuse_conv_relu: cuDNN's fused conv + bias + ReLU failed ({FUSED_DISABLED}); "
        "running the plain convs for the rest of this process (set model.backbone.fuse_conv_relu=false "
        "to silence this)",
        stacklevel=3,
    )


def _folded(
    conv: nn.Module, bn: nn.BatchNorm2d, cache: FoldCache, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`folded_conv` with the weight in ``dtype`` (the fused calls take no autocast cast)."""
    weight, bias = folded_conv(conv, bn, cache, dtype)
    return weight.to(dtype), bias  # [O, C, k, k], [O]


def _plain_conv_relu(conv, bn, x, cache, z=None, z_bias=None) -> torch.Tensor:
    """What :func:`_conv_relu` computes, with the plain ops (a DCN; after a failure)."""
    out = conv_bn(conv, bn, x, cache)  # [B*, O, H', W']
    if z is not None:
        out += z if z_bias is None else z + z_bias.view(1, -1, 1, 1)
    return torch.relu_(out)


def _conv_relu(conv, bn, x, cache, dtype, z=None, z_bias=None) -> torch.Tensor:
    """``relu(bn(conv(x)) [+ z + z_bias])`` (``[B*, O, H', W']``) in one fused call (through
    :class:`_FusedConvReLU` where a gradient is needed); a DCN, and every conv after a failure of the
    fused calls (disabled from then on, with a warning), with the plain ops."""
    if not isinstance(conv, nn.Conv2d) or FUSED_DISABLED is not None:
        return _plain_conv_relu(conv, bn, x, cache, z, z_bias)
    assert conv.padding_mode == "zeros" and isinstance(conv.padding, tuple), conv.padding
    weight, bias = _folded(conv, bn, cache, dtype)
    if z_bias is not None:
        bias = bias + z_bias  # [O]: the downsample's bias, added in the same epilogue
    xc = x.to(dtype)
    zc = None if z is None else z.to(dtype)
    geometry: Geometry = (list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups)
    try:
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (xc, weight, bias, zc)):
            return _FusedConvReLU.apply(xc, weight, bias, zc, geometry)
        if zc is None:
            return _cudnn_conv_relu(xc, weight, bias, *geometry)
        return _cudnn_conv_add_relu(xc, weight, zc, bias, *geometry)
    except torch.OutOfMemoryError:
        raise
    except RuntimeError as e:  # an unsupported configuration: the plain ops from now on
        _disable(e)
        return _plain_conv_relu(conv, bn, x, cache, z, z_bias)


def conv_bn_relu(conv: nn.Module, bn: nn.BatchNorm2d, x: torch.Tensor, cache: FoldCache) -> torch.Tensor:
    """``relu(bn(conv(x)))`` (``[B*, O, H', W']``): one fused call where it may run, else the plain ops."""
    if _fusable([(conv, bn)], x):
        return _conv_relu(conv, bn, x, cache, autocast_dtype(x, conv))
    return torch.relu_(conv_bn(conv, bn, x, cache))


def run_block_fused(block: nn.Module, x: torch.Tensor, cache: FoldCache) -> torch.Tensor:
    """:func:`bevforge.models.frozen_bn.run_block` as fused calls where they may run: conv -> bias -> ReLU
    each, the last conv with the residual (the downsample conv's output without its bias, which joins the
    last conv's)."""
    pairs = block_pairs(block)
    all_pairs = pairs if block.downsample is None else [*pairs, tuple(block.downsample)]
    if not _fusable(all_pairs, x):
        return run_block(block, x, cache)
    dtype = autocast_dtype(x, pairs[0][0])
    out = x
    for conv, bn in pairs[:-1]:
        out = _conv_relu(conv, bn, out, cache, dtype)
    identity, identity_bias = x, None
    if block.downsample is not None:
        ds_conv, ds_bn = block.downsample
        weight, identity_bias = _folded(ds_conv, ds_bn, cache, dtype)
        identity = F.conv2d(x.to(dtype), weight, None, ds_conv.stride, ds_conv.padding, ds_conv.dilation)
    conv, bn = pairs[-1]
    return _conv_relu(conv, bn, out, cache, dtype, z=identity, z_bias=identity_bias)


def fused_block_fn(block: nn.Module, cache: FoldCache) -> functools.partial:
    """``run_block_fused`` bound to one block: what the backbone calls (or checkpoints)."""
    return functools.partial(run_block_fused, block, cache=cache)


__all__ = ["conv_bn_relu", "fused_block_fn", "run_block_fused"]
