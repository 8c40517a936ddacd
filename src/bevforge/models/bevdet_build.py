"""``build_bevdet(cfg)``: the one place that reads the config and builds a BEVDet from primitives.

Reads ``cfg.model.backbone`` / ``cfg.model.neck`` (image side), ``cfg.model.bevdet`` (view transformer,
BEV encoder, head), ``cfg.model.bev_h/bev_w`` and ``cfg.data.point_cloud_range`` / ``classes``.
"""

from __future__ import annotations

from torch import nn

from bevforge.config import Config, ConfigError
from bevforge.models.bev_backbone import FPNLSS, BEVResNet
from bevforge.models.bevdet import BEVDet
from bevforge.models.build import build_backbone
from bevforge.models.neck import FPN
from bevforge.nn.lss import LSSViewTransformer


def build_image_neck(in_channels: list[int], out_channels: int) -> FPN:
    """Official ``CustomFPN(out_ids=[0])``: an FPN whose only output is the first (finest) level.

    Our FPN makes one output per input level; the coarser levels' 3x3 output convs are never used, so
    they become ``Identity`` (no parameters, as in the official neck, which builds none for them)."""
    neck = FPN(in_channels, out_channels, num_outs=len(in_channels), add_extra_convs=False)
    for i in range(1, len(in_channels)):
        neck.fpn_convs[i] = nn.Identity()
    return neck


def build_bevdet(cfg: Config) -> BEVDet:
    from bevforge.models.centerpoint_head import build_centerpoint_head

    m, d, b = cfg.model, cfg.data, cfg.model.bevdet
    if len(d.point_cloud_range) != 6:
        raise ConfigError(f"data.point_cloud_range needs 6 values, got {d.point_cloud_range}")
    if m.num_classes != len(d.classes):
        raise ConfigError(f"model.num_classes={m.num_classes} but data.classes has {len(d.classes)} names")
    if m.with_seg:
        raise ConfigError("model.with_seg: BEVDet has no segmentation head; set model.with_seg=false")
    if m.bev_h % 8 or m.bev_w % 8:
        raise ConfigError(
            f"model.bev_h/bev_w = {m.bev_h}/{m.bev_w}: the BEV encoder (3 stride-2 stages, FPN-LSS x4 "
            "then x2) needs multiples of 8"
        )
    if m.neck.num_outs != 1:
        raise ConfigError(
            f"model.neck.num_outs={m.neck.num_outs}: BEVDet reads one image level (official "
            "out_ids=[0]); set 1"
        )
    bk = m.backbone
    backbone = build_backbone(cfg)
    stride = 2 ** (min(bk.out_indices) + 2)  # C2..C5 = stride 4..32; the neck output is the finest level
    if stride != b.feat_downsample:
        raise ConfigError(
            f"model.bevdet.feat_downsample={b.feat_downsample} but model.backbone.out_indices "
            f"{tuple(bk.out_indices)} give stride-{stride} features: set feat_downsample={stride}"
        )
    neck = build_image_neck(list(backbone.out_channels), m.neck.out_channels)
    view_transformer = LSSViewTransformer(
        in_channels=m.neck.out_channels,
        context_channels=b.context_channels,
        depth_bins=tuple(b.depth_bins),
        feat_downsample=b.feat_downsample,
        pc_range=tuple(d.point_cloud_range),
        bev_h=m.bev_h,
        bev_w=m.bev_w,
    )
    if len(b.bev_backbone_layers) != 3:
        raise ConfigError(
            f"model.bevdet.bev_backbone_layers={b.bev_backbone_layers}: FPN-LSS reads stages 0 and 2, give 3"
        )
    if b.bev_backbone_channels and len(b.bev_backbone_channels) != 3:
        raise ConfigError(
            f"model.bevdet.bev_backbone_channels={b.bev_backbone_channels}: give 3 (one per stage) or () "
            "for the official [2, 4, 8] x context_channels"
        )
    bev_backbone = BEVResNet(
        in_channels=b.context_channels,
        num_layers=tuple(b.bev_backbone_layers),
        channels=tuple(b.bev_backbone_channels),
    )
    low, high = bev_backbone.out_channels[0], bev_backbone.out_channels[2]
    bev_neck = FPNLSS(in_channels=low + high, out_channels=b.head_in_channels)
    head = build_centerpoint_head(cfg, in_channels=bev_neck.out_channels)
    return BEVDet(backbone, neck, view_transformer, bev_backbone, bev_neck, head)
