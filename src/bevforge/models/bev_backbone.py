"""BEVDet's BEV encoder: a ResNet-style BEV backbone (official ``CustomResNet``) + the ``FPN_LSS`` neck.

Shape letters: B batch, C channels, H/W BEV grid (``bev_h x bev_w``; level i of the backbone is
``H / 2^(i+1)`` with the official strides 2, 2, 2).

``BEVResNet``: per stage one BasicBlock with stride s whose shortcut is a bare 3x3 conv (stride s, with
bias, no norm: the official ``downsample=nn.Conv2d(c_in, c_out, 3, s, 1)``) followed by
``num_layers[i] - 1`` plain BasicBlocks; channels default to ``[2C, 4C, 8C]`` (``numC_Trans = C``).
``FPNLSS``: the deepest level upsampled x4 (bilinear, align_corners=True), concatenated after the
stride-2 level, two 3x3 conv-BN-ReLU to ``2 * out``, then x2 upsampling, 3x3 conv-BN-ReLU to ``out`` and
a 1x1 conv (with bias) back on the input BEV grid.
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
    """ResNet BasicBlock (conv3x3-BN-ReLU-conv3x3-BN + shortcut, ReLU), mmdet parameter layout."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int = 1, downsample: nn.Module | None = None
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class BEVResNet(nn.Module):
    """``[B, C_in, H, W]`` -> one map per stage: stage i is ``[B, channels[i], H / prod(strides[:i+1]), ...]``
    (official ``CustomResNet``)."""

    def __init__(
        self,
        in_channels: int,
        num_layers: tuple[int, ...] = (2, 2, 2),
        channels: tuple[int, ...] = (),
        strides: tuple[int, ...] = (2, 2, 2),
    ) -> None:
        super().__init__()
        if len(num_layers) != len(strides):
            raise ValueError(f"num_layers {num_layers} and strides {strides} need one entry per stage")
        if not channels:
            channels = tuple(in_channels * 2 ** (i + 1) for i in range(len(num_layers)))
        if len(channels) != len(num_layers):
            raise ValueError(f"channels {channels} need one entry per stage ({len(num_layers)})")
        self.out_channels = list(channels)
        stages = []
        c_in = in_channels
        for n, c_out, s in zip(num_layers, channels, strides, strict=True):
            blocks = [BasicBlock(c_in, c_out, s, downsample=nn.Conv2d(c_in, c_out, 3, stride=s, padding=1))]
            blocks += [BasicBlock(c_out, c_out) for _ in range(n - 1)]
            stages.append(nn.Sequential(*blocks))
            c_in = c_out
        self.layers = nn.Sequential(*stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        assert x.dim() == 4, f"BEV features must be [B, C, H, W], got {tuple(x.shape)}"
        feats = []
        for stage in self.layers:
            x = stage(x)
            feats.append(x)
        return feats


def _conv_bn_relu(c_in: int, c_out: int, kernel_size: int = 3) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


class FPNLSS(nn.Module):
    """Official ``FPN_LSS`` (input_feature_index (0, 2), scale 4, extra upsample 2, no lateral). The deep
    level is resized to the shallow one's size (= x4 for the official strides and a grid divisible by 8).

    ``feats``: the backbone stages; reads ``feats[low_index]`` ``[B, C_lo, H/2, W/2]`` and
    ``feats[high_index]`` ``[B, C_hi, H/8, W/8]``; ``in_channels = C_lo + C_hi``. Returns ``[B, out, H, W]``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int = 256,
        extra_upsample: int = 2,
        low_index: int = 0,
        high_index: int = 2,
    ) -> None:
        super().__init__()
        self.low_index, self.high_index = low_index, high_index
        mid = out_channels * 2
        self.conv = nn.Sequential(*_conv_bn_relu(in_channels, mid), *_conv_bn_relu(mid, mid))
        self.up2 = nn.Sequential(
            nn.Upsample(scale_factor=extra_upsample, mode="bilinear", align_corners=True),
            *_conv_bn_relu(mid, out_channels),
            nn.Conv2d(out_channels, out_channels, kernel_size=1),
        )
        self.out_channels = out_channels

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        low, high = feats[self.low_index], feats[self.high_index]  # [B, C_lo, h, w], [B, C_hi, h/4, w/4]
        high = nn.functional.interpolate(high, size=low.shape[-2:], mode="bilinear", align_corners=True)
        x = torch.cat([low, high], dim=1)  # [B, C_lo + C_hi, h, w]
        return self.up2(self.conv(x))  # [B, out, 2h, 2w]
