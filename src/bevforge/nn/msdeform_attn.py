"""Generic multi-scale deformable attention (mmcv ``MultiScaleDeformableAttention`` semantics).

Shape letters: B batch, Q queries, S value tokens (sum over levels of H_l * W_l), C channels, M heads,
D = C / M channels per head, L levels, P points per level.

Each query predicts, per head, level and point, a 2-D offset (in cells of that level) from its
normalised reference point and an attention weight (softmax over the L * P samples of a head). The
samples are gathered bilinearly by :func:`bevforge.ops.msda.multi_scale_deformable_attention`.
The module includes the residual: ``query + dropout(output_proj(attention))``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bevforge.ops.msda import multi_scale_deformable_attention
from bevforge.ops.msda.shapes import SpatialShapes, num_levels, sampling_locations, wh_normaliser


def init_xavier_linear(linear: nn.Linear) -> None:
    """Xavier-uniform weight, zero bias (the official init of value and output projections)."""
    nn.init.xavier_uniform_(linear.weight)
    nn.init.zeros_(linear.bias)


def init_deformable_attention(
    sampling_offsets: nn.Linear,
    attention_weights: nn.Linear,
    projections: tuple[nn.Linear, ...],
    *,
    num_heads: int,
    num_levels: int,
    num_points: int,
) -> None:
    """Official init of a deformable attention (mmcv ``MultiScaleDeformableAttention.init_weights``).

    ``sampling_offsets`` gets a zero weight and a bias laid out ``[M, L, P, 2]``: head ``m`` points in
    direction ``2 pi m / M`` (scaled so its largest component is 1), point ``i`` at distance ``i + 1``
    cells. ``attention_weights`` starts at zero (uniform softmax); each of ``projections`` (in order)
    gets :func:`init_xavier_linear`. A module with several value queues passes
    ``num_levels = queues * levels`` (its bias is laid out ``[M, V * L, P, 2]``).
    """
    nn.init.zeros_(sampling_offsets.weight)
    thetas = torch.arange(num_heads, dtype=torch.float32) * (2.0 * math.pi / num_heads)
    grid = torch.stack([thetas.cos(), thetas.sin()], dim=-1)  # [M, 2]
    grid = grid / grid.abs().max(dim=-1, keepdim=True)[0]
    # [M, 2] -> [M, 1, 1, 2] -> [M, L, P, 2]
    grid = grid.view(num_heads, 1, 1, 2).repeat(1, num_levels, num_points, 1)
    for i in range(num_points):
        grid[:, :, i, :] *= i + 1
    with torch.no_grad():
        sampling_offsets.bias.copy_(grid.view(-1))
    nn.init.zeros_(attention_weights.weight)
    nn.init.zeros_(attention_weights.bias)
    for linear in projections:
        init_xavier_linear(linear)


class MSDeformAttn(nn.Module):
    """Deformable attention over a multi-level value map.

    Parameter names follow mmcv (``sampling_offsets``, ``attention_weights``, ``value_proj``,
    ``output_proj``) so official checkpoints map one to one.
    """

    def __init__(
        self,
        embed_dims: int = 256,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 4,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if embed_dims % num_heads != 0:
            raise ValueError(f"embed_dims ({embed_dims}) must be divisible by num_heads ({num_heads})")
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.sampling_offsets = nn.Linear(embed_dims, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dims, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dims, embed_dims)
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        self.dropout = nn.Dropout(dropout)
        self.init_weights()

    def init_weights(self) -> None:
        """Official init: offsets start on a ring of directions (one per head), growing with the point."""
        init_deformable_attention(
            self.sampling_offsets,
            self.attention_weights,
            (self.value_proj, self.output_proj),
            num_heads=self.num_heads,
            num_levels=self.num_levels,
            num_points=self.num_points,
        )

    def forward(
        self,
        query: torch.Tensor,
        value: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: SpatialShapes,
        level_start_index: torch.Tensor,
        query_pos: torch.Tensor | None = None,
        key_padding_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``query [B, Q, C]``, ``value [B, S, C]``, ``reference_points [B, Q, L, 2]`` normalised (x, y)
        in [0, 1], ``spatial_shapes [L, 2]`` (H, W) or static (H, W) int pairs, ``level_start_index [L]``,
        ``query_pos [B, Q, C]``, ``key_padding_mask [B, S]`` (True = ignore). Returns ``[B, Q, C]`` (with
        the residual)."""
        assert query.dim() == 3 and value.dim() == 3, (query.shape, value.shape)
        assert reference_points.dim() == 4 and reference_points.shape[-1] == 2, reference_points.shape
        B, Q, C = query.shape
        S = value.shape[1]
        M, L, P = self.num_heads, self.num_levels, self.num_points
        if num_levels(spatial_shapes) != L:
            raise ValueError(f"spatial_shapes has {num_levels(spatial_shapes)} levels, module expects {L}")
        identity = query
        if query_pos is not None:
            query = query + query_pos
        v = self.value_proj(value)  # [B, S, C]
        if key_padding_mask is not None:
            v = v.masked_fill(key_padding_mask[..., None], 0.0)
        v = v.view(B, S, M, C // M)  # [B, S, M, D]
        offsets = self.sampling_offsets(query).view(B, Q, M, L, P, 2)  # [B, Q, M, L, P, 2] in cells
        weights = self.attention_weights(query).view(B, Q, M, L * P).softmax(-1)
        weights = weights.view(B, Q, M, L, P)  # [B, Q, M, L, P]
        # (W, H) per level, to turn cell offsets into normalised (x, y) offsets: [L, 2]
        normalizer = wh_normaliser(spatial_shapes, torch.float32, offsets.device)
        # fp32 locations even under autocast: bf16 (8-bit mantissa) would misplace samples by up to
        # ~0.4-0.8 cells on a 200-cell map. [B, Q, 1, L, 1, 2] + [B, Q, M, L, P, 2] / [1, 1, 1, L, 1, 2]
        ref = reference_points.float()[:, :, None, :, None, :]
        locations = sampling_locations(ref, offsets, normalizer[None, None, None, :, None])
        if not torch.is_autocast_enabled(v.device.type):
            # a model cast to half precision (export): the reference's grid_sample needs one dtype
            locations, weights = locations.to(v.dtype), weights.to(v.dtype)
        out = multi_scale_deformable_attention(
            v, spatial_shapes, level_start_index, locations, weights
        )  # [B, Q, C]
        return identity + self.dropout(self.output_proj(out))
