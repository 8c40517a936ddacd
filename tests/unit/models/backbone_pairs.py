"""Two ResNet backbones that differ in one speed option only (same weights): the option's tests compare
them. The BN statistics and affines are set far from the identity, so a wrong fold cannot pass."""

from __future__ import annotations

import torch
from torch import nn

from bevforge.models.backbone import ResNetBackbone


def randomise_bn(net: nn.Module, seed: int = 0) -> None:
    """Every BN of ``net``: running statistics and affine far from identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.2)
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.3)


def backbone_pair(option: str, **kwargs) -> tuple[ResNetBackbone, ResNetBackbone]:
    """``(ResNetBackbone(option=True), ResNetBackbone(option=False))`` with the same (randomised) state."""
    torch.manual_seed(0)
    on = ResNetBackbone(**{option: True}, **kwargs)
    randomise_bn(on)
    off = ResNetBackbone(**{option: False}, **kwargs)
    off.load_state_dict(on.state_dict())
    return on, off
