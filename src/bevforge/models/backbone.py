"""ResNet image backbone over torchvision's ResNet, with frozen BN/stages and optional DCNv2.

Shape letters: B* images (batch x frames x cameras flattened), C channels, H/W pixels.

Parameter names are torchvision's, which are also mmdet's (``conv1``, ``bn1``, ``layer{1..4}.{j}.conv2``,
``downsample.0/1``); a DCNv2 conv keeps ``weight`` and adds ``conv_offset`` exactly as mmcv's
``ModulatedDeformConv2dPack``, so official checkpoints load without renaming.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchvision.models.resnet import Bottleneck

from bevforge.models.frozen_bn import FoldCache, block_fn, conv_bn
from bevforge.models.fused_conv import conv_bn_relu, fused_block_fn
from bevforge.ops.dcn import deform_conv2d_sampled

_BUILDERS = {
    18: (torchvision.models.resnet18, "ResNet18_Weights"),
    34: (torchvision.models.resnet34, "ResNet34_Weights"),
    50: (torchvision.models.resnet50, "ResNet50_Weights"),
    101: (torchvision.models.resnet101, "ResNet101_Weights"),
}
#: DCNv2 implementations: torchvision's op (fp32 im2col + GEMM, also under autocast) or the
#: grid_sample + batched GEMM one of ``ops/dcn`` (same function; the GEMM in the autocast dtype)
DCN_IMPLS = ("torchvision", "sampled")


def _check_dcn_impl(impl: str) -> None:
    if impl not in DCN_IMPLS:
        raise ValueError(
            f"model.backbone.dcn_impl={impl!r} is not a DCN implementation: use one of {DCN_IMPLS}"
        )


class ModulatedDeformConv2d(nn.Module):
    """DCNv2 (modulated deformable conv) with its offset/mask predictor, mmcv layout.

    ``conv_offset`` predicts ``3 * k * k`` channels: the first ``2 k k`` are (dy, dx) offsets per kernel
    tap (interleaved, as mmcv and ``torchvision.ops.deform_conv2d``), the last ``k k`` the mask logits.
    ``conv_offset`` starts at zero (as mmcv): zero offsets and masks sigmoid(0) = 0.5, i.e. half the
    plain conv. ``impl`` picks the op (:data:`DCN_IMPLS`); both take the same parameters and state dict.
    ``pad_offset_channels``: ``conv_offset`` runs with its weight zero-padded to a multiple of 8 output
    channels (27 -> 32 for 3x3; tensor cores tile channels by 8) and the padding sliced off: the same
    function, parameters and state dict (``model.backbone.dcn_offset_pad``).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        dilation: int = 1,
        bias: bool = False,
        impl: str = "torchvision",
        pad_offset_channels: bool = False,
    ) -> None:
        super().__init__()
        _check_dcn_impl(impl)
        self.impl = impl
        self.offset_pad = (-3 * kernel_size * kernel_size) % 8 if pad_offset_channels else 0
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)
        taps = kernel_size * kernel_size
        self.conv_offset = nn.Conv2d(
            in_channels, 3 * taps, kernel_size, stride=stride, padding=padding, dilation=dilation, bias=True
        )
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    @classmethod
    def from_conv(
        cls, conv: nn.Conv2d, impl: str = "torchvision", pad_offset_channels: bool = False
    ) -> ModulatedDeformConv2d:
        assert conv.groups == 1, "grouped convs are not supported by the DCN replacement"
        dcn = cls(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size[0],
            stride=conv.stride[0],
            padding=conv.padding[0],
            dilation=conv.dilation[0],
            bias=conv.bias is not None,
            impl=impl,
            pad_offset_channels=pad_offset_channels,
        )
        with torch.no_grad():
            dcn.weight.copy_(conv.weight)
        return dcn

    def extra_repr(self) -> str:
        o, c, k, _ = self.weight.shape
        return f"{c}, {o}, kernel_size={k}, stride={self.stride}, padding={self.padding}, impl={self.impl!r}"

    def _offsets_and_mask_logits(self, x: torch.Tensor) -> torch.Tensor:
        """``conv_offset(x)``: ``[B*, 3*k*k, H', W']``, through a zero-padded weight with ``offset_pad``."""
        conv = self.conv_offset
        if not self.offset_pad:
            return conv(x)
        weight = F.pad(conv.weight, (0, 0, 0, 0, 0, 0, 0, self.offset_pad))  # [3kk + pad, C, k, k]
        bias = F.pad(conv.bias, (0, self.offset_pad))
        out = F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation)  # [B*, 3kk + pad, H', W']
        return out[:, : conv.out_channels]

    def forward(
        self, x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``[B*, C, H, W]`` -> ``[B*, O, H', W']``; ``weight``/``bias`` replace the module's own (a frozen BN
        folded in, ``models/frozen_bn.py``)."""
        out = self._offsets_and_mask_logits(x)  # [B*, 3*k*k, H', W']
        taps = out.shape[1] // 3
        offset, mask = out[:, : 2 * taps], out[:, 2 * taps :].sigmoid()
        deform_conv2d = deform_conv2d_sampled if self.impl == "sampled" else torchvision.ops.deform_conv2d
        return deform_conv2d(
            x,
            offset,
            self.weight if weight is None else weight,
            self.bias if bias is None else bias,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            mask=mask,
        )


class ResNetBackbone(nn.Module):
    """torchvision ResNet without avgpool/fc; returns the ``out_indices`` stages (0..3 = C2..C5).

    ``style="caffe"`` puts the stride of a bottleneck in its first 1x1 conv (mmdet caffe style, used by
    the official FCOS3D-initialised R101-DCN of BEVFormer small/base); torchvision is ``"pytorch"``.
    ``dcn_impl`` picks the op of the ``dcn_stages`` convs (:data:`DCN_IMPLS`). ``fold_bn``: each frozen BN
    (eval mode, affine not training: ``norm_eval``, frozen stages) runs folded into the conv before it
    (``models/frozen_bn.py``: same function and state dict, less activation memory and no BN backward);
    ``False`` runs torchvision's blocks. ``fuse_conv_relu`` (with ``fold_bn``): on CUDA each frozen conv ->
    BN -> ReLU (-> residual) is one cuDNN call (``models/fused_conv.py``).
    """

    def __init__(
        self,
        depth: int = 50,
        out_indices: tuple[int, ...] = (3,),
        frozen_stages: int = 1,
        norm_eval: bool = True,
        dcn_stages: tuple[bool, ...] = (False, False, False, False),
        pretrained: str = "",
        with_cp: bool = False,
        style: str = "pytorch",
        dcn_impl: str = "torchvision",
        fold_bn: bool = True,
        dcn_offset_pad: bool = False,
        fuse_conv_relu: bool = False,
    ) -> None:
        super().__init__()
        if depth not in _BUILDERS:
            raise ValueError(f"ResNet depth {depth} is not supported; use one of {sorted(_BUILDERS)}")
        if not out_indices or any(i not in (0, 1, 2, 3) for i in out_indices):
            raise ValueError(f"out_indices {out_indices} must be a non-empty subset of 0..3 (C2..C5)")
        if len(dcn_stages) != 4:
            raise ValueError(f"dcn_stages needs 4 booleans (one per stage), got {dcn_stages}")
        if style not in ("pytorch", "caffe"):
            raise ValueError(f"style {style!r}: use 'pytorch' or 'caffe'")
        _check_dcn_impl(dcn_impl)
        if fuse_conv_relu and not fold_bn:
            raise ValueError(
                "model.backbone.fuse_conv_relu needs model.backbone.fold_bn=true (it fuses the folded BN's "
                "bias into the conv): set fold_bn=true or fuse_conv_relu=false"
            )
        builder, _ = _BUILDERS[depth]
        net = builder(weights=None)
        self.conv1, self.bn1, self.relu, self.maxpool = net.conv1, net.bn1, net.relu, net.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.depth = depth
        self.out_indices = tuple(out_indices)
        self.frozen_stages = frozen_stages
        self.norm_eval = norm_eval
        self.with_cp = with_cp
        self.fold_bn = fold_bn
        self.fuse_conv_relu = fuse_conv_relu
        self._fold_cache = FoldCache()
        expansion = 4 if depth >= 50 else 1
        self.out_channels: list[int] = [64 * expansion * 2**i for i in self.out_indices]
        for stage, layer in enumerate(self.stages):
            for block in layer:
                if style == "caffe" and isinstance(block, Bottleneck):
                    block.conv1.stride, block.conv2.stride = block.conv2.stride, (1, 1)
                if dcn_stages[stage]:
                    block.conv2 = ModulatedDeformConv2d.from_conv(
                        block.conv2, impl=dcn_impl, pad_offset_channels=dcn_offset_pad
                    )
        if pretrained:
            self.load_pretrained(pretrained)
        for i in range(max(self.out_indices) + 1, 4):  # stages past the last output never run: drop them
            setattr(self, f"layer{i + 1}", nn.Sequential())
        if norm_eval:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.requires_grad_(False)
                    m.bias.requires_grad_(False)
        self._freeze_stages()

    @property
    def stages(self) -> list[nn.Sequential]:
        return [self.layer1, self.layer2, self.layer3, self.layer4]

    def _frozen_modules(self) -> list[nn.Module]:
        if self.frozen_stages < 0:
            return []
        return [self.conv1, self.bn1, *self.stages[: self.frozen_stages]]

    def _freeze_stages(self) -> None:
        for m in self._frozen_modules():
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> ResNetBackbone:
        """Frozen stages and (with ``norm_eval``) every BN stay in eval mode, as mmdet."""
        super().train(mode)
        self._freeze_stages()
        if mode and self.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def load_pretrained(self, pretrained: str) -> None:
        """``"torchvision"``: ImageNet weights from the local torch hub cache (never downloaded);
        otherwise a path to a state dict (torchvision, mmdet or full BEVFormer checkpoint keys)."""
        if pretrained == "torchvision":
            path = torchvision_weights_path(self.depth)
            if not path.exists():
                raise FileNotFoundError(
                    f"pretrained='torchvision' needs {path.name} in the local torch cache ({path.parent}); "
                    f"bevforge never downloads weights: copy the file there (or set TORCH_HOME), or set "
                    f"model.backbone.pretrained='' for a random init"
                )
        else:
            path = Path(pretrained)
            if not path.exists():
                raise FileNotFoundError(
                    f"backbone checkpoint {path} not found; fix model.backbone.pretrained "
                    f"('' random, 'torchvision', or a path to a state dict)"
                )
        state = load_state_dict_file(path)
        state = backbone_keys(state)
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if ".conv_offset." not in k and not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise ValueError(
                f"backbone checkpoint {path} does not fit ResNet-{self.depth}: "
                f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}; "
                "check model.backbone.depth"
            )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[B*, 3, H, W]`` -> the selected stages; stage i is ``[B*, C_i, H/2^(i+2), W/2^(i+2)]``."""
        assert x.dim() == 4 and x.shape[1] == 3, x.shape
        if self.fold_bn:  # frozen (eval-mode) BNs folded into their convs: models/frozen_bn.py
            if self.fuse_conv_relu:  # one cuDNN call where it may run: models/fused_conv.py
                x = conv_bn_relu(self.conv1, self.bn1, x, self._fold_cache)  # [B*, 64, H/2, W/2]
            else:
                x = torch.relu_(conv_bn(self.conv1, self.bn1, x, self._fold_cache))  # [B*, 64, H/2, W/2]
            x = self.maxpool(x)  # [B*, 64, H/4, W/4]
        else:
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # [B*, 64, H/4, W/4]
        outs: list[torch.Tensor] = []
        for i, layer in enumerate(self.stages):
            # checkpoint only blocks that train (frozen stages keep no activations for backward anyway);
            # the blocks draw no random numbers: no RNG state to keep (which a CUDA-graph capture could
            # not read: so train.frame_graph checkpoints them too)
            use_cp = self.with_cp and self.training and torch.is_grad_enabled() and i >= self.frozen_stages
            for block in layer:
                if not self.fold_bn:
                    run = block
                else:
                    run = (fused_block_fn if self.fuse_conv_relu else block_fn)(block, self._fold_cache)
                x = checkpoint(run, x, use_reentrant=False, preserve_rng_state=False) if use_cp else run(x)
            if i in self.out_indices:
                outs.append(x)
            if i >= max(self.out_indices):
                break
        return outs


def torchvision_weights_path(depth: int) -> Path:
    """Where torchvision keeps the ImageNet V1 weights of ResNet-``depth`` (the official tiny init)."""
    _, enum_name = _BUILDERS[depth]
    url = getattr(torchvision.models, enum_name).IMAGENET1K_V1.url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.pth``/``.pt`` (``weights_only``) or ``.safetensors``; unwraps ``state_dict``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a pickle with custom classes, a truncated file...
        raise ValueError(
            f"cannot read {path} as a weights-only state dict ({e}); re-save it as tensors"
        ) from e
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, expected a state dict of tensors")
    return obj


def backbone_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The backbone entries of a torchvision, mmdet (``backbone.*``) or BEVFormer/FCOS3D
    (``img_backbone.*``) state dict, prefixes (and ``module.``) stripped; ``fc`` dropped."""
    keys = [k.removeprefix("module.") for k in state]
    prefix = next((p for p in ("img_backbone.", "backbone.") if any(k.startswith(p) for k in keys)), "")
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        k = key.removeprefix("module.")
        if not k.startswith(prefix):
            continue  # neck / head entries of a full detector checkpoint
        k = k[len(prefix) :]
        if not k.startswith("fc."):
            out[k] = value
    return out


__all__ = ["DCN_IMPLS", "ModulatedDeformConv2d", "ResNetBackbone", "torchvision_weights_path"]
