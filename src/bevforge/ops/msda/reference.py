"""Multi-scale deformable attention, pure PyTorch (the spec, the fallback and the test oracle).

Shape letters: B batch, S = sum_l H_l * W_l value tokens, M heads, D channels per head, Q queries,
L levels, P points per level.

Contract (same as mmcv's ``MultiScaleDeformableAttnFunction``):
- ``value [B, S, M, D]``; ``spatial_shapes [L, 2]`` int64 (H_l, W_l), or L (H_l, W_l) Python int pairs
  (static: no device read-back, no graph break; :mod:`bevforge.ops.msda.shapes`); ``level_start_index
  [L]`` (unused here: the levels are contiguous in ``value``);
- ``sampling_locations [B, Q, M, L, P, 2]`` normalised (x, y), (0, 0) = top-left corner of the map,
  (1, 1) = bottom-right corner; sampling is bilinear with zero padding outside the map
  (``grid_sample(..., align_corners=False, padding_mode="zeros")`` on ``2 * loc - 1``);
- ``attention_weights [B, Q, M, L, P]``;
- returns ``[B, Q, M * D]``: for each head the weighted sum over levels and points of the samples, in
  the promoted dtype of the three inputs (a bf16 ``value`` with fp32 locations and weights, as autocast
  leaves them, is sampled in fp32: the same numbers as an fp32 copy of ``value``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bevforge.ops.msda.shapes import SpatialShapes, level_shapes


def output_dtype(value: torch.Tensor, locations: torch.Tensor, weights: torch.Tensor) -> torch.dtype:
    """The MSDA's output dtype, reference and kernel alike: the promoted dtype of the three inputs. A bf16
    ``value`` with the fp32 locations and weights autocast leaves gives an fp32 output, as an fp32 copy of
    ``value`` would, without the copy (the kernel reads each input in its own dtype, accumulates in fp32)."""
    return torch.promote_types(torch.promote_types(value.dtype, locations.dtype), weights.dtype)


def msda_reference(
    value: torch.Tensor,
    spatial_shapes: SpatialShapes,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    assert value.dim() == 4 and sampling_locations.dim() == 6 and attention_weights.dim() == 5
    dtype = output_dtype(value, sampling_locations, attention_weights)
    value, sampling_locations, attention_weights = (
        t.to(dtype) for t in (value, sampling_locations, attention_weights)
    )
    B, S, M, D = value.shape
    _, Q, _, L, P, _ = sampling_locations.shape
    shapes = level_shapes(spatial_shapes)  # a tensor is read back here (a sync); static pairs are not
    assert sum(h * w for h, w in shapes) == S, "spatial_shapes do not add up to value's length"
    value_levels = value.split([h * w for h, w in shapes], dim=1)  # L x [B, H_l*W_l, M, D]
    grids = 2 * sampling_locations - 1  # [B, Q, M, L, P, 2] in [-1, 1]
    sampled = []
    for lvl, (h, w) in enumerate(shapes):
        # [B, H*W, M, D] -> [B, M, D, H*W] -> [B*M, D, H, W]
        v = value_levels[lvl].permute(0, 2, 3, 1).reshape(B * M, D, h, w)
        # [B, Q, M, P, 2] -> [B, M, Q, P, 2] -> [B*M, Q, P, 2]
        g = grids[:, :, :, lvl].transpose(1, 2).reshape(B * M, Q, P, 2)
        s = F.grid_sample(v, g, mode="bilinear", padding_mode="zeros", align_corners=False)  # [B*M, D, Q, P]
        sampled.append(s)
    stacked = torch.stack(sampled, dim=-2)  # [B*M, D, Q, L, P]
    # [B, Q, M, L, P] -> [B, M, Q, L, P] -> [B*M, 1, Q, L, P]
    w = attention_weights.transpose(1, 2).reshape(B * M, 1, Q, L, P)
    out = (stacked * w).flatten(-2).sum(-1)  # [B*M, D, Q]
    return out.view(B, M * D, Q).transpose(1, 2).contiguous()  # [B, Q, M*D]
