"""Parameter counts against counts derived by hand from the official module definitions."""

import json

import torch

from bevforge.cli.info import parameter_counts
from bevforge.models.backbone import ResNetBackbone
from bevforge.models.det_head import DetectionHead
from bevforge.models.neck import FPN


def lin(i, o):
    return i * o + o


def conv(i, o, k):
    return i * o * k * k + o


TV_RESNET101_NO_FC = 44_549_160 - lin(2048, 1000)  # torchvision's published resnet101 count minus fc
TV_RESNET50_NO_FC = 25_557_032 - lin(2048, 1000)


def test_backbone_counts_match_torchvision_and_mmcv_dcn():
    with torch.device("meta"):
        r50 = ResNetBackbone(depth=50, out_indices=(3,))
        r101 = ResNetBackbone(depth=101, out_indices=(1, 2, 3), dcn_stages=(False, False, True, True))
    assert sum(p.numel() for p in r50.parameters()) == TV_RESNET50_NO_FC == 23_508_032
    # mmcv ModulatedDeformConv2dPack adds conv_offset (planes -> 3*3*3, 3x3, bias) to each 3x3 conv
    dcn = 23 * conv(256, 27, 3) + 3 * conv(512, 27, 3)
    assert sum(p.numel() for p in r101.parameters()) == TV_RESNET101_NO_FC + dcn


def test_neck_and_head_counts_match_official_definitions():
    C, F, Q, K, D = 256, 512, 900, 10, 6
    with torch.device("meta"):
        fpn = FPN([512, 1024, 2048], C, num_outs=4, add_extra_convs=True)
        head = DetectionHead(C, F, 0.1, Q, K, D, 8, 4, 200, 200)
    assert sum(p.numel() for p in fpn.parameters()) == sum(
        conv(c, C, 1) for c in (512, 1024, 2048)
    ) + 4 * conv(C, C, 3)
    mha = lin(C, 3 * C) + lin(C, C)  # nn.MultiheadAttention in_proj + out_proj
    cross = lin(C, 8 * 1 * 4 * 2) + lin(C, 8 * 1 * 4) + 2 * lin(C, C)  # CustomMSDeformableAttention
    layer = mha + cross + lin(C, F) + lin(F, C) + 3 * 2 * C
    cls_branch = 2 * (lin(C, C) + 2 * C) + lin(C, K)  # (Linear, LayerNorm, ReLU) x 2 + Linear
    reg_branch = 2 * lin(C, C) + lin(C, 10)
    expect = D * (layer + cls_branch + reg_branch) + Q * 2 * C + lin(C, 3)
    assert sum(p.numel() for p in head.parameters()) == expect == 6_180_795


def test_info_cli_base_total_matches_paper(capsys):
    from bevforge.cli.main import main

    assert main(["info", "bevformer_base", "--json"]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert counts["backbone"]["params"] == TV_RESNET101_NO_FC + 23 * conv(256, 27, 3) + 3 * conv(512, 27, 3)
    assert counts["decoder/head"]["params"] == 6_180_795
    # the paper's 68.7M counts the trainable parameters (frozen stem/stage 1 and BN excluded)
    assert abs(counts["total"]["trainable"] / 1e6 - 68.7) < 0.05
    assert set(counts) == {"backbone", "neck", "encoder", "decoder/head", "total"}


def test_parameter_counts_trainable():
    net = torch.nn.Module()
    net.backbone = torch.nn.Linear(3, 4)
    net.backbone.weight.requires_grad_(False)
    counts = parameter_counts(net)
    assert counts == {"backbone": {"params": 16, "trainable": 4}, "total": {"params": 16, "trainable": 4}}


def test_info_cli_bad_setting_is_a_clear_error(capsys):
    from bevforge.cli.main import main

    assert main(["info", "bevformer_tiny", "--set", "model.backbone.depth=42"]) == 2
    err = capsys.readouterr().err
    assert "error" in err and "depth 42" in err
