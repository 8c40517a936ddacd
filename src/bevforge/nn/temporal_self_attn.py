"""Temporal self-attention of BEVFormer: deformable attention over [previous BEV, current BEV queries].

Shape letters: B batch, Q = bev_h * bev_w BEV queries, C channels, M heads, D = C / M, L levels (1),
P points, V = 2 BEV queues (previous, current), stacked queue-major in the batch dim ([V * B]).

Official semantics (``TemporalSelfAttention``): offsets and weights are predicted from the
concatenation ``[prev_bev, query + pos]``; one set per queue; the two sampled results are averaged.
Where a sample has no previous BEV the official code uses the current query as the "previous" BEV;
that is done here per sample (``has_prev``), so a batch may mix scene starts and continuations.

``recompute`` (``nn/recompute.py``: auto / on / off): the deformable attention's value projection,
offsets, weights and sampling locations are recomputed in backward instead of kept (the MSDA kernel's
output is kept): at BEVFormer-base 191 -> 137 MiB kept per encoder layer (the memory census).
"""

from __future__ import annotations

import torch
from torch import nn

from bevforge.nn.msdeform_attn import init_deformable_attention
from bevforge.nn.recompute import check_recompute_mode, recomputed
from bevforge.ops.msda import msda_from_offsets
from bevforge.ops.msda.shapes import SpatialShapes, check_num_tokens


class TemporalSelfAttention(nn.Module):
    """Returns ``query + dropout(output_proj(mean_v attn_v))``, ``[B, Q, C]``."""

    def __init__(
        self,
        embed_dims: int = 256,
        num_heads: int = 8,
        num_levels: int = 1,
        num_points: int = 4,
        num_bev_queue: int = 2,
        dropout: float = 0.1,
        recompute: str = "auto",
    ) -> None:
        super().__init__()
        check_recompute_mode(recompute, "TemporalSelfAttention recompute")
        if embed_dims % num_heads != 0:
            raise ValueError(f"embed_dims ({embed_dims}) must be divisible by num_heads ({num_heads})")
        if num_bev_queue != 2:
            raise ValueError(f"num_bev_queue must be 2 (previous + current BEV), got {num_bev_queue}")
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.num_bev_queue = num_bev_queue
        self.recompute = recompute
        v, m, lv, p = num_bev_queue, num_heads, num_levels, num_points
        self.sampling_offsets = nn.Linear(embed_dims * v, v * m * lv * p * 2)
        self.attention_weights = nn.Linear(embed_dims * v, v * m * lv * p)
        self.value_proj = nn.Linear(embed_dims, embed_dims)
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        self.dropout = nn.Dropout(dropout)
        self.init_weights()

    def init_weights(self) -> None:
        """Official init: per-head ring of directions, point ``i`` at distance ``i + 1`` cells.

        The offsets bias is laid out ``[M, V, L, P, 2]``: the queues count as levels for the init.
        """
        init_deformable_attention(
            self.sampling_offsets,
            self.attention_weights,
            (self.value_proj, self.output_proj),
            num_heads=self.num_heads,
            num_levels=self.num_levels * self.num_bev_queue,
            num_points=self.num_points,
        )

    def forward(
        self,
        query: torch.Tensor,
        query_pos: torch.Tensor | None,
        prev_bev: torch.Tensor | None,
        has_prev: torch.Tensor | None,
        reference_points: torch.Tensor,
        spatial_shapes: SpatialShapes,
        level_start_index: torch.Tensor,
        current_value: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """
        Args:
            query: ``[B, Q, C]`` current BEV queries (also the residual).
            query_pos: ``[B, Q, C]`` positional encoding added to the query (not to the values).
            prev_bev: ``[B, Q, C]`` ego-motion-aligned previous BEV, or None (no sample has one).
            has_prev: ``[B]`` bool, which samples use ``prev_bev`` (None: all, when it is given).
            reference_points: ``[V * B, Q, L, 2]`` normalised (x, y), queue-major (previous first).
            spatial_shapes: ``[L, 2]`` int64 (bev_h, bev_w), or static ``((bev_h, bev_w),)`` ints (no
                device read-back: see :mod:`bevforge.ops.msda.shapes`); ``level_start_index``: ``[L]``.
            current_value: ``[B, Q, C]`` values of the current queue for samples *with* a previous
                BEV: the encoder's input BEV queries, the same in every layer (official: the encoder
                stacks ``[prev_bev, bev_query]`` once, before its layers). None: ``query``.

        Samples without a previous BEV use this layer's ``query`` for both queues (official
        ``value = cat([query, query])`` when ``prev_bev`` is None).
        """
        assert query.dim() == 3 and reference_points.dim() == 4, "query [B, Q, C], ref [V*B, Q, L, 2]"
        batch, num_q, channels = query.shape
        if prev_bev is not None:
            assert prev_bev.shape == query.shape, (
                f"prev_bev {tuple(prev_bev.shape)} != query {tuple(query.shape)}"
            )
            if has_prev is None:
                has_prev = torch.ones(batch, dtype=torch.bool, device=query.device)
        check_num_tokens(spatial_shapes, num_q, "TemporalSelfAttention")  # no host sync
        # a recompute region (nn/recompute.py) where self.recompute says so: it keeps only the MSDA output
        # (its inputs are alive anyway: the layer input, the positional encoding, the BEVs of the frame)
        args = (query, query_pos, prev_bev, has_prev, current_value, reference_points)
        out = recomputed(self.recompute, self._attend, *args, spatial_shapes, level_start_index)
        out = out.to(query.dtype).view(self.num_bev_queue, batch, num_q, channels)  # [V, B, Q, C]
        return query + self.dropout(self.output_proj(out.mean(dim=0)))  # the average of the queues

    def _attend(
        self,
        query: torch.Tensor,
        query_pos: torch.Tensor | None,
        prev_bev: torch.Tensor | None,
        has_prev: torch.Tensor | None,
        current_value: torch.Tensor | None,
        reference_points: torch.Tensor,
        spatial_shapes: SpatialShapes,
        level_start_index: torch.Tensor,
    ) -> torch.Tensor:
        """The values of both queues, the value projection, offsets, weights, locations and the MSDA (the
        arguments as :meth:`forward`'s, ``has_prev`` given with ``prev_bev``) -> ``[V*B, Q, C]`` sampled
        values, queue-major."""
        batch, num_q, channels = query.shape
        if prev_bev is None:
            prev, current = query, query
        else:
            use = has_prev.view(batch, 1, 1)
            prev = torch.where(use, prev_bev.to(query.dtype), query)  # [B, Q, C]
            current = (
                query if current_value is None else torch.where(use, current_value.to(query.dtype), query)
            )
        if query_pos is not None:
            query = query + query_pos
        v, m, lv, p = self.num_bev_queue, self.num_heads, self.num_levels, self.num_points
        num_value = prev.shape[1]
        value = torch.cat((prev, current), dim=0)  # [V*B, Q, C] queue-major: previous, current
        value = self.value_proj(value).view(v * batch, num_value, m, channels // m)  # [V*B, Q, M, D]
        hybrid = torch.cat((prev, query), dim=-1)  # [B, Q, 2C]
        # [B, Q, M*V*L*P*2] -> [B, Q, M, V, L, P, 2]
        offsets = self.sampling_offsets(hybrid).view(batch, num_q, m, v, lv, p, 2)
        # [B, Q, M*V*L*P] -> [B, Q, M, V, L*P] (softmax per queue over levels and points)
        weights = self.attention_weights(hybrid).view(batch, num_q, m, v, lv * p).softmax(-1)
        # [B, Q, M, V, L, P] -> [V, B, Q, M, L, P] -> [V*B, Q, M, L, P]
        weights = (
            weights.view(batch, num_q, m, v, lv, p)
            .permute(3, 0, 1, 2, 4, 5)
            .reshape(v * batch, num_q, m, lv, p)
        )
        # [B, Q, M, V, L, P, 2] -> [V, B, Q, M, L, P, 2] -> [V*B, Q, M, L, P, 2]
        offsets = offsets.permute(3, 0, 1, 2, 4, 5, 6).reshape(v * batch, num_q, m, lv, p, 2)
        # sampling at fp32 locations ref + offsets / (W, H) as the official code (bf16 locations would be
        # off by up to a cell at 200 x 200), formed in the kernel where it runs; value as value_proj left it
        # (bf16 under autocast): the op samples it in fp32, without an fp32 copy
        ref = reference_points[:, :, :, None, :].float()  # [V*B, Q, L, 2] -> [V*B, Q, L, 1, 2] (Z = 1)
        return msda_from_offsets(
            value, spatial_shapes, level_start_index, ref, offsets, weights.float()
        )  # [V*B, Q, C]
