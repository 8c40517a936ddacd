"""Sigmoid focal loss (mmdet ``FocalLoss(use_sigmoid=True)``) and the masked, weighted L1 loss.

Shape letters: N rows (queries), K classes, E code entries.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, gamma: float = 2.0, alpha: float = 0.25
) -> torch.Tensor:
    """Element-wise focal loss, same shape as ``logits`` (``targets`` in {0, 1}, same shape).

    ``BCE(x, t) * (alpha t + (1 - alpha)(1 - t)) * pt^gamma`` with ``pt = (1 - p) t + p (1 - t)``.
    """
    p = logits.sigmoid()
    targets = targets.to(logits.dtype)
    pt = (1 - p) * targets + p * (1 - targets)
    weight = (alpha * targets + (1 - alpha) * (1 - targets)) * pt.pow(gamma)
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none") * weight


def weighted_l1_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Sum of ``|pred - target| * weight`` over rows whose target is finite everywhere (official:
    a GT box with an unknown (NaN) velocity is left out of the L1 loss entirely). ``[..., N, E]`` ->
    ``[...]`` (a scalar for ``[N, E]``; leading dims, e.g. decoder layers, are summed separately)."""
    valid = torch.isfinite(target).all(dim=-1, keepdim=True)  # [..., N, 1]
    # masked, not indexed (a boolean index is a device sync); an invalid row's target becomes the
    # prediction itself, so it adds exactly 0 and no NaN reaches the gradient through abs()
    safe = torch.where(valid, target, pred.detach())  # [..., N, E]
    return ((pred - safe).abs() * weight * valid).sum(dim=(-2, -1))
