"""ResNet blocks run with their frozen BatchNorms folded into the convs before them.

A BN in eval mode is a per-channel affine map ``y = x * scale + shift`` with
``scale = weight / sqrt(running_var + eps)`` and ``shift = bias - running_mean * scale``, so conv -> BN is one
conv with weight ``W * scale[:, None, None, None]`` and bias ``shift``. Same function (to rounding), same
parameters and state dict. What it changes in training: autograd no longer keeps the conv output for the
BN's backward (one activation per conv of every trainable block: half the backbone's saved activations,
the largest share of a BEVFormer-base step's, benchmarks/README.md), and the activation-sized BN backward
pass becomes a weight-sized product for the conv's weight gradient. BEVFormer tiny/small/base keep every
BN frozen (``norm_eval``), so their whole backbone runs this way; a BN that trains (statistics or affine:
BEVFormer-debug, BEVDet) runs as a BN (:func:`is_frozen`).

Launches: the folded bias (and a frozen conv's folded weight) is cached in the dtype the conv runs in
(autocast's or the weight's), so a frozen conv dispatches only the conv and a trainable one its weight
product and autocast's cast of it, where the BN cost one activation-sized pass.

``fuse`` (``model.backbone.fuse_conv_relu``): where no autograd graph is needed (the history pass,
inference, the frozen stages of a training step) on CUDA, each conv -> bias -> ReLU is one cuDNN call
(``aten::cudnn_convolution_relu``) and a bottleneck's last conv -> bias -> residual add -> ReLU another
(``cudnn_convolution_add_relu``, the downsample's bias merged into it). cuDNN convolutions take no bias:
``F.conv2d`` adds it in a second pass over the output, a broadcast CUDA runs with its generic strided kernel
(222 of them per BEVFormer-base step, the largest share of its 33 ms in that kernel on an H200), then the
ReLU and the residual add are passes of their own.

Shape letters: B* images, C channels, H/W pixels; O output channels.
"""

from __future__ import annotations

import functools
import warnings
import weakref

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck


def _key(tensors: tuple[torch.Tensor, ...]) -> tuple[tuple[int, int], ...]:
    """What tells a cached fold is stale: each source's storage address and version. An address catches
    what a version does not (``module.to()`` swaps a Parameter's data, keeping the object and its version);
    an entry keeps its sources' storages alive, so a new storage cannot reuse a cached address."""
    return tuple((t.data_ptr(), t._version) for t in tensors)


class _Fold:
    """One conv -> BN fold in one dtype: scale and bias from the BN (and the conv's bias), and the folded
    weight from the conv's weight, each with the :func:`_key` of the tensors it was computed from and
    detached aliases of them (their storages stay alive while the entry does)."""

    __slots__ = ("alive", "stamp", "eps", "dtype", "scale", "bias", "weight_alive", "weight_stamp", "weight")

    def __init__(self, sources, eps, dtype, scale, bias) -> None:
        self.alive, self.stamp = tuple(t.detach() for t in sources), _key(sources)
        self.eps, self.dtype, self.scale, self.bias = eps, dtype, scale, bias
        self.weight_alive: tuple[torch.Tensor, ...] = ()
        self.weight_stamp: tuple[tuple[int, int], ...] = ()
        self.weight: torch.Tensor | None = None


def bn_scale_shift(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """The eval-mode BN as ``x * scale + shift`` (both ``[C]``, in the BN's dtype)."""
    assert bn.running_mean is not None and bn.running_var is not None, "a BN without running statistics"
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    return scale, shift


def fold(
    conv: nn.Module, bn: nn.BatchNorm2d, dtype: torch.dtype, with_weight: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``(scale [O], bias [O], weight [O, C, k, k] or None)`` of conv -> BN; bias and weight in ``dtype``."""
    scale, shift = bn_scale_shift(bn)
    bias = shift if conv.bias is None else shift + conv.bias * scale
    weight = (conv.weight * scale.to(conv.weight.dtype).view(-1, 1, 1, 1)).to(dtype) if with_weight else None
    return scale, bias.to(dtype), weight


class FoldCache:
    """Each frozen conv -> BN's fold, computed once and again only when one of its sources changes: in
    place (``load_state_dict``: the tensor's version moves) or moved (``.to()``: new storage). An entry
    keeps its sources' storages alive (:func:`_key`), so a new storage cannot reuse an address, and dies
    with its BN (weak keys). Only tensors that do not require grad are cached from: a fused optimizer step
    updates parameters in place without moving their versions, so a trained tensor's fold is computed at each
    call (the BN's affine or the conv's bias training: all of it; the conv's weight training: the weight
    product, in the graph). Nothing is cached under ``torch.compile`` (it fuses the arithmetic) or from
    inference tensors (no version counter), and what is cached is made outside inference mode (a later
    training step saves a frozen conv's folded weight for backward). Not a module: nothing of it is in
    the state dict."""

    def __init__(self) -> None:
        self._entries: weakref.WeakKeyDictionary[nn.Module, _Fold] = weakref.WeakKeyDictionary()

    # a copied or pickled model starts with an empty cache (weak references do not pickle; a copy's
    # entries would be keyed by the original's BNs)
    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self.__init__()

    def __deepcopy__(self, memo: dict) -> FoldCache:
        return FoldCache()

    def folded(
        self, conv: nn.Module, bn: nn.BatchNorm2d, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(scale, bias, weight)`` as :func:`fold`; ``weight`` is None where the conv weight needs a
        gradient (the caller multiplies, so autograd sees it)."""
        w = conv.weight
        weight_grad = torch.is_grad_enabled() and w.requires_grad
        bn_tensors = (conv.bias, bn.weight, bn.bias, bn.running_mean, bn.running_var)
        sources = tuple(t for t in bn_tensors if t is not None)
        if (
            torch.compiler.is_compiling()
            or any(t.requires_grad for t in sources)
            or any(t.is_inference() for t in (*sources, w))
        ):
            return fold(conv, bn, dtype, with_weight=not weight_grad)
        entry = self._entries.get(bn)
        if not (
            entry is not None
            and entry.stamp == _key(sources)
            and entry.eps == bn.eps
            and entry.dtype == dtype
        ):
            with torch.inference_mode(False), torch.no_grad():  # kept: never an inference tensor
                scale, bias, _ = fold(conv, bn, dtype, with_weight=False)
            entry = self._entries[bn] = _Fold(sources, bn.eps, dtype, scale, bias)
        if weight_grad:
            return entry.scale, entry.bias, None
        if entry.weight is not None and entry.weight_stamp == _key((w,)):
            return entry.scale, entry.bias, entry.weight
        with torch.inference_mode(False), torch.no_grad():
            weight = (w * entry.scale.to(w.dtype).view(-1, 1, 1, 1)).to(dtype)  # [O, C, k, k]
        if not w.requires_grad:  # frozen: kept (a trained weight moves at every step, unseen by versions)
            entry.weight_alive, entry.weight_stamp = (w.detach(),), _key((w,))
            entry.weight = weight
        return entry.scale, entry.bias, weight


def is_frozen(conv: nn.Module, bn: nn.BatchNorm2d) -> bool:
    """The BN uses its running statistics (eval mode) and neither its affine nor the conv's bias trains:
    its fold depends on the conv weight alone. A BN that trains runs as a BN, in inference too (its fold
    would be arithmetic at every call: a fused optimizer step moves no tensor version, so no cache)."""
    affine = (t for t in (conv.bias, bn.weight, bn.bias) if t is not None)
    return not bn.training and not any(t.requires_grad for t in affine)


def _autocast_dtype(x: torch.Tensor, conv: nn.Module) -> torch.dtype:
    """The dtype ``conv`` runs in on ``x``: autocast's, else its weight's."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else conv.weight.dtype


def conv_bn(conv: nn.Module, bn: nn.BatchNorm2d, x: torch.Tensor, cache: FoldCache) -> torch.Tensor:
    """``bn(conv(x))`` (``[B*, O, H', W']``); a frozen BN folded into the conv's weight and bias."""
    if not is_frozen(conv, bn):
        return bn(conv(x))
    scale, bias, weight = cache.folded(conv, bn, _autocast_dtype(x, conv))
    if weight is None:  # the conv weight trains: the product stays in the graph
        weight = conv.weight * scale.to(conv.weight.dtype).view(-1, 1, 1, 1)  # [O, C, k, k]
    if isinstance(conv, nn.Conv2d):
        assert conv.padding_mode == "zeros", conv.padding_mode
        return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    return conv(x, weight=weight, bias=bias)  # ModulatedDeformConv2d


#: why the fused cuDNN calls are off for this process (set by their first failure), else None
FUSED_DISABLED: str | None = None


def _cudnn_conv_relu(x, weight, bias, stride, padding, dilation, groups) -> torch.Tensor:
    """``relu(conv(x) + bias)``, one cuDNN call (output in the input's memory format)."""
    return torch.ops.aten.cudnn_convolution_relu(x, weight, bias, stride, padding, dilation, groups)


def _cudnn_conv_add_relu(x, weight, z, bias, stride, padding, dilation, groups) -> torch.Tensor:
    """``relu(conv(x) + z + bias)``, one cuDNN call."""
    alpha = 1.0  # z's weight
    return torch.ops.aten.cudnn_convolution_add_relu(
        x, weight, z, alpha, bias, stride, padding, dilation, groups
    )


def _cudnn_usable(x: torch.Tensor) -> bool:
    """cuDNN runs ``x``'s convs, and nothing needs the plain ops: no ``torch.compile`` (inductor fuses the
    bias and ReLU itself), no export or trace, no deterministic mode (the fused calls pick any algorithm)."""
    return (
        x.is_cuda
        and torch.version.hip is None
        and torch.backends.cudnn.enabled
        and torch.backends.cudnn.is_available()
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
        and not torch.onnx.is_in_onnx_export()
        and not torch.are_deterministic_algorithms_enabled()
    )


def _fusable(
    modules: list[nn.Module], pairs: list[tuple[nn.Module, nn.BatchNorm2d]], x: torch.Tensor
) -> bool:
    """The fused calls may run ``pairs`` on ``x``: cuDNN usable, every BN frozen (folded), and no autograd
    graph needed (no grad mode, or neither ``x`` nor a parameter of ``modules`` requires grad: the
    fused calls have no backward)."""
    if FUSED_DISABLED is not None or not _cudnn_usable(x):
        return False
    if not all(is_frozen(conv, bn) for conv, bn in pairs):
        return False
    return not torch.is_grad_enabled() or not (
        x.requires_grad or any(p.requires_grad for m in modules for p in m.parameters())
    )


def _disable_fused(error: RuntimeError) -> None:
    global FUSED_DISABLED
    FUSED_DISABLED = f"{type(error).__name__}: {error}".splitlines()[0]
    warnings.warn(
        f"model.backbone.fuse_conv_relu: cuDNN's fused conv + bias + ReLU failed ({FUSED_DISABLED}); "
        "running the plain convs for the rest of this process (set model.backbone.fuse_conv_relu=false "
        "to silence this)",
        stacklevel=3,
    )


def _folded_conv(conv: nn.Module, bn: nn.BatchNorm2d, cache: FoldCache, dtype: torch.dtype):
    """``(weight, bias)`` of a frozen conv -> BN in ``dtype`` (the cache's; no autograd graph here)."""
    _, bias, weight = cache.folded(conv, bn, dtype)
    if weight is None:  # grad mode with a weight that requires grad: _fusable ruled it out
        raise AssertionError("a fused conv needs a folded weight without gradient")
    return weight, bias


def _fused_conv_relu(conv, bn, x, cache, dtype, z=None, z_bias=None) -> torch.Tensor:
    """``relu(bn(conv(x)) [+ z + z_bias])`` (``[B*, O, H', W']``) through the fused cuDNN calls; a DCN (not
    an ``nn.Conv2d``) runs as :func:`conv_bn`, then the add and ReLU."""
    if not isinstance(conv, nn.Conv2d):
        out = conv_bn(conv, bn, x, cache)
        if z is not None:
            out += z if z_bias is None else z + z_bias.view(1, -1, 1, 1)
        return torch.relu_(out)
    assert conv.padding_mode == "zeros" and isinstance(conv.padding, tuple), conv.padding
    weight, bias = _folded_conv(conv, bn, cache, dtype)
    geometry = (list(conv.stride), list(conv.padding), list(conv.dilation), conv.groups)
    if z is None:
        return _cudnn_conv_relu(x.to(dtype), weight, bias, *geometry)
    if z_bias is not None:
        bias = bias + z_bias  # [O]: the downsample's bias, added in the same epilogue
    return _cudnn_conv_add_relu(x.to(dtype), weight, z.to(dtype), bias, *geometry)


def conv_bn_relu(
    conv: nn.Module, bn: nn.BatchNorm2d, x: torch.Tensor, cache: FoldCache, fuse: bool = False
) -> torch.Tensor:
    """``relu(bn(conv(x)))``: one fused cuDNN call with ``fuse`` where it may run (:func:`_fusable`)."""
    if fuse and _fusable([conv, bn], [(conv, bn)], x):
        try:
            return _fused_conv_relu(conv, bn, x, cache, _autocast_dtype(x, conv))
        except RuntimeError as e:  # an unsupported configuration: plain ops from now on
            _disable_fused(e)
    return torch.relu_(conv_bn(conv, bn, x, cache))


def _block_pairs(block: nn.Module) -> list[tuple[nn.Module, nn.BatchNorm2d]]:
    if isinstance(block, Bottleneck):
        return [(block.conv1, block.bn1), (block.conv2, block.bn2), (block.conv3, block.bn3)]
    if isinstance(block, BasicBlock):
        return [(block.conv1, block.bn1), (block.conv2, block.bn2)]
    raise TypeError(f"run_block takes torchvision ResNet blocks, not {type(block).__name__}")


def _run_block_fused(block: nn.Module, pairs, x: torch.Tensor, cache: FoldCache) -> torch.Tensor:
    """:func:`run_block` as fused cuDNN calls: conv -> bias -> ReLU each, the last conv with the residual
    (the downsample conv's output without its bias, which joins the last conv's)."""
    dtype = _autocast_dtype(x, pairs[0][0])
    out = x
    for conv, bn in pairs[:-1]:
        out = _fused_conv_relu(conv, bn, out, cache, dtype)
    identity, identity_bias = x, None
    if block.downsample is not None:
        ds_conv, ds_bn = block.downsample
        weight, identity_bias = _folded_conv(ds_conv, ds_bn, cache, dtype)
        identity = F.conv2d(x.to(dtype), weight, None, ds_conv.stride, ds_conv.padding, ds_conv.dilation)
    conv, bn = pairs[-1]
    return _fused_conv_relu(conv, bn, out, cache, dtype, z=identity, z_bias=identity_bias)


def run_block(block: nn.Module, x: torch.Tensor, cache: FoldCache, fuse: bool = False) -> torch.Tensor:
    """torchvision's ``Bottleneck`` / ``BasicBlock`` forward with :func:`conv_bn` for each conv -> BN;
    with ``fuse``, as fused cuDNN calls where they may run (:func:`_fusable`)."""
    pairs = _block_pairs(block)
    if fuse:
        all_pairs = pairs if block.downsample is None else [*pairs, tuple(block.downsample)]
        if _fusable([block], all_pairs, x):
            try:
                return _run_block_fused(block, pairs, x, cache)
            except RuntimeError as e:  # an unsupported configuration: plain ops from now on
                _disable_fused(e)
    out = x
    for i, (conv, bn) in enumerate(pairs):
        out = conv_bn(conv, bn, out, cache)
        if i < len(pairs) - 1:
            out = torch.relu_(out)  # the conv's backward does not need its output
    if block.downsample is not None:
        ds_conv, ds_bn = block.downsample  # torchvision: Sequential(1x1 conv, BN)
        identity = conv_bn(ds_conv, ds_bn, x, cache)
    else:
        identity = x
    out += identity
    return torch.relu_(out)


def block_fn(block: nn.Module, cache: FoldCache, fuse: bool = False) -> functools.partial:
    """``run_block`` bound to one block: what the backbone calls (or checkpoints)."""
    return functools.partial(run_block, block, cache=cache, fuse=fuse)


__all__ = [
    "FoldCache",
    "block_fn",
    "bn_scale_shift",
    "conv_bn",
    "conv_bn_relu",
    "fold",
    "is_frozen",
    "run_block",
]
