"""BEVFormer detection head: DETR-style decoder over the BEV with iterative box refinement.

Shape letters: B batch, Q object queries, C channels, K classes, D decoder layers, H/W = bev_h/bev_w.

Official ``BEVFormerHead`` + ``DetectionTransformerDecoder``: the query embedding ``[Q, 2C]`` splits into
``query_pos`` and ``query``; reference points ``sigmoid(Linear(query_pos))`` are normalised (x, y, z)
over ``pc_range``. Each layer is self-attn -> norm -> deformable cross-attn over the BEV (1 level) ->
norm -> FFN -> norm; after each layer the reg branch refines the reference points
(``sigmoid(delta + inverse_sigmoid(ref))`` on code dims 0, 1, 4) and the refined points, denormalised
to metres, are that layer's box centre. Box code order: ``structures/boxes.py``
``(cx, cy, log l, log w, cz, log h, sin, cos, vx, vy)``.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from bevforge.nn.ffn import FFN
from bevforge.nn.msdeform_attn import MSDeformAttn
from bevforge.nn.self_attention import QuerySelfAttention
from bevforge.structures.boxes import CODE_DIM


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``log(x / (1 - x))`` with the official clamping."""
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class DecoderLayer(nn.Module):
    """self-attn -> norm -> cross-attn (deformable, BEV) -> norm -> FFN -> norm (post-norm)."""

    def __init__(
        self, embed_dims: int, ffn_dims: int, num_heads: int, num_points: int, dropout: float
    ) -> None:
        super().__init__()
        self.self_attn = QuerySelfAttention(embed_dims, num_heads, dropout)  # nn.MultiheadAttention's keys
        self.self_attn_drop = nn.Dropout(dropout)
        self.cross_attn = MSDeformAttn(
            embed_dims, num_heads, num_levels=1, num_points=num_points, dropout=dropout
        )
        self.ffn = FFN(embed_dims, ffn_dims, dropout)
        self.norms = nn.ModuleList(nn.LayerNorm(embed_dims) for _ in range(3))

    def forward(
        self,
        query: torch.Tensor,
        query_pos: torch.Tensor,
        bev: torch.Tensor,
        reference_xy: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
    ) -> torch.Tensor:
        """``query, query_pos [B, Q, C]``, ``bev [B, H*W, C]``, ``reference_xy [B, Q, 1, 2]``
        -> ``[B, Q, C]``."""
        qk = query + query_pos
        attn = self.self_attn(qk, query)  # [B, Q, C]
        query = self.norms[0](query + self.self_attn_drop(attn))
        query = self.cross_attn(
            query, bev, reference_xy, spatial_shapes, level_start_index, query_pos=query_pos
        )
        query = self.norms[1](query)
        return self.norms[2](self.ffn(query))


def _cls_branch(embed_dims: int, num_classes: int, num_fcs: int = 2) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_fcs):
        layers += [nn.Linear(embed_dims, embed_dims), nn.LayerNorm(embed_dims), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.Linear(embed_dims, num_classes))


def _reg_branch(embed_dims: int, code_size: int, num_fcs: int = 2) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num_fcs):
        layers += [nn.Linear(embed_dims, embed_dims), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(embed_dims, code_size))


class DetectionHead(nn.Module):
    def __init__(
        self,
        embed_dims: int = 256,
        ffn_dims: int = 512,
        dropout: float = 0.1,
        num_queries: int = 900,
        num_classes: int = 10,
        num_layers: int = 6,
        num_heads: int = 8,
        num_points: int = 4,
        bev_h: int = 50,
        bev_w: int = 50,
        pc_range: tuple[float, ...] = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0),
    ) -> None:
        super().__init__()
        if len(pc_range) != 6:
            raise ValueError(
                f"pc_range needs 6 numbers (x_min, y_min, z_min, x_max, y_max, z_max), got {pc_range}"
            )
        self.embed_dims, self.num_queries, self.num_classes = embed_dims, num_queries, num_classes
        self.bev_h, self.bev_w = bev_h, bev_w
        self.register_buffer("pc_min", torch.tensor(pc_range[:3], dtype=torch.float32), persistent=False)
        self.register_buffer(
            "pc_size", torch.tensor([pc_range[3 + i] - pc_range[i] for i in range(3)]), persistent=False
        )
        # the BEV as a 1-level value map for the cross-attention
        self.bev_shapes = ((bev_h, bev_w),)  # static (H, W): nothing to copy or read back per call
        self.register_buffer("bev_start", torch.zeros(1, dtype=torch.long), persistent=False)  # [1]
        self.query_embedding = nn.Embedding(num_queries, 2 * embed_dims)
        self.reference_points = nn.Linear(embed_dims, 3)
        layer = DecoderLayer(embed_dims, ffn_dims, num_heads, num_points, dropout)
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.cls_branches = nn.ModuleList(_cls_branch(embed_dims, num_classes) for _ in range(num_layers))
        self.reg_branches = nn.ModuleList(_reg_branch(embed_dims, CODE_DIM) for _ in range(num_layers))
        self.init_weights()

    def init_weights(self) -> None:
        """Official: xavier on the decoder's matrices, deformable-attn init, focal prior 0.01 on cls bias."""
        for p in self.layers.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        for m in self.layers.modules():
            if isinstance(m, MSDeformAttn):
                m.init_weights()
        nn.init.xavier_uniform_(self.reference_points.weight)
        nn.init.zeros_(self.reference_points.bias)
        bias = -math.log((1 - 0.01) / 0.01)
        for branch in self.cls_branches:
            nn.init.constant_(branch[-1].bias, bias)

    def forward(self, bev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``bev [B, bev_h*bev_w, C]`` -> ``cls_logits [D, B, Q, K]``, ``box_code [D, B, Q, 10]`` (metres)."""
        assert bev.dim() == 3 and bev.shape[1] == self.bev_h * self.bev_w, bev.shape
        B = bev.shape[0]
        query_pos, query = self.query_embedding.weight.split(self.embed_dims, dim=1)  # 2 x [Q, C]
        query_pos = query_pos[None].expand(B, -1, -1)  # [B, Q, C]
        query = query[None].expand(B, -1, -1)  # [B, Q, C]
        # [B, Q, 3] normalised (x, y, z); fp32 under autocast (a bf16 centre is off by ~0.4 m)
        reference = self.reference_points(query_pos).float().sigmoid()
        all_cls, all_codes = [], []
        for layer, cls_branch, reg_branch in zip(self.layers, self.cls_branches, self.reg_branches):
            query = layer(query, query_pos, bev, reference[:, :, None, :2], self.bev_shapes, self.bev_start)
            delta = reg_branch(query)  # [B, Q, 10]
            # refined normalised centre from code dims (0, 1, 4): [B, Q, 3]
            centre = (
                torch.cat([delta[..., 0:2], delta[..., 4:5]], -1) + inverse_sigmoid(reference)
            ).sigmoid()
            centre_m = centre * self.pc_size + self.pc_min  # [B, Q, 3] metres
            code = torch.cat(
                [centre_m[..., :2], delta[..., 2:4], centre_m[..., 2:3], delta[..., 5:]], dim=-1
            )  # [B, Q, 10]
            all_cls.append(cls_branch(query))  # [B, Q, K]
            all_codes.append(code)
            reference = centre.detach()
        return torch.stack(all_cls), torch.stack(all_codes)  # [D, B, Q, K], [D, B, Q, 10]
