"""Feed-forward block of the transformer layers (official BEVFormer: 2 linear layers, ReLU, residual)."""

from __future__ import annotations

import torch
from torch import nn


class FFN(nn.Module):
    """``x + dropout(W2 dropout(relu(W1 x)))``; shape-preserving ``[..., C]``."""

    def __init__(self, embed_dims: int, ffn_dims: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(embed_dims, ffn_dims),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(ffn_dims, embed_dims),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.layers(x)
