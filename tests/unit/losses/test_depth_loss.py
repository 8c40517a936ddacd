"""BEVDepth-style depth loss: value on known distributions, only cells with a lidar target count, and the
CenterPoint criterion adds it when model.bevdet.depth_loss_weight > 0 (warns for a batch without targets)."""

from __future__ import annotations

import math

import pytest
import torch

from bevforge.config import load_config
from bevforge.losses.build import build_criterion
from bevforge.losses.depth import depth_bce_loss

BINS = torch.arange(1.0, 5.0)  # 4 bins: 1..4 m


def test_uniform_and_perfect_distributions():
    num_d = BINS.numel()
    gt = torch.tensor([2.1, 0.0, 3.9]).view(1, 1, 1, 3)  # [B, N, fH, fW]; the middle cell has no target
    uniform = torch.full((1, 1, num_d, 1, 3), 1.0 / num_d)
    expect = -math.log(1 / num_d) - (num_d - 1) * math.log(1 - 1 / num_d)
    assert float(depth_bce_loss(uniform, gt, BINS)) == pytest.approx(expect, rel=1e-5)
    perfect = torch.zeros(1, 1, num_d, 1, 3)
    perfect[0, 0, 1, 0, 0] = 1.0  # 2.1 m -> bin 1 (2 m)
    perfect[0, 0, 0, 0, 1] = 1.0  # no target: ignored whatever it says
    perfect[0, 0, 3, 0, 2] = 1.0  # 3.9 m -> bin 3 (4 m)
    assert float(depth_bce_loss(perfect, gt, BINS)) < 1e-4


def test_gradient_only_at_cells_with_targets_and_empty_is_zero():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, BINS.numel(), 2, 2, requires_grad=True)
    gt = torch.zeros(2, 3, 2, 2)
    gt[1, 2, 0, 1] = 3.0
    depth_bce_loss(logits.softmax(2), gt, BINS).backward()
    moved = logits.grad.abs().sum(2) > 0  # [B, N, fH, fW]
    assert moved.nonzero().tolist() == [[1, 2, 0, 1]]
    empty = depth_bce_loss(logits.softmax(2), torch.zeros(2, 3, 2, 2), BINS)
    assert float(empty.detach()) == 0.0


def test_shape_mismatch_names_the_grid():
    with pytest.raises(ValueError, match="feature grid"):
        depth_bce_loss(torch.rand(1, 1, 4, 2, 3), torch.rand(1, 1, 3, 2), BINS)


def _preds(cfg, num_d: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    h = cfg.model.bev_h
    preds = {}
    for t, group in enumerate(cfg.model.bevdet.head_tasks):
        k = len(group.split("+"))
        for name, c in (("heatmap", k), ("reg", 2), ("height", 1), ("dim", 3), ("rot", 2), ("vel", 2)):
            preds[f"t{t}.{name}"] = torch.randn(1, c, h, h)
    preds["depth"] = torch.rand(1, 2, num_d, 3, 4).softmax(2)
    return preds


def test_criterion_adds_depth_term_or_warns_without_targets():
    cfg = load_config("bevdet_debug", ["model.bev_h=16", "model.bev_w=16"])
    boxes = [torch.tensor([[1.0, 2.0, 0.0, 4.0, 2.0, 1.5, 0.3, 0.0, 0.0]])]
    labels = [torch.tensor([0])]
    cfg.model.bevdet.depth_loss_weight = 0.0  # official BEVDet: no depth term
    plain = build_criterion(cfg)
    cfg.model.bevdet.depth_loss_weight = 3.0
    crit = build_criterion(cfg)
    num_d = crit.depth_bins_m.numel()
    preds = _preds(cfg, num_d)
    with pytest.warns(UserWarning, match="no depth_gt"):
        assert "loss_depth" not in crit(preds, boxes, labels)  # fake data without lidar: no depth term
    preds["depth_gt"] = torch.full((1, 2, 3, 4), 10.0)
    out, base = crit(preds, boxes, labels), plain(preds, boxes, labels)
    assert "loss_depth" not in base
    expect = 3.0 * depth_bce_loss(preds["depth"], preds["depth_gt"], crit.depth_bins_m)
    assert float(out["loss_depth"]) == pytest.approx(float(expect))
    assert float(out["loss"]) == pytest.approx(float(base["loss"] + expect), rel=1e-6)
