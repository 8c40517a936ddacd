"""Parameter groups, the cosine + warm-up schedule and the lr scaling rule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bevforge.config import TrainConfig
from bevforge.train.optim import build_optimizer, build_scheduler, lr_factor, param_groups, scaled_lr


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
        self.query_embed = nn.Embedding(5, 4)
        self.head = nn.Linear(4, 2)
        self.norm = nn.LayerNorm(4)
        self.frozen = nn.Linear(2, 2)
        self.frozen.requires_grad_(False)


def test_param_groups_backbone_mult_and_no_decay() -> None:
    torch.manual_seed(0)
    net = _Net()
    groups = {g["name"]: g for g in param_groups(net, lr=1.0, weight_decay=0.05, backbone_lr_mult=0.1)}
    ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
    assert id(net.backbone[0].weight) in ids["backbone_decay"]
    assert id(net.backbone[0].bias) in ids["backbone_no_decay"]
    assert id(net.backbone[1].weight) in ids["backbone_no_decay"]  # BN weight
    assert id(net.head.weight) in ids["head_decay"]
    for p in (net.head.bias, net.norm.weight, net.query_embed.weight):
        assert id(p) in ids["head_no_decay"]
    assert groups["backbone_decay"]["lr"] == pytest.approx(0.1)
    assert groups["head_decay"]["lr"] == pytest.approx(1.0)
    assert groups["head_no_decay"]["weight_decay"] == 0.0 and groups["head_decay"]["weight_decay"] == 0.05
    n_trainable = sum(1 for p in net.parameters() if p.requires_grad)
    assert sum(len(g["params"]) for g in groups.values()) == n_trainable  # frozen ones left out


def test_schedule_warmup_then_cosine_to_min() -> None:
    f = [lr_factor(s, 100, warmup_iters=10, warmup_ratio=1 / 3, min_lr_ratio=1e-3) for s in range(101)]
    assert f[0] == pytest.approx(1 / 3, rel=1e-3)
    assert all(a < b for a, b in zip(f[:10], f[1:11]))  # warm-up rises
    assert all(a >= b for a, b in zip(f[10:], f[11:]))  # cosine decays
    assert f[100] == pytest.approx(1e-3)


def test_scheduler_drives_every_group_from_its_own_base() -> None:
    torch.manual_seed(0)
    net = _Net()
    cfg = TrainConfig(lr=1e-2, warmup_iters=0, min_lr_ratio=0.0, backbone_lr_mult=0.5)
    opt = build_optimizer(net, cfg, torch.device("cpu"), cfg.lr)
    sched = build_scheduler(opt, cfg, total_steps=4)
    for _ in range(2):
        opt.step()
        sched.step()
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs["head_decay"] == pytest.approx(0.5e-2)  # half way through the cosine
    assert lrs["backbone_decay"] == pytest.approx(0.25e-2)


def test_auto_scale_lr() -> None:
    cfg = TrainConfig(lr=2e-4, base_batch_size=8)
    assert scaled_lr(cfg, 32) == pytest.approx(2e-4)  # off unless asked
    cfg.auto_scale_lr = True
    assert scaled_lr(cfg, 32) == pytest.approx(8e-4)
