"""BEVDet assembly: shapes through every block (batch 2, 6 cameras), current frame only, decode format,
config errors, and both recipes building with plausible parameter counts."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from models_test_rig import ring_lidar2img

from bevforge.config import ConfigError, load_config
from bevforge.losses.build import build_criterion
from bevforge.models.bevdet import BEVDet
from bevforge.models.build import build_model
from bevforge.structures.batch import Batch

TINY = [
    "model.bev_h=32",
    "model.bev_w=32",
    "model.bevdet.depth_bins=(1.0, 40.0, 3.0)",
    "model.neck.out_channels=32",
    "model.bevdet.context_channels=16",
    "model.bevdet.bev_backbone_channels=(16, 32, 64)",
    "model.bevdet.head_in_channels=32",
    "model.bevdet.head_share_channels=16",
    "model.bevdet.head_channels=16",
]


def make_batch(num_b: int = 2, num_t: int = 1, num_n: int = 6, h: int = 32, w: int = 48) -> Batch:
    l2i = ring_lidar2img(num_n, h, w)[None, None].repeat(num_b, num_t, 1, 1, 1)  # [B, T, N, 4, 4]
    eye = torch.eye(4, dtype=torch.float64).repeat(num_b, num_t, 1, 1)  # [B, T, 4, 4]
    gt = torch.tensor([[5.0, 10.0, -0.5, 4.5, 1.9, 1.6, 0.3, 1.0, 0.0]])
    return Batch(
        images=torch.randn(num_b, num_t, num_n, 3, h, w),
        lidar2img=l2i,
        can_bus=torch.zeros(num_b, num_t, 18),
        ego2global=eye,
        lidar2ego=eye.clone(),
        frame_valid=torch.ones(num_b, num_t, dtype=torch.bool),
        scene_tokens=[["s"] * num_t for _ in range(num_b)],
        sample_tokens=[f"t{b}" for b in range(num_b)],
        timestamps=torch.zeros(num_b, num_t, dtype=torch.int64),
        img_hw=(h, w),
        gt_boxes=[gt.clone() for _ in range(num_b)],
        gt_labels=[torch.zeros(1, dtype=torch.int64) for _ in range(num_b)],
    )


def test_bevdet_shapes_current_frame_only_and_decode() -> None:
    torch.manual_seed(0)
    cfg = load_config("bevdet_debug", TINY)
    model = build_model(cfg)
    assert isinstance(model, BEVDet)
    batch = replace(make_batch(num_t=2), depth_gt=torch.rand(2, 6, 4, 6) * 30)  # lidar depth targets
    preds, state = model(batch, None)
    assert state is None
    assert preds["depth_gt"] is batch.depth_gt  # passed through to the criterion's depth loss
    assert preds["bev_feat"].shape == (2, 32, 32, 32)
    assert preds["depth"].shape == (2, 6, 13, 4, 6)  # D = len(arange(1, 40, 3)), 32 x 48 / 8
    heat = [k for k in preds if k.endswith(".heatmap")]
    assert len(heat) == 6 and sum(preds[k].shape[1] for k in heat) == 10
    assert all(preds[k].shape[-2:] == (32, 32) for k in heat)

    losses = build_criterion(cfg)(preds, batch.gt_boxes, batch.gt_labels, None)
    assert torch.isfinite(losses["loss"]) and losses["loss_depth"] > 0  # the recipe supervises depth
    losses["loss"].backward()
    assert model.view_transformer.depth_net.weight.grad.abs().sum() > 0
    assert model.backbone.conv1.weight.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        out, _ = model(batch)
        older = replace(batch, images=batch.images.clone())
        older.images[:, 0] = torch.randn_like(older.images[:, 0])  # frame 0 is not used
        torch.testing.assert_close(model(older)[0]["bev_feat"], out["bev_feat"])
        torch.testing.assert_close(model(batch.frame(-1))[0]["bev_feat"], out["bev_feat"])
        dets = model.decode(out, max_boxes=50, post_center_range=tuple(cfg.eval.post_center_range))
    assert len(dets) == 2
    for det in dets:
        n = det["boxes"].shape[0]
        assert (
            det["boxes"].shape == (n, 9)
            and det["scores"].shape == (n,)
            and det["labels"].dtype == torch.int64
        )
        assert n <= 50


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("model.bevdet.feat_downsample=16", "feat_downsample"),
        ("model.bev_h=36", "multiples of 8"),
        ("model.neck.num_outs=2", "num_outs"),
        ("model.bevdet.bev_backbone_channels=(16, 32)", "bev_backbone_channels"),
        ("model.with_seg=true", "with_seg"),
    ],
)
def test_bevdet_config_errors_name_the_field(override: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_model(load_config("bevdet_debug", [*TINY, override]))


def test_image_size_must_match_the_feature_stride() -> None:
    torch.manual_seed(0)
    model = build_model(load_config("bevdet_debug", TINY))
    with pytest.raises(ValueError, match="feat_downsample"):
        model(make_batch(num_b=1, h=36, w=48))  # 36 is not a multiple of 8


def count(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e6


def test_recipes_build_with_plausible_parameter_counts() -> None:
    torch.manual_seed(0)
    cfg = load_config("bevdet_r50", ["model.backbone.pretrained="])
    model, criterion = build_model(cfg), build_criterion(cfg)
    assert isinstance(model, BEVDet) and isinstance(criterion, torch.nn.Module)
    parts = {name: count(child) for name, child in model.named_children()}
    # ResNet-50 to C5 23.5 M; CustomFPN 1024/2048 -> 512 + one 3x3: 3.9 M; depth net 512 -> 59 + 64;
    # CustomResNet 64 -> 128/256/512: 12.4 M; FPN-LSS 640 -> 512 -> 256: 6.6 M; CenterHead 6 tasks: 1.5 M
    assert parts["backbone"] == pytest.approx(23.51, abs=0.01)
    assert parts["neck"] == pytest.approx(3.93, abs=0.01)
    assert model.view_transformer.depth_net.out_channels == 59 + 64
    assert parts["bev_backbone"] == pytest.approx(12.39, abs=0.01)
    assert parts["bev_neck"] == pytest.approx(6.56, abs=0.01)
    assert 1.0 < parts["head"] < 2.0
    assert 47.0 < count(model) < 49.0
    debug = load_config("bevdet_debug")
    assert isinstance(build_model(debug), BEVDet) and isinstance(build_criterion(debug), torch.nn.Module)
