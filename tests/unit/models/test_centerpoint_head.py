import math

import pytest
import torch

from bevforge.config import Config, ConfigError
from bevforge.losses.centerpoint_targets import build_targets, targets_as_predictions
from bevforge.models.centerpoint_head import CenterPointHead, build_centerpoint_head

PCR = (-8.0, -8.0, -5.0, 8.0, 8.0, 3.0)
TASKS = ((0,), (1, 2))


def _perfect_preds(boxes, labels, H=16, W=16):
    return targets_as_predictions(build_targets(boxes, labels, TASKS, PCR, H, W))


def test_build_from_config_outputs_and_init():
    torch.manual_seed(0)
    cfg = Config()
    cfg.model.arch, cfg.model.bev_h, cfg.model.bev_w = "bevdet", 6, 5
    head = build_centerpoint_head(cfg, in_channels=8)
    assert head.tasks == ((0,), (1, 2), (3, 4), (5,), (6, 7), (8, 9))
    preds = head(torch.randn(2, 8, 6, 5))
    assert len(preds) == 6 * 6
    assert preds["t1.heatmap"].shape == (2, 2, 6, 5) and preds["t5.vel"].shape == (2, 2, 6, 5)
    assert preds["t0.dim"].shape == (2, 3, 6, 5) and preds["t3.height"].shape == (2, 1, 6, 5)
    bias = head.task_heads[2].branches["heatmap"][-1].bias
    assert torch.allclose(bias, torch.full_like(bias, -2.19))


def test_config_errors_name_the_field():
    cfg = Config()
    cfg.model.bevdet.head_tasks = ("car", "car+truck")
    with pytest.raises(ConfigError, match="head_tasks"):
        build_centerpoint_head(cfg)
    cfg = Config()
    cfg.model.bevdet.nms_thr = (0.2,)
    with pytest.raises(ConfigError, match="nms_thr"):
        build_centerpoint_head(cfg)
    cfg = Config()
    cfg.model.bevdet.nms_type = ("circle",) * 5 + ("iou",)
    with pytest.raises(ConfigError, match="nms_type"):
        build_centerpoint_head(cfg)


def _head(**kw):
    return CenterPointHead(4, TASKS, 16, 16, PCR, share_channels=4, head_channels=4, **kw)


def test_decode_round_trip_returns_the_gt_boxes():
    torch.manual_seed(0)
    boxes = torch.tensor(
        [
            [0.3, -2.6, 1.0, 4.5, 1.9, 1.6, 0.4, 2.0, -1.0],
            [-4.2, 5.1, 0.2, 0.8, 0.7, 1.8, -2.5, 0.3, 0.4],
            [5.5, 5.5, -0.3, 2.0, 0.8, 1.2, 3.0, -1.0, 0.0],
            [-6.0, -6.0, 0.5, 4.0, 2.0, 1.5, -math.pi / 2, 5.0, 5.0],
        ]
    )
    labels = torch.tensor([0, 1, 2, 0])
    preds = _perfect_preds([boxes, torch.zeros(0, 9)], [labels, torch.zeros(0, dtype=torch.long)])
    head = _head(nms_type=("rotate", "circle"), nms_thr=(0.2, 0.2), circle_radius=(1.0, 0.5))
    dets = head.decode(preds, max_boxes=300, post_center_range=(-10, -10, -10, 10, 10, 10))
    assert len(dets) == 2 and dets[1]["boxes"].shape == (0, 9)
    d = dets[0]
    assert d["labels"].dtype == torch.int64 and torch.all(d["scores"][:-1] >= d["scores"][1:])
    assert len(d["boxes"]) == 4
    for box, lab in zip(boxes, labels, strict=True):
        i = int((d["boxes"][:, :2] - box[:2]).norm(dim=1).argmin())
        assert int(d["labels"][i]) == int(lab)
        torch.testing.assert_close(d["boxes"][i, :6], box[:6], atol=1e-4, rtol=1e-4)
        yaw_err = math.remainder(float(d["boxes"][i, 6] - box[6]), 2 * math.pi)
        assert abs(yaw_err) < 1e-4
        torch.testing.assert_close(d["boxes"][i, 7:], box[7:], atol=1e-5, rtol=0)


def test_decode_filters_range_threshold_and_max_boxes():
    torch.manual_seed(0)
    boxes = torch.tensor([[0.3, -2.6, 1.0, 4.5, 1.9, 1.6, 0.4, 0.0, 0.0], [5.0, 5.0, 0, 1, 1, 1, 0, 0, 0]])
    preds = _perfect_preds([boxes], [torch.tensor([0, 0])])
    head = _head()
    assert len(head.decode(preds, post_center_range=(-1, -3, -1, 1, 0, 2))[0]["boxes"]) == 1
    assert len(head.decode(preds, max_boxes=1)[0]["boxes"]) == 1
    preds["t0.heatmap"] = torch.full_like(preds["t0.heatmap"], -3.0)  # sigmoid 0.047 < 0.1 head floor
    assert len(head.decode(preds)[0]["boxes"]) == 0
    preds["t0.heatmap"] = torch.full_like(preds["t0.heatmap"], -1.0)  # 0.27: kept by the head, not by 0.5
    assert len(head.decode(preds, score_threshold=0.5)[0]["boxes"]) == 0


def test_calm_heatmap_init_starts_every_cell_at_the_bias():
    torch.manual_seed(0)
    cfg = Config()
    cfg.model.bev_h = cfg.model.bev_w = 8
    cfg.model.bevdet.head_heatmap_init_std = 1e-3
    x = torch.randn(1, 8, 8, 8)
    calm = build_centerpoint_head(cfg, in_channels=8)(x)["t0.heatmap"]
    assert (calm + 2.19).abs().max() < 0.05
    cfg.model.bevdet.head_heatmap_init_std = 0.0  # official Kaiming: logits spread by several units
    official = build_centerpoint_head(cfg, in_channels=8)(x)["t0.heatmap"]
    assert official.std() > 1.0
