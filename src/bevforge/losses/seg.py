"""BEV map-segmentation loss: multi-label BCE + soft dice (classes overlap, one sigmoid each).

Shape letters: B batch, S classes, H/W = bev_h/bev_w.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dice_loss(logits: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft dice per (sample, class), averaged: ``[B, S, H, W]`` -> scalar."""
    p = logits.sigmoid().flatten(2)  # [B, S, H*W]
    t = target.to(p.dtype).flatten(2)  # [B, S, H*W]
    inter = (p * t).sum(-1)
    return (1 - (2 * inter + smooth) / (p.sum(-1) + t.sum(-1) + smooth)).mean()


def seg_loss(
    logits: torch.Tensor, target: torch.Tensor, bce_weight: float = 1.0, dice_weight: float = 1.0
) -> torch.Tensor:
    """``logits [B, S, H, W]``, ``target [B, S, H, W]`` in {0, 1} -> scalar ``bce + dice``."""
    if logits.shape != target.shape:
        raise ValueError(
            f"seg logits {tuple(logits.shape)} and target {tuple(target.shape)} differ: the seg target "
            f"must be [B, S, bev_h, bev_w] with S = len(model.seg_classes)"
        )
    bce = F.binary_cross_entropy_with_logits(logits.float(), target.float())
    return bce_weight * bce + dice_weight * dice_loss(logits.float(), target)
