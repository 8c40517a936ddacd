"""The adapter on a state dict built with the official BEVFormer names and shapes (debug dims)."""

import math

import numpy as np
import torch
from torch import nn

from bevforge.models.backbone import ResNetBackbone
from bevforge.models.checkpoint_adapter import (
    is_official_state_dict,
    load_official_checkpoint,
    map_official_key,
)
from bevforge.models.det_head import DetectionHead
from bevforge.models.neck import FPN
from bevforge.structures.boxes import decode_box_code, from_mmdet3d_v0

C, F, BH, BW, Q, K = 32, 64, 4, 5, 7, 10


def _linear(sd, name, i, o):
    sd[f"{name}.weight"] = torch.randn(o, i)
    sd[f"{name}.bias"] = torch.randn(o)


def _ln(sd, name, c):
    sd[f"{name}.weight"] = torch.randn(c)
    sd[f"{name}.bias"] = torch.randn(c)


def _ffn_norms(sd, p):
    _linear(sd, f"{p}.ffns.0.layers.0.0", C, F)
    _linear(sd, f"{p}.ffns.0.layers.1", F, C)
    for i in range(3):
        _ln(sd, f"{p}.norms.{i}", C)


def official_head_state(dec_layers=2, heads=4, points=4):
    """Official ``pts_bbox_head`` decoder/branch keys (mmcv layouts)."""
    sd = {}
    t = "pts_bbox_head.transformer"
    _linear(sd, f"{t}.reference_points", C, 3)
    for n in range(dec_layers):
        p = f"{t}.decoder.layers.{n}"
        sd[f"{p}.attentions.0.attn.in_proj_weight"] = torch.randn(3 * C, C)
        sd[f"{p}.attentions.0.attn.in_proj_bias"] = torch.randn(3 * C)
        _linear(sd, f"{p}.attentions.0.attn.out_proj", C, C)
        _linear(sd, f"{p}.attentions.1.sampling_offsets", C, heads * 1 * points * 2)
        _linear(sd, f"{p}.attentions.1.attention_weights", C, heads * 1 * points)
        _linear(sd, f"{p}.attentions.1.value_proj", C, C)
        _linear(sd, f"{p}.attentions.1.output_proj", C, C)
        _ffn_norms(sd, p)
        b = f"pts_bbox_head.cls_branches.{n}"
        _linear(sd, f"{b}.0", C, C), _ln(sd, f"{b}.1", C), _linear(sd, f"{b}.3", C, C), _ln(sd, f"{b}.4", C)
        _linear(sd, f"{b}.6", C, K)
        r = f"pts_bbox_head.reg_branches.{n}"
        _linear(sd, f"{r}.0", C, C), _linear(sd, f"{r}.2", C, C), _linear(sd, f"{r}.4", C, 10)
    sd["pts_bbox_head.query_embedding.weight"] = torch.randn(Q, 2 * C)
    sd["pts_bbox_head.code_weights"] = torch.ones(10)
    return sd


def official_encoder_state(enc_layers=1, num_levels=1, cams=6, tsa=(8, 4), sca=(8, 8)):
    sd = {}
    t = "pts_bbox_head.transformer"
    sd["pts_bbox_head.bev_embedding.weight"] = torch.randn(BH * BW, C)
    sd["pts_bbox_head.positional_encoding.row_embed.weight"] = torch.randn(BH, C // 2)
    sd["pts_bbox_head.positional_encoding.col_embed.weight"] = torch.randn(BW, C // 2)
    sd[f"{t}.level_embeds"] = torch.randn(4, C)  # official keeps 4 levels even for 1-level recipes
    sd[f"{t}.cams_embeds"] = torch.randn(cams, C)
    _linear(sd, f"{t}.can_bus_mlp.0", 18, C // 2)
    _linear(sd, f"{t}.can_bus_mlp.2", C // 2, C)
    _ln(sd, f"{t}.can_bus_mlp.norm", C)
    for n in range(enc_layers):
        p = f"{t}.encoder.layers.{n}"
        m, pts = tsa
        _linear(sd, f"{p}.attentions.0.sampling_offsets", 2 * C, 2 * m * 1 * pts * 2)
        _linear(sd, f"{p}.attentions.0.attention_weights", 2 * C, 2 * m * 1 * pts)
        _linear(sd, f"{p}.attentions.0.value_proj", C, C)
        _linear(sd, f"{p}.attentions.0.output_proj", C, C)
        m, pts = sca
        d = f"{p}.attentions.1.deformable_attention"
        _linear(sd, f"{d}.sampling_offsets", C, m * num_levels * pts * 2)
        _linear(sd, f"{d}.attention_weights", C, m * num_levels * pts)
        _linear(sd, f"{d}.value_proj", C, C)
        _linear(sd, f"{p}.attentions.1.output_proj", C, C)
        _ffn_norms(sd, p)
    return sd


def official_image_state(backbone: ResNetBackbone, in_channels):
    sd = {f"img_backbone.{k}": torch.randn_like(v.float()) for k, v in backbone.state_dict().items()}
    for i, c in enumerate(in_channels):
        sd[f"img_neck.lateral_convs.{i}.conv.weight"] = torch.randn(C, c, 1, 1)
        sd[f"img_neck.lateral_convs.{i}.conv.bias"] = torch.randn(C)
        sd[f"img_neck.fpn_convs.{i}.conv.weight"] = torch.randn(C, C, 3, 3)
        sd[f"img_neck.fpn_convs.{i}.conv.bias"] = torch.randn(C)
    return sd


class _ImageAndHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.backbone = ResNetBackbone(depth=18, out_indices=(3,), dcn_stages=(False, False, False, True))
        self.neck = FPN(self.backbone.out_channels, C, 1)
        self.det_head = DetectionHead(C, F, 0.0, Q, K, 2, 4, 4, BH, BW)


def test_key_rules():
    assert map_official_key("module.img_neck.fpn_convs.0.conv.weight") == "neck.fpn_convs.0.weight"
    assert (
        map_official_key("pts_bbox_head.transformer.encoder.layers.2.ffns.0.layers.1.bias")
        == "encoder.layers.2.ffn.layers.3.bias"
    )
    assert (
        map_official_key("pts_bbox_head.transformer.can_bus_mlp.norm.weight")
        == "encoder.can_bus_mlp.4.weight"
    )
    assert map_official_key("img_backbone.layer4.0.conv2.conv_offset.weight") == (
        "backbone.layer4.0.conv2.conv_offset.weight"
    )
    assert map_official_key("something.else") is None
    assert is_official_state_dict({"module.pts_bbox_head.query_embedding.weight": torch.zeros(1)})
    assert not is_official_state_dict({"det_head.query_embedding.weight": torch.zeros(1)})


def test_adapter_loads_backbone_neck_head_and_reports_encoder_keys():
    torch.manual_seed(0)
    model = _ImageAndHead()
    assert "backbone.layer4.0.conv2.conv_offset.weight" in model.state_dict()
    sd = official_image_state(model.backbone, model.backbone.out_channels)
    sd.update(official_head_state())
    enc = official_encoder_state()
    sd.update(enc)
    report = load_official_checkpoint(model, sd)
    assert report.missing == [] and report.shape_mismatch == []
    assert report.dropped == ["pts_bbox_head.code_weights"]
    # this container has no encoder: exactly the encoder keys come back unmatched, already renamed
    assert len(report.unmatched) == len(enc) and all(k.startswith("encoder.") for k in report.unmatched)
    t = "pts_bbox_head.transformer.decoder.layers.1"
    torch.testing.assert_close(
        model.det_head.layers[1].self_attn.in_proj_weight, sd[f"{t}.attentions.0.attn.in_proj_weight"]
    )
    torch.testing.assert_close(
        model.det_head.layers[1].ffn.layers[3].weight, sd[f"{t}.ffns.0.layers.1.weight"]
    )
    torch.testing.assert_close(model.neck.lateral_convs[0].bias, sd["img_neck.lateral_convs.0.conv.bias"])
    torch.testing.assert_close(
        model.backbone.layer1[0].bn1.running_var, sd["img_backbone.layer1.0.bn1.running_var"]
    )


def test_adapter_box_code_conversion_matches_box_convention():
    """An official reg layer emitting the old-convention code decodes, after conversion, to our box."""
    torch.manual_seed(0)
    model = _ImageAndHead()
    sd = official_head_state()
    x, y, z, w, l, h, rot, vx, vy = 3.0, -2.0, 0.5, 1.9, 4.4, 1.6, 0.7, 1.5, -0.3
    old_code = torch.tensor(
        [x, y, math.log(w), math.log(l), z, math.log(h), math.sin(rot), math.cos(rot), vx, vy]
    )
    sd["pts_bbox_head.reg_branches.0.4.weight"] = torch.zeros(10, C)
    sd["pts_bbox_head.reg_branches.0.4.bias"] = old_code
    load_official_checkpoint(model, sd)
    ours = decode_box_code(model.det_head.reg_branches[0](torch.zeros(1, C))[0])
    expect = from_mmdet3d_v0(np.array([[x, y, z, w, l, h, rot]]), np.array([[vx, vy]]))[0]
    torch.testing.assert_close(ours, torch.tensor(expect, dtype=torch.float32), atol=1e-5, rtol=1e-5)


def test_adapter_reports_shape_mismatch():
    torch.manual_seed(0)
    model = _ImageAndHead()
    sd = official_head_state()
    sd["pts_bbox_head.query_embedding.weight"] = torch.randn(Q + 1, 2 * C)
    report = load_official_checkpoint(model, sd)
    assert report.shape_mismatch == [("det_head.query_embedding.weight", (Q + 1, 2 * C), (Q, 2 * C))]
    assert not report.ok and "query_embedding" in report.summary()


def test_adapter_full_model_debug_dims():
    """Every key of a full official-style checkpoint lands in ``build_model``'s BEVFormer, and back."""
    from bevforge.config import Config
    from bevforge.models.build import build_model

    torch.manual_seed(0)
    cfg = Config()
    m = cfg.model
    m.backbone.depth, m.embed_dims, m.neck.out_channels, m.ffn_dims = 18, C, C, F
    m.bev_h, m.bev_w, m.num_queries, m.encoder_layers, m.decoder_layers = BH, BW, Q, 1, 2
    m.decoder_heads, m.sca_heads, m.tsa_heads = 4, 8, 8
    model = build_model(cfg)
    sd = official_image_state(model.backbone, model.backbone.out_channels)
    sd.update(official_head_state())
    sd.update(official_encoder_state())
    report = load_official_checkpoint(model, sd)
    assert report.ok, report.summary()
    torch.testing.assert_close(model.encoder.level_embeds, sd["pts_bbox_head.transformer.level_embeds"][:1])
    torch.testing.assert_close(
        model.encoder.can_bus_mlp[4].weight, sd["pts_bbox_head.transformer.can_bus_mlp.norm.weight"]
    )


def test_convert_checkpoint_file_round_trip(tmp_path):
    from bevforge.models.checkpoint_adapter import convert_checkpoint_file

    torch.manual_seed(0)
    model = _ImageAndHead()
    sd = official_image_state(model.backbone, model.backbone.out_channels)
    sd.update(official_head_state())
    src, dst = tmp_path / "official.pth", tmp_path / "ours.pth"
    torch.save({"state_dict": sd, "meta": {}}, src)
    report = convert_checkpoint_file(model, src, dst)
    assert report.ok
    saved = torch.load(dst, weights_only=True)["model"]
    torch.testing.assert_close(
        saved["det_head.query_embedding.weight"], sd["pts_bbox_head.query_embedding.weight"]
    )
    sd["pts_bbox_head.extra.weight"] = torch.zeros(1)
    torch.save(sd, src)
    try:
        convert_checkpoint_file(model, src, dst)
    except ValueError as e:
        assert "pts_bbox_head.extra.weight" in str(e)
    else:
        raise AssertionError("expected ValueError")
