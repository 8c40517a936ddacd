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

Shape letters: B* images, C channels, H/W pixels; O output channels.
"""

from __future__ import annotations

import functools
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
            scale = entry.scale.to(w.dtype).view(-1, 1, 1, 1)  # [O, 1, 1, 1]
            if torch.jit.is_tracing():  # an exporter's trace (ONNX): ``out=`` does not export
                weight = (w * scale).to(dtype)  # [O, C, k, k]
            else:
                # one kernel: the product rounded to ``dtype`` as it is stored (bitwise the two lines
                # above), in the weight's memory format (channels-last convs keep channels-last weights)
                weight = torch.mul(w, scale, out=torch.empty_like(w, dtype=dtype))  # [O, C, k, k]
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


def autocast_dtype(x: torch.Tensor, conv: nn.Module) -> torch.dtype:
    """The dtype ``conv`` runs in on ``x``: autocast's, else its weight's."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else conv.weight.dtype


def folded_conv(
    conv: nn.Module, bn: nn.BatchNorm2d, cache: FoldCache, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(weight [O, C, k, k], bias [O])`` of a frozen conv -> BN: the cached fold in ``dtype``, or, where
    the conv weight trains, its product with the BN scale in the graph (in the weight's dtype)."""
    scale, bias, weight = cache.folded(conv, bn, dtype)
    if weight is None:  # the conv weight trains: the product stays in the graph
        weight = conv.weight * scale.to(conv.weight.dtype).view(-1, 1, 1, 1)  # [O, C, k, k]
    return weight, bias


def conv_bn(conv: nn.Module, bn: nn.BatchNorm2d, x: torch.Tensor, cache: FoldCache) -> torch.Tensor:
    """``bn(conv(x))`` (``[B*, O, H', W']``); a frozen BN folded into the conv's weight and bias."""
    if not is_frozen(conv, bn):
        return bn(conv(x))
    weight, bias = folded_conv(conv, bn, cache, autocast_dtype(x, conv))
    if isinstance(conv, nn.Conv2d):
        assert conv.padding_mode == "zeros", conv.padding_mode
        return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    return conv(x, weight=weight, bias=bias)  # ModulatedDeformConv2d


def block_pairs(block: nn.Module) -> list[tuple[nn.Module, nn.BatchNorm2d]]:
    """The (conv, BN) pairs of a torchvision ``Bottleneck`` / ``BasicBlock`` in order (no downsample)."""
    if isinstance(block, Bottleneck):
        return [(block.conv1, block.bn1), (block.conv2, block.bn2), (block.conv3, block.bn3)]
    if isinstance(block, BasicBlock):
        return [(block.conv1, block.bn1), (block.conv2, block.bn2)]
    raise TypeError(f"run_block takes torchvision ResNet blocks, not {type(block).__name__}")


def run_block(block: nn.Module, x: torch.Tensor, cache: FoldCache) -> torch.Tensor:
    """torchvision's ``Bottleneck`` / ``BasicBlock`` forward with :func:`conv_bn` for each conv -> BN."""
    pairs = block_pairs(block)
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


def block_fn(block: nn.Module, cache: FoldCache) -> functools.partial:
    """``run_block`` bound to one block: what the backbone calls (or checkpoints)."""
    return functools.partial(run_block, block, cache=cache)


__all__ = [
    "FoldCache",
    "autocast_dtype",
    "block_fn",
    "block_pairs",
    "bn_scale_shift",
    "conv_bn",
    "fold",
    "folded_conv",
    "is_frozen",
    "run_block",
]
