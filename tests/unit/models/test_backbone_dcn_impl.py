"""``model.backbone.dcn_impl``: the "sampled" DCN (ops/dcn) is a drop-in for the torchvision one."""

import pytest
import torch
from torch import nn

from bevforge.config import load_config
from bevforge.models.backbone import ModulatedDeformConv2d, ResNetBackbone
from bevforge.models.build import build_model


def _randomise_offsets(dcn: ModulatedDeformConv2d) -> None:
    """Non-zero offset/mask predictor, so the samples move off the integer grid (and out of the image)."""
    with torch.no_grad():
        dcn.conv_offset.weight.normal_(0.0, 0.3)
        dcn.conv_offset.bias.normal_(0.0, 1.0)


def test_dcn_impls_share_state_dict_and_outputs():
    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, 3, stride=2, padding=1, bias=True)
    ref = ModulatedDeformConv2d.from_conv(conv)
    _randomise_offsets(ref)
    sampled = ModulatedDeformConv2d.from_conv(nn.Conv2d(6, 5, 3, stride=2, padding=1, bias=True), "sampled")
    assert sampled.impl == "sampled" and ref.impl == "torchvision"
    sampled.load_state_dict(ref.state_dict())  # strict: same keys and shapes
    x = torch.randn(2, 6, 11, 8)
    x_ref, x_s = x.clone().requires_grad_(), x.clone().requires_grad_()
    out_ref, out_s = ref(x_ref), sampled(x_s)
    torch.testing.assert_close(out_s, out_ref, atol=1e-5, rtol=1e-5)
    g = torch.randn_like(out_ref)
    (out_ref * g).sum().backward()
    (out_s * g).sum().backward()
    torch.testing.assert_close(x_s.grad, x_ref.grad, atol=1e-5, rtol=1e-5)
    for (name, p_ref), p_s in zip(ref.named_parameters(), sampled.parameters()):
        torch.testing.assert_close(p_s.grad, p_ref.grad, atol=1e-4, rtol=1e-5, msg=name)


def test_backbone_dcn_impl_threads_to_every_dcn():
    torch.manual_seed(0)
    kw = dict(depth=18, out_indices=(2, 3), frozen_stages=1, dcn_stages=(False, False, True, True))
    ref = ResNetBackbone(**kw)
    sampled = ResNetBackbone(**kw, dcn_impl="sampled")
    dcns = [m for m in sampled.modules() if isinstance(m, ModulatedDeformConv2d)]
    assert len(dcns) == 4 and all(m.impl == "sampled" for m in dcns)
    for m in ref.modules():
        if isinstance(m, ModulatedDeformConv2d):
            _randomise_offsets(m)
    sampled.load_state_dict(ref.state_dict())
    ref.eval(), sampled.eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(sampled(x), ref(x)):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_dcn_impl_rejects_unknown_names():
    with pytest.raises(ValueError, match=r"model\.backbone\.dcn_impl='cuda'"):
        ResNetBackbone(depth=18, dcn_stages=(False, False, True, True), dcn_impl="cuda")
    with pytest.raises(ValueError, match="dcn_impl"):
        ModulatedDeformConv2d(4, 4, impl="mmcv")


def test_build_model_reads_dcn_impl():
    cfg = load_config("bevformer_debug")
    cfg.model.backbone.dcn_stages = (False, True, True, True)
    cfg.model.backbone.dcn_impl = "sampled"
    with torch.device("meta"):
        model = build_model(cfg)
    dcns = [m for m in model.modules() if isinstance(m, ModulatedDeformConv2d)]
    assert dcns and all(m.impl == "sampled" for m in dcns)
