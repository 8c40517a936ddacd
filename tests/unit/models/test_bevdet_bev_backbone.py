"""BEVDet's BEV encoder: CustomResNet stages and the FPN-LSS neck (shapes, official layout)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bevforge.models.bev_backbone import FPNLSS, BEVResNet


def test_bev_resnet_official_channels_strides_and_shortcut() -> None:
    torch.manual_seed(0)
    net = BEVResNet(in_channels=8)
    assert net.out_channels == [16, 32, 64]  # numC_Trans x [2, 4, 8]
    feats = net(torch.randn(2, 8, 32, 24))
    assert [tuple(f.shape) for f in feats] == [(2, 16, 16, 12), (2, 32, 8, 6), (2, 64, 4, 3)]
    first = net.layers[0][0]
    # official shortcut: a bare 3x3 stride-2 conv with bias, no norm
    assert isinstance(first.downsample, nn.Conv2d) and first.downsample.stride == (2, 2)
    assert first.downsample.bias is not None and first.downsample.kernel_size == (3, 3)
    assert len(net.layers[0]) == 2 and net.layers[0][1].downsample is None


def test_fpn_lss_back_on_the_bev_grid() -> None:
    torch.manual_seed(0)
    net = BEVResNet(in_channels=8, channels=(16, 32, 64))
    neck = FPNLSS(in_channels=16 + 64, out_channels=24)
    x = torch.randn(2, 8, 32, 40, requires_grad=True)
    out = neck(net(x))
    assert out.shape == (2, 24, 32, 40)
    out.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    convs = [m for m in neck.modules() if isinstance(m, nn.Conv2d)]
    # 640 -> 512 -> 512 (3x3, no bias), 512 -> 256 (3x3, no bias), 256 -> 256 (1x1, bias) at official sizes
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.bias is not None) for c in convs] == [
        (80, 48, 3, False),
        (48, 48, 3, False),
        (48, 24, 3, False),
        (24, 24, 1, True),
    ]


def test_bev_resnet_rejects_mismatched_stage_lists() -> None:
    with pytest.raises(ValueError, match="one entry per stage"):
        BEVResNet(in_channels=8, num_layers=(2, 2), strides=(2, 2, 2))
    with pytest.raises(ValueError, match="one entry per stage"):
        BEVResNet(in_channels=8, channels=(16, 32))
