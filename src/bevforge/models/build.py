"""``build_model(cfg)``: the one place that reads the config and builds a model (BEVFormer here)."""

from __future__ import annotations

from torch import nn

from bevforge.config import Config, ConfigError
from bevforge.models.backbone import ResNetBackbone
from bevforge.models.bev_encoder import BEVEncoder
from bevforge.models.bevformer import BEVFormer
from bevforge.models.det_head import DetectionHead
from bevforge.models.grid_mask import GridMask
from bevforge.models.neck import FPN
from bevforge.models.seg_head import SegHead
from bevforge.nn.recompute import check_recompute_mode
from bevforge.nn.spatial_cross_attn import FUSE_CAMERAS_MODES

MODEL_ARCHS = ("bevformer", "bevdet")


def build_model(cfg: Config) -> nn.Module:
    """The model family ``cfg.model.arch`` names (every family: ``forward(batch, state) -> (preds, state)``
    and ``decode(preds, ...)``, docs/CONTRACTS.md)."""
    arch = cfg.model.arch
    if arch == "bevformer":
        return build_bevformer(cfg)
    if arch == "bevdet":
        from bevforge.models.bevdet_build import build_bevdet

        return build_bevdet(cfg)
    raise ConfigError(f"model.arch={arch!r} is not a model family; choose one of {MODEL_ARCHS}")


def build_backbone(cfg: Config) -> ResNetBackbone:
    """The image backbone of ``model.backbone`` (every family's); what it refuses is a config error."""
    b = cfg.model.backbone
    try:
        return ResNetBackbone(
            depth=b.depth,
            out_indices=tuple(b.out_indices),
            frozen_stages=b.frozen_stages,
            norm_eval=b.norm_eval,
            dcn_stages=tuple(b.dcn_stages),
            pretrained=b.pretrained,
            with_cp=b.with_cp or cfg.train.grad_ckpt,  # --grad-ckpt: the backbone too (its largest share)
            style=b.style,
            dcn_impl=b.dcn_impl,
            fold_bn=b.fold_bn,
            dcn_offset_pad=b.dcn_offset_pad,
            fuse_conv_relu=b.fuse_conv_relu,
        )
    except ValueError as e:  # a depth, stage list, style, DCN op or option it does not take
        raise ConfigError(str(e) if str(e).startswith("model.backbone") else f"model.backbone: {e}") from e


def build_bevformer(cfg: Config) -> BEVFormer:
    """BEVFormer from ``cfg.model``, ``cfg.data`` (range, cameras, classes) and ``cfg.train.grad_ckpt``."""
    m, d = cfg.model, cfg.data
    if len(d.point_cloud_range) != 6:
        raise ConfigError(f"data.point_cloud_range needs 6 values, got {d.point_cloud_range}")
    if not (m.with_det or m.with_seg):
        raise ConfigError("model.with_det and model.with_seg are both false: enable at least one head")
    if m.with_seg and tuple(m.seg_classes) != tuple(d.seg_classes):
        raise ConfigError(
            f"model.seg_classes {m.seg_classes} != data.seg_classes {d.seg_classes}: "
            "set both to the same list"
        )
    if m.num_classes != len(d.classes):
        raise ConfigError(f"model.num_classes={m.num_classes} but data.classes has {len(d.classes)} names")
    check_recompute_mode(m.sca_recompute, "model.sca_recompute", ConfigError)
    check_recompute_mode(m.tsa_recompute, "model.tsa_recompute", ConfigError)
    if m.sca_fuse_cameras not in FUSE_CAMERAS_MODES:
        raise ConfigError(
            f"model.sca_fuse_cameras={m.sca_fuse_cameras!r} is not one of {', '.join(FUSE_CAMERAS_MODES)}"
        )
    backbone = build_backbone(cfg)
    neck = FPN(list(backbone.out_channels), m.neck.out_channels, m.neck.num_outs, m.neck.add_extra_convs)
    if m.neck.out_channels != m.embed_dims:
        raise ConfigError(
            f"model.neck.out_channels ({m.neck.out_channels}) must equal model.embed_dims ({m.embed_dims})"
        )
    pc_range = tuple(float(v) for v in d.point_cloud_range)
    encoder = BEVEncoder(
        embed_dims=m.embed_dims,
        ffn_dims=m.ffn_dims,
        dropout=m.dropout,
        num_layers=m.encoder_layers,
        bev_h=m.bev_h,
        bev_w=m.bev_w,
        pc_range=pc_range,
        num_cams=len(d.cameras),
        num_levels=m.neck.num_outs,
        num_points_in_pillar=m.num_points_in_pillar,
        tsa_heads=m.tsa_heads,
        tsa_points=m.tsa_points,
        sca_heads=m.sca_heads,
        sca_points=m.sca_points,
        use_can_bus=m.use_can_bus,
        use_shift=m.use_shift,
        rotate_prev_bev=m.rotate_prev_bev,
        official_compat=m.official_compat,
        grad_ckpt=cfg.train.grad_ckpt,
        sca_recompute=m.sca_recompute,
        tsa_recompute=m.tsa_recompute,
        ffn_recompute=m.ffn_recompute,
        sca_fuse_cameras=m.sca_fuse_cameras,
    )
    det_head = None
    if m.with_det:
        det_head = DetectionHead(
            embed_dims=m.embed_dims,
            ffn_dims=m.ffn_dims,
            dropout=m.dropout,
            num_queries=m.num_queries,
            num_classes=m.num_classes,
            num_layers=m.decoder_layers,
            num_heads=m.decoder_heads,
            num_points=m.decoder_points,
            bev_h=m.bev_h,
            bev_w=m.bev_w,
            pc_range=pc_range,
        )
    seg_head = SegHead(m.embed_dims, len(m.seg_classes), m.bev_h, m.bev_w) if m.with_seg else None
    grid_mask = GridMask(prob=0.7, ratio=0.5) if m.use_grid_mask else None  # official p 0.7, ratio 0.5
    aux_head = None
    if m.aux_heatmap:
        from bevforge.models.centerpoint_head import build_centerpoint_head

        aux_head = build_centerpoint_head(cfg, in_channels=m.embed_dims)
    return BEVFormer(backbone, neck, encoder, det_head, seg_head, grid_mask, aux_head)
