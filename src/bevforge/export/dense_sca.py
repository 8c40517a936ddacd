"""Spatial cross-attention in a data-independent form for export: every camera attends every query.

Shape letters: B batch, N cameras, Q BEV queries, C channels, S image tokens, Z pillar points,
G = B * N (sample, camera) groups.

:class:`bevforge.nn.spatial_cross_attn.SpatialCrossAttention` gathers, per camera, only the queries it
hits and scatters the results back with ``index_add``: the number of gathered queries depends on
``lidar2img`` (a traced graph freezes it), and onnxruntime's ``ScatterND(reduction="add")`` loses updates
on repeated indices when it runs on several threads (onnxruntime 1.32, CPU: O(1) errors in about one
run of three; the ONNX parity flake of issue 9). Here every (sample, camera) runs deformable attention
on all ``Q`` queries and the misses are zeroed before the sum over cameras: the same numbers (each
query's attention depends only on its own query and reference points) without a gather, a scatter or a
data-dependent size. ``N`` times the attention work of the hit-only path, so it is for export only.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from bevforge.nn.spatial_cross_attn import SpatialCrossAttention


class DenseSpatialCrossAttention(nn.Module):
    """Wraps a :class:`SpatialCrossAttention` (same parameters, same signature, same result)."""

    def __init__(self, sca: SpatialCrossAttention) -> None:
        super().__init__()
        self.sca = sca

    def all_queries(self) -> bool:
        """Every query, always (no gather size to read: ``BEVEncoder.project_frames`` reads none)."""
        return True

    def fused(self, device_tensor: torch.Tensor) -> bool:
        """Never one kernel over the cameras (an export sees no custom op: every query, every camera)."""
        return False

    def plan(
        self,
        reference_points_cam: torch.Tensor,
        bev_mask: torch.Tensor,
        max_len: int | None = None,
        grid_w: int = 0,
    ) -> None:
        """No hit gather plan (the encoder asks once per frame): every query is attended."""
        return None

    def forward(
        self,
        query: torch.Tensor,
        value: torch.Tensor,
        reference_points_cam: torch.Tensor,
        bev_mask: torch.Tensor,
        spatial_shapes: torch.Tensor,
        level_start_index: torch.Tensor,
        sca_plan: object | None = None,
    ) -> torch.Tensor:
        """``query [B, Q, C]``, ``value [B, N, S, C]``, ``reference_points_cam [B, N, Q, Z, 2]``,
        ``bev_mask [B, N, Q, Z]`` -> ``[B, Q, C]`` (see :meth:`SpatialCrossAttention.forward`).

        ``sca_plan`` (the encoder's per-frame hit gather plan) is ignored: every query of every camera is
        attended, so there is no data-dependent size to plan."""
        assert query.dim() == 3 and value.dim() == 4, "query [B, Q, C], value [B, N, S, C]"
        assert reference_points_cam.dim() == 5 and bev_mask.dim() == 4
        batch, num_q, channels = query.shape
        num_cams = value.shape[1]
        if num_cams != self.sca.num_cams:
            raise ValueError(f"got {num_cams} cameras, the model was built for {self.sca.num_cams}")
        groups = batch * num_cams
        hit = bev_mask.any(dim=-1)  # [B, N, Q]
        # [B, Q, C] -> [B, 1, Q, C] -> [B, N, Q, C] -> [G, Q, C]
        queries = query[:, None].expand(batch, num_cams, num_q, channels).reshape(groups, num_q, channels)
        refs = reference_points_cam.reshape(groups, num_q, *reference_points_cam.shape[-2:])  # [G, Q, Z, 2]
        out = self.sca.deformable_attention(
            queries, value.reshape(groups, *value.shape[2:]), refs, spatial_shapes, level_start_index
        )  # [G, Q, C]
        out = out.view(batch, num_cams, num_q, channels)  # [B, N, Q, C]
        # where, not a product: a miss's far-off sampling points never leak (not even a NaN)
        slots = torch.where(hit[..., None], out, out.new_zeros(())).sum(dim=1)  # [B, Q, C]
        num_hits = hit.sum(dim=1).clamp(min=1)  # [B, Q]
        slots = slots / num_hits[..., None].to(slots.dtype)
        return query + self.sca.dropout(self.sca.output_proj(slots.to(query.dtype)))


def with_dense_sca(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose spatial cross-attentions are :class:`DenseSpatialCrossAttention`.

    ``model`` itself is left as it is (it keeps the faster hit-only path).
    """
    model = copy.deepcopy(model)
    targets = [
        (name, module) for name, module in model.named_modules() if isinstance(module, SpatialCrossAttention)
    ]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, DenseSpatialCrossAttention(module))
    return model
