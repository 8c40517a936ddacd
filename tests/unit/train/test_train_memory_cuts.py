"""Training steps with the memory cuts as BEVFormer-base runs them on a GPU (frozen BNs folded into the
backbone convs, the SCA's projections recomputed in backward; and the FFN's, with its dropout, an option),
the history frames run first, two steps in a row (the fold cache across an optimizer step): in fp32 the
same losses and gradients as without them; under bf16 autocast (the recompute after a cached-cast history
pass) the same losses to bf16 rounding."""

from __future__ import annotations

import torch

from bevforge.bench.train import FakeLoader
from bevforge.config import load_config
from bevforge.data.device_images import finish_images
from bevforge.train.distributed import init_distributed
from bevforge.train.optim import build_optimizer, build_scheduler
from bevforge.train.setup import build_parts, seed_everything
from bevforge.train.step import Stepper

# the debug recipe with base's backbone freezing (its BNs frozen: folded) and a two-frame queue
BASE_LIKE = ["model.backbone.norm_eval=true", "model.backbone.frozen_stages=1", "data.queue_length=2"]


def _steps(overrides: list[str], amp: str) -> tuple[list[float], list[dict[str, torch.Tensor]]]:
    """Losses and gradients of two training steps (an AdamW step between them)."""
    cfg = load_config("configs/bevformer_debug.py", [*BASE_LIKE, *overrides])
    info = init_distributed()
    seed_everything(0, False)
    model, criterion, loader = build_parts(cfg, info, None, None, FakeLoader(cfg, num=2))
    optimizer = build_optimizer(model, cfg.train, info.device, cfg.train.lr)
    scheduler = build_scheduler(optimizer, cfg.train, 10)
    stepper = Stepper(model, criterion, optimizer, scheduler, device=info.device, amp=amp,
                      grad_clip=cfg.train.grad_clip, accum_steps=1, max_nan_steps=0)  # fmt: skip
    model.train()
    losses, grads = [], []
    for batch in loader:
        torch.manual_seed(1)  # the same dropout masks in both runs
        out = stepper.forward_backward(finish_images(batch, cfg.data))
        losses.append(float(sum(out.values())))
        grads.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})
        stepper.optimizer_step()
    return losses, grads


CUTS = ["model.backbone.fold_bn=true", "model.sca_recompute=on", "model.ffn_recompute=true"]
KEPT = ["model.backbone.fold_bn=false", "model.sca_recompute=off", "model.ffn_recompute=false"]


def test_memory_cuts_train_like_the_kept_step_fp32():
    """First step: every gradient to 1e-4 of its largest entry. Second step (after AdamW moved the
    weights the folds are made of): the losses to 1e-5 (a stale fold would move them far more) and each
    gradient to 1e-3 of its norm: AdamW's first step is ~lr * sign(g), so float noise in near-zero
    gradients becomes lr-sized weight differences, and the backbone's second-step gradients differ by
    ~1.5e-4 of their norm between any two summation orders (a decoder change moved the largest entrywise
    difference from 2e-5 to 5e-4, thirteenth session)."""
    got_losses, got_grads = _steps(CUTS, "off")
    want_losses, want_grads = _steps(KEPT, "off")
    torch.testing.assert_close(torch.tensor(got_losses), torch.tensor(want_losses), rtol=1e-5, atol=1e-5)
    (got_first, got_second), (want_first, want_second) = got_grads, want_grads
    assert got_first.keys() == want_first.keys() == got_second.keys() and len(got_first) > 50
    for name, want in want_first.items():
        scale = want.abs().max().item() + 1e-12
        torch.testing.assert_close(got_first[name], want, rtol=0, atol=1e-4 * scale, msg=name)
    for name, want in want_second.items():
        error = (got_second[name] - want).norm() / (want.norm() + 1e-12)
        assert error < 1e-3, (name, float(error))


def test_memory_cuts_train_under_bf16_autocast():
    got_losses, _ = _steps(CUTS, "bf16")
    want_losses, _ = _steps(KEPT, "bf16")
    assert len(got_losses) == 2 and all(torch.isfinite(torch.tensor(got_losses)))
    torch.testing.assert_close(torch.tensor(got_losses), torch.tensor(want_losses), rtol=2e-3, atol=0)
