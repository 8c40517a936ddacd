"""Learned positional encoding of the BEV grid (mmdet ``LearnedPositionalEncoding``, as in BEVFormer).

Shape letters: B batch, H/W BEV rows/cols, F features per axis, C = 2 F channels.
"""

from __future__ import annotations

import torch
from torch import nn


class LearnedPositionalEncoding(nn.Module):
    """``pos[:, :, row, col] = concat(col_embed[col], row_embed[row])``; returns ``[B, 2F, H, W]``.

    Parameter names (``row_embed``, ``col_embed``) and the uniform [0, 1) init follow mmdet.
    """

    def __init__(self, num_feats: int, row_num_embed: int, col_num_embed: int) -> None:
        super().__init__()
        self.num_feats = num_feats
        self.row_num_embed = row_num_embed
        self.col_num_embed = col_num_embed
        self.row_embed = nn.Embedding(row_num_embed, num_feats)
        self.col_embed = nn.Embedding(col_num_embed, num_feats)
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self, batch_size: int) -> torch.Tensor:
        h, w = self.row_num_embed, self.col_num_embed
        device = self.row_embed.weight.device
        x_embed = self.col_embed(torch.arange(w, device=device))  # [W, F]
        y_embed = self.row_embed(torch.arange(h, device=device))  # [H, F]
        # [1, W, F] -> [H, W, F] and [H, 1, F] -> [H, W, F]; cat -> [H, W, 2F]
        pos = torch.cat(
            (x_embed.unsqueeze(0).expand(h, w, -1), y_embed.unsqueeze(1).expand(h, w, -1)), dim=-1
        )
        # [H, W, 2F] -> [2F, H, W] -> [B, 2F, H, W]
        return pos.permute(2, 0, 1).unsqueeze(0).expand(batch_size, -1, -1, -1)
