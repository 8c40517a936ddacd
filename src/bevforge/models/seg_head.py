"""BEV map-segmentation head: BEV features -> per-class logits on the BEV grid.

Shape letters: B batch, C channels, S segmentation classes, H/W = bev_h/bev_w.

Classes overlap (a lane divider lies on the drivable area), so every class is an independent sigmoid
(multi-label); the loss is in ``losses/seg.py``. Grid layout as CONTRACTS.md: query ``i = row * bev_w + col``,
row = y (row 0 at y_min), col = x.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class SegHead(nn.Module):
    def __init__(
        self,
        embed_dims: int = 256,
        num_classes: int = 3,
        bev_h: int = 50,
        bev_w: int = 50,
        prior: float = 0.1,
    ) -> None:
        super().__init__()
        self.bev_h, self.bev_w, self.embed_dims = bev_h, bev_w, embed_dims
        self.layers = nn.Sequential(
            nn.Conv2d(embed_dims, embed_dims, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(embed_dims, embed_dims, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(embed_dims, num_classes, 1),
        )
        nn.init.constant_(self.layers[-1].bias, -math.log((1 - prior) / prior))

    def forward(self, bev: torch.Tensor) -> torch.Tensor:
        """``bev [B, bev_h*bev_w, C]`` -> ``seg_logits [B, S, bev_h, bev_w]``."""
        assert bev.dim() == 3 and bev.shape[1] == self.bev_h * self.bev_w, bev.shape
        B, _, C = bev.shape
        x = bev.transpose(1, 2).reshape(B, C, self.bev_h, self.bev_w)  # [B, HW, C] -> [B, C, H, W]
        return self.layers(x)  # [B, S, H, W]
