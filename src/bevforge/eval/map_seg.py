"""BEV map-segmentation IoU over a split, accumulated as intersection / union pixel counts.

Shape letters: B batch, S seg classes, H/W BEV grid (``bev_h x bev_w``, row = y, col = x, like
``Batch.seg_target``). A pixel is predicted positive when ``sigmoid(logit) > 0.5`` (``logit > 0``).
IoU of a class = sum of intersections / sum of unions over the whole split (not a mean over samples);
a class with an empty union everywhere gets NaN and is left out of the mIoU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch


@dataclass
class SegIoU:
    """Running per-class intersection/union counts."""

    classes: tuple[str, ...]
    intersection: np.ndarray = field(init=False)  # [S] int64 pixels
    union: np.ndarray = field(init=False)  # [S] int64 pixels

    def __post_init__(self) -> None:
        self.intersection = np.zeros(len(self.classes), dtype=np.int64)
        self.union = np.zeros(len(self.classes), dtype=np.int64)

    def update(self, seg_logits: torch.Tensor, seg_target: torch.Tensor) -> None:
        """Add a batch: ``seg_logits`` [B, S, H, W] raw logits, ``seg_target`` [B, S, H, W] {0, 1}."""
        if seg_logits.dim() != 4 or seg_logits.shape != seg_target.shape:
            raise ValueError(
                f"seg_logits {tuple(seg_logits.shape)} and seg_target {tuple(seg_target.shape)} must both be "
                f"[B, S, H, W] of the same shape (model.bev_h/bev_w and data seg grid must agree)"
            )
        if seg_logits.shape[1] != len(self.classes):
            raise ValueError(f"seg_logits has {seg_logits.shape[1]} classes, expected {len(self.classes)}")
        pred = seg_logits.detach() > 0  # [B, S, H, W] sigmoid > 0.5
        gt = seg_target.detach().to(pred.device) > 0.5
        inter = (pred & gt).sum(dim=(0, 2, 3))  # [S]
        union = (pred | gt).sum(dim=(0, 2, 3))  # [S]
        self.intersection += inter.cpu().numpy().astype(np.int64)
        self.union += union.cpu().numpy().astype(np.int64)

    def merge(self, other: SegIoU) -> None:
        """Add another accumulator's counts (e.g. from another rank)."""
        self.intersection += other.intersection
        self.union += other.union

    def iou(self) -> np.ndarray:
        """[S] IoU per class (NaN where the union is empty)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.union > 0, self.intersection / np.maximum(self.union, 1), np.nan)

    def result(self) -> dict[str, Any]:
        """``{"iou": {class: value}, "miou": mean over classes with a non-empty union, "counts": ...}``."""
        iou = self.iou()
        valid = ~np.isnan(iou)
        return {
            "iou": {c: float(v) for c, v in zip(self.classes, iou)},
            "miou": float(iou[valid].mean()) if valid.any() else float("nan"),
            "intersection": {c: int(v) for c, v in zip(self.classes, self.intersection)},
            "union": {c: int(v) for c, v in zip(self.classes, self.union)},
        }

    def state(self) -> dict[str, Any]:
        return {
            "classes": list(self.classes),
            "intersection": self.intersection.tolist(),
            "union": self.union.tolist(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SegIoU:
        acc = cls(tuple(state["classes"]))
        acc.intersection = np.asarray(state["intersection"], dtype=np.int64)
        acc.union = np.asarray(state["union"], dtype=np.int64)
        return acc
