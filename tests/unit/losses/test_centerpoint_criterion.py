import math

import pytest
import torch

from bevforge.config import Config
from bevforge.losses.build import build_criterion
from bevforge.losses.centerpoint import CenterPointCriterion, gaussian_focal_loss
from bevforge.losses.centerpoint_targets import build_targets, targets_as_predictions
from bevforge.models.centerpoint_head import CenterPointHead

PCR = (-8.0, -8.0, -5.0, 8.0, 8.0, 3.0)
TASKS = ((0,), (1, 2))


def _gt():
    b0 = torch.tensor(
        [
            [0.3, -2.6, 1.0, 4.5, 1.9, 1.6, 0.4, 2.0, -1.0],
            [-4.2, 5.1, 0.2, 0.8, 0.7, 1.8, -2.5, 0.3, 0.4],
            [5.5, 5.5, -0.3, 2.0, 0.8, 1.2, 3.0, -1.0, 0.0],
        ]
    )
    return [b0, torch.zeros(0, 9)], [torch.tensor([0, 1, 2]), torch.zeros(0, dtype=torch.long)]


def _perfect_preds(boxes, labels, H=16, W=16):
    """Logits +-8 at the peaks / elsewhere and the regression maps filled with the targets."""
    return targets_as_predictions(build_targets(boxes, labels, TASKS, PCR, H, W))


def test_gaussian_focal_loss_values():
    target = torch.tensor([1.0, 0.5, 0.0])
    logits = torch.tensor([0.0, 0.0, 0.0])  # p = 0.5 everywhere
    expected = -math.log(0.5) * 0.25 * (1 + 0.5**4 + 1)  # pos term + reduced negatives
    assert math.isclose(float(gaussian_focal_loss(logits, target)), expected, rel_tol=1e-5)


def test_loss_near_zero_for_perfect_and_larger_when_perturbed():
    torch.manual_seed(0)
    boxes, labels = _gt()
    crit = CenterPointCriterion(TASKS, PCR)
    perfect = _perfect_preds(boxes, labels)
    losses = crit(perfect, boxes, labels)
    assert set(losses) >= {"loss", "loss_heatmap", "loss_bbox", "t0.loss_heatmap", "t1.loss_bbox"}
    assert float(losses["loss_heatmap"]) < 1e-3 and float(losses["loss_bbox"]) < 1e-4
    noisy = {k: v + (1.0 if "heatmap" in k else 0.3) * torch.randn_like(v) for k, v in perfect.items()}
    worse = crit(noisy, boxes, labels)
    assert float(worse["loss_bbox"]) > 0.05 and float(worse["loss_heatmap"]) > float(losses["loss_heatmap"])
    # code weights 0.2 on velocity: a velocity error costs a fifth of a height error of the same size
    dz, dv = dict(perfect), dict(perfect)
    dz["t0.height"] = perfect["t0.height"] + 1.0
    dv["t0.vel"] = perfect["t0.vel"] + torch.tensor([1.0, 0.0])[None, :, None, None]
    lz, lv = float(crit(dz, boxes, labels)["t0.loss_bbox"]), float(crit(dv, boxes, labels)["t0.loss_bbox"])
    assert math.isclose(lv, 0.2 * lz, rel_tol=1e-3) and math.isclose(lz, 0.25, rel_tol=1e-3)


def test_gradients_reach_every_output_and_parameter_with_an_empty_sample():
    torch.manual_seed(0)
    boxes, labels = _gt()
    head = CenterPointHead(8, TASKS, 16, 16, PCR, share_channels=8, head_channels=8)
    preds = head(torch.randn(2, 8, 16, 16))
    for v in preds.values():
        v.retain_grad()
    crit = CenterPointCriterion(TASKS, PCR)
    losses = crit(preds, boxes, labels)
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"])
    for k, v in preds.items():
        assert v.grad is not None and v.grad.abs().sum() > 0, k
    for name, p in head.named_parameters():
        assert p.grad is not None, name
    # a batch without any box still keeps every branch in the graph (DDP needs no unused parameters)
    head.zero_grad()
    preds = head(torch.randn(2, 8, 16, 16))
    empty = [torch.zeros(0, 9), torch.zeros(0, 9)]
    no_labels = [torch.zeros(0, dtype=torch.long)] * 2
    out = crit(preds, empty, no_labels)
    out["loss"].backward()
    assert float(out["loss_bbox"].detach()) == 0.0
    assert all(p.grad is not None for p in head.parameters())


def test_nan_velocity_is_masked_not_propagated():
    boxes, labels = _gt()
    boxes[0][0, 7:] = float("nan")
    crit = CenterPointCriterion(TASKS, PCR)
    clean = [b.clone() for b in boxes]
    clean[0][0, 7:] = 0.0
    preds = _perfect_preds(clean, labels)
    losses = crit(preds, boxes, labels)
    assert torch.isfinite(losses["loss"]) and float(losses["loss_bbox"]) < 1e-4


def test_build_criterion_dispatch_and_clear_errors():
    cfg = Config()
    cfg.model.arch = "bevdet"
    crit = build_criterion(cfg)
    assert isinstance(crit, CenterPointCriterion) and len(crit.tasks) == 6
    assert crit.tasks[1] == (1, 2) and crit.tasks[5] == (8, 9)
    with pytest.raises(KeyError, match="head_tasks"):
        crit({"t0.heatmap": torch.zeros(1, 1, 4, 4)}, [torch.zeros(0, 9)], [torch.zeros(0, dtype=torch.long)])
    cfg.model.bevdet.head_tasks = ("car", "lorry")
    with pytest.raises(ValueError, match="lorry"):
        build_criterion(cfg)
