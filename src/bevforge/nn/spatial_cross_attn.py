"""Spatial cross-attention of BEVFormer: each BEV query samples the cameras its pillar projects into.

Shape letters: B batch, N cameras, Q BEV queries, K = the most queries any (sample, camera) hits,
S = sum_l H_l * W_l image tokens, C channels, M heads, D = C / M, L levels, Z pillar points,
P points per query (split over the Z pillar points: ``P / Z`` around each projected point).

Official semantics (``SpatialCrossAttention`` + ``MSDeformableAttention3D``), but per sample:
every (sample, camera) gathers only the queries it hits (any pillar point inside the image), runs
deformable attention on them, and the results are summed back and divided by the number of
cameras that hit each query. The gather/scatter is vectorised over batch and cameras. Which queries
each (sample, camera) attends depends only on the projected pillars, the same in every encoder layer
of a frame: :func:`plan_spatial_cross_attention` builds it once (:class:`SCAPlan`) for all layers.

Where the MSDA kernel runs (``fuse_cameras="auto"``), one kernel does it all instead
(:func:`bevforge.ops.msda.msda_cameras`): every BEV query predicts its offsets and weights once and samples
every camera it hits in the same program; no gather, no scatter, no host read of the gather size, static
shapes (``torch.compile`` and CUDA graphs take it as it is).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from bevforge.nn.msdeform_attn import init_deformable_attention, init_xavier_linear
from bevforge.nn.recompute import check_recompute_mode, recomputed
from bevforge.ops.constants import capturing_cuda_graph
from bevforge.ops.msda import msda_cameras, msda_from_offsets, multi_scale_deformable_attention
from bevforge.ops.msda.cameras import cameras_kernel_runs
from bevforge.ops.msda.shapes import SpatialShapes, sampling_locations, wh_normaliser


class MSDeformableAttention3D(nn.Module):
    """Deformable attention whose ``P`` points are shared out over ``Z`` reference points per query.

    No output projection or residual (the enclosing :class:`SpatialCrossAttention` has them).
    """

    def __init__(
        self, embed_dims: int = 256, num_heads: int = 8, num_levels: int = 4, num_points: int = 8
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
        self.init_weights()

    def init_weights(self) -> None:
        """Official init (:func:`init_deformable_attention`); no output projection here."""
        init_deformable_attention(
            self.sampling_offsets,
            self.attention_weights,
            (self.value_proj,),
            num_heads=self.num_heads,
            num_levels=self.num_levels,
            num_points=self.num_points,
        )

    def sampling(
        self, query: torch.Tensor, spatial_shapes: SpatialShapes, num_z: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``query [G, K, C]`` -> offsets in cells ``[G, K, M, L, P/Z, Z, 2]`` and weights
        ``[G, K, M, L, P]``; :meth:`locations` turns the offsets into sampling locations around the
        ``[G, K, Z, 2]`` reference points.

        A query's offsets and weights do not depend on the camera: :class:`SpatialCrossAttention` computes
        them once per BEV query on its static path.
        """
        groups, num_q, _ = query.shape
        m, lv, p = self.num_heads, self.num_levels, self.num_points
        if p % num_z != 0:
            raise ValueError(f"num_points ({p}) must be a multiple of the pillar points ({num_z})")
        offsets = self.sampling_offsets(query).view(groups, num_q, m, lv, p, 2)  # [G, K, M, L, P, 2]
        # [G, K, M*L*P] -> [G, K, M, L*P] softmax -> [G, K, M, L, P]
        weights = (
            self.attention_weights(query)
            .view(groups, num_q, m, lv * p)
            .softmax(-1)
            .view(groups, num_q, m, lv, p)
        )
        # point index = outer * Z + z (official): [G, K, M, L, P, 2] -> [G, K, M, L, P/Z, Z, 2]
        return offsets.view(groups, num_q, m, lv, p // num_z, num_z, 2), weights

    @staticmethod
    def locations(ref: torch.Tensor, offsets: torch.Tensor, spatial_shapes: SpatialShapes) -> torch.Tensor:
        """fp32 ``ref + offsets / (W, H)`` of each level (:func:`sampling_locations`, one pass): ``ref``
        broadcast as ``[..., 1, 1, 1, Z, 2]`` against ``offsets [..., M, L, P/Z, Z, 2]``
        (:meth:`sampling`)."""
        normaliser = wh_normaliser(spatial_shapes, torch.float32, offsets.device)  # [L, 2] (W, H)
        return sampling_locations(ref.float(), offsets, normaliser[:, None, None, :])  # [L, 1, 1, 2]

    def value_heads(self, value: torch.Tensor) -> torch.Tensor:
        """``value [G, S, C]`` (before ``value_proj``) -> ``[G, S, M, D]``, as ``value_proj`` left it (bf16
        under autocast: the MSDA samples it in fp32, without an fp32 copy)."""
        groups, num_value, _ = value.shape
        return self.value_proj(value).view(groups, num_value, self.num_heads, -1)  # [G, S, M, D]

    def attend(
        self,
        value: torch.Tensor,
        locations: torch.Tensor,
        weights: torch.Tensor,
        spatial_shapes: SpatialShapes,
        level_start_index: torch.Tensor,
    ) -> torch.Tensor:
        """``value [G, S, C]`` (before ``value_proj``), ``locations [G, K, M, L, P, 2]``, ``weights
        [G, K, M, L, P]`` -> ``[G, K, C]`` fp32 (the caller casts)."""
        # sampling in fp32 as the official code (``force_fp32``): half-precision locations are too coarse
        return multi_scale_deformable_attention(
            self.value_heads(value), spatial_shapes, level_start_index, locations.float(), weights.float()
        )  # [G, K, C] fp32

    def forward(
        self,
        query: torch.Tensor,
        value: torch.Tensor,
        reference_points: torch.Tensor,
        spatial_shapes: SpatialShapes,
        level_start_index: torch.Tensor,
    ) -> torch.Tensor:
        """``query [G, K, C]``, ``value [G, S, C]``, ``reference_points [G, K, Z, 2]`` -> ``[G, K, C]``.

        ``G`` is any flattened group dim (here sample x camera). ``spatial_shapes``: ``[L, 2]`` int64
        or static (H, W) int pairs (:mod:`bevforge.ops.msda.shapes`).
        """
        assert query.dim() == 3 and value.dim() == 3 and reference_points.dim() == 4
        groups, num_q, _ = query.shape
        m, lv, p = self.num_heads, self.num_levels, self.num_points
        offsets, weights = self.sampling(query, spatial_shapes, reference_points.shape[2])
        # fp32 locations ref + offsets / (W, H) (in the kernel where it runs): [G, K, Z, 2] -> [G, K, 1, Z, 2]
        # (one row for every level; point p = outer * Z + z around pillar point z, as :meth:`sampling`)
        return msda_from_offsets(
            self.value_heads(value),
            spatial_shapes,
            level_start_index,
            reference_points.float()[:, :, None],
            offsets.view(groups, num_q, m, lv, p, 2),  # [G, K, M, L, P/Z, Z, 2] -> [G, K, M, L, P, 2]
            weights.float(),
        ).to(query.dtype)  # [G, K, C]


#: how many queries each (sample, camera) gathers: "exact" = the most any of them hits (read back to the
#: host: a device sync and, under ``torch.compile``, a graph break), "all" = every query (static shapes,
#: no sync, misses masked; more attention work), "auto" = "exact" in eager mode, "all" while compiling;
#: while a CUDA graph is captured "auto" takes a static bound instead where it has one (:meth:`plan`)
QUERY_BOUNDS = ("auto", "exact", "all")
#: the SCA as one op over the cameras (:func:`bevforge.ops.msda.msda_cameras`): "auto" where its kernel runs
#: (CUDA, or the CPU under ``TRITON_INTERPRET=1``), "on" always (its PyTorch reference elsewhere: every
#: camera attends every query), "off" never (the hit gather or the all-queries path, ``query_bound``)
FUSE_CAMERAS_MODES = ("auto", "on", "off")


def hit_bound(max_len: int, num_q: int) -> int:
    """The static gather size a CUDA graph is captured with, from an eager frame's exact ``max_len``: 10%
    more, rounded up to 64 queries, at most ``num_q`` (rigs of one fleet differ a little in calibration)."""
    return min(num_q, -(-int(max_len * 1.1) // 64) * 64)


@dataclass(frozen=True)
class SCAPlan:
    """Which queries each (sample, camera) attends, for every SCA layer of one frame.

    ``hit [B, N, Q]`` bool (any pillar point inside the image), ``num_hits [B, Q]`` cameras per query
    (clamped >= 1). On the hit-gather path (``all_queries`` False) also ``order [B*N, K]`` (hit queries
    first, in query order), ``valid [B*N, K]``, ``sample_of_group [B*N]``, ``flat_index [B*N*K]`` (into
    ``B*Q + 1``: a padding slot points at the extra row ``B*Q``, which the scatter drops) and the gathered
    reference points ``refs [B*N, K, Z, 2]``. ``bounded``: ``K`` was given, not read back here (a static
    bound under CUDA-graph capture, or the exact size ``BEVEncoder.project_frames`` read ahead); with a
    bound, a (sample, camera) hitting more than ``K`` queries drops the rest and sets the 0-d bool
    ``overflow`` (a device tensor the caller owns and reads later). ``fused``: the SCA runs as one op over
    the cameras (``hit`` and ``num_hits`` only; ``all_queries`` True: no gather), ``grid_w`` the width of
    the BEV grid the queries form (its kernel walks it in tiles; 0: none given).
    """

    all_queries: bool
    hit: torch.Tensor
    num_hits: torch.Tensor
    order: torch.Tensor | None = None
    valid: torch.Tensor | None = None
    sample_of_group: torch.Tensor | None = None
    flat_index: torch.Tensor | None = None
    refs: torch.Tensor | None = None
    bounded: bool = False
    fused: bool = False
    grid_w: int = 0


def plan_spatial_cross_attention(
    reference_points_cam: torch.Tensor,
    bev_mask: torch.Tensor,
    all_queries: bool,
    max_len: int | None = None,
    overflow: torch.Tensor | None = None,
) -> SCAPlan:
    """``reference_points_cam [B, N, Q, Z, 2]``, ``bev_mask [B, N, Q, Z]`` -> :class:`SCAPlan`.

    The hit-gather path reads ``K`` (the most queries any (sample, camera) hits) back to the host: one
    device sync per plan, so build it once per frame, not once per layer. ``max_len``: ``K`` given (no
    host read; a bounded plan); ``overflow`` (0-d bool, with ``max_len``) is or-ed in place with "some
    (sample, camera) hits more than ``K``".
    """
    assert reference_points_cam.dim() == 5 and bev_mask.dim() == 4, "ref [B, N, Q, Z, 2], mask [B, N, Q, Z]"
    hit = bev_mask.any(dim=-1)  # [B, N, Q]
    num_hits = hit.sum(dim=1).clamp(min=1)  # [B, Q]
    if all_queries:
        return SCAPlan(True, hit, num_hits)
    batch, num_cams, num_q = hit.shape
    groups = batch * num_cams
    hit_g = hit.reshape(groups, num_q)  # [B*N, Q]
    counts = hit_g.sum(dim=1)  # [B*N]
    bounded = max_len is not None
    if max_len is None:
        max_len = max(int(counts.max()), 1)  # a host read (sync)
    else:
        max_len = max(1, min(int(max_len), num_q))
        if overflow is not None:
            overflow.logical_or_(counts.max() > max_len)  # in place: a captured graph updates it
    # hit queries first, in query order (stable sort of the "missed" flag)
    order = torch.sort((~hit_g).to(torch.uint8), dim=1, stable=True).indices[:, :max_len]  # [B*N, K]
    valid = torch.arange(max_len, device=hit.device)[None, :] < counts[:, None]  # [B*N, K]
    sample_of_group = torch.arange(batch, device=hit.device).repeat_interleave(num_cams)  # [B*N]
    refs = reference_points_cam.reshape(groups, num_q, *reference_points_cam.shape[-2:])  # [B*N, Q, Z, 2]
    refs = torch.gather(refs, 1, order[:, :, None, None].expand(-1, -1, *refs.shape[-2:]))  # [B*N, K, Z, 2]
    # padding slots scatter into a spare row B*Q instead of being multiplied by 0 (an activation-sized
    # strided pass each way, forward and backward)
    flat_index = torch.where(valid, sample_of_group[:, None] * num_q + order, batch * num_q).reshape(-1)
    return SCAPlan(False, hit, num_hits, order, valid, sample_of_group, flat_index, refs, bounded)


class SpatialCrossAttention(nn.Module):
    """Returns ``query + dropout(output_proj(sum_n attn_n / hits))``, ``[B, Q, C]``.

    ``query_bound`` (:data:`QUERY_BOUNDS`) picks the gather; both give the same numbers (each query's
    attention depends only on its own query and reference points), the static one up to the order of
    the sum over cameras. ``fuse_cameras`` (:data:`FUSE_CAMERAS_MODES`): the SCA as one op over the
    cameras instead (where its kernel runs, by default; the same numbers up to the order of the sums).
    ``recompute`` (``nn/recompute.py``: auto / on / off): the deformable attention's projections and
    sampling locations are recomputed in backward instead of kept (the MSDA kernel's output is kept);
    ``"auto"`` where the MSDA runs as the kernel.
    """

    def __init__(
        self,
        embed_dims: int = 256,
        num_cams: int = 6,
        num_heads: int = 8,
        num_levels: int = 4,
        num_points: int = 8,
        dropout: float = 0.1,
        query_bound: str = "auto",
        recompute: str = "auto",
        fuse_cameras: str = "auto",
    ) -> None:
        super().__init__()
        if query_bound not in QUERY_BOUNDS:
            raise ValueError(f"query_bound={query_bound!r} is not one of {', '.join(QUERY_BOUNDS)}")
        if fuse_cameras not in FUSE_CAMERAS_MODES:
            raise ValueError(f"fuse_cameras={fuse_cameras!r} is not one of {', '.join(FUSE_CAMERAS_MODES)}")
        check_recompute_mode(recompute, "SpatialCrossAttention recompute")
        self.embed_dims = embed_dims
        self.num_cams = num_cams
        self.query_bound = query_bound
        self.recompute = recompute
        self.fuse_cameras = fuse_cameras
        self.deformable_attention = MSDeformableAttention3D(embed_dims, num_heads, num_levels, num_points)
        self.output_proj = nn.Linear(embed_dims, embed_dims)
        self.dropout = nn.Dropout(dropout)
        init_xavier_linear(self.output_proj)
        #: (B, N, Q, device) -> (static gather size, 0-d bool overflow flag on that device): learnt from the
        #: exact plans of eager frames, used by :meth:`plan` while a CUDA graph is captured (not state)
        self.hit_bounds: dict[tuple[int, int, int, torch.device], tuple[int, torch.Tensor]] = {}
        #: overflows found so far (:meth:`hit_overflow`): a graph captured at another count holds a bound
        #: that overflowed and is recaptured (whoever read the flags)
        self.bound_epoch = 0

    def fused(self, device_tensor: torch.Tensor) -> bool:
        """True when calls on ``device_tensor``'s device run as one op over the cameras (``fuse_cameras``:
        "auto" where its kernel runs)."""
        if self.fuse_cameras == "auto":
            return cameras_kernel_runs(device_tensor)
        return self.fuse_cameras == "on"

    def all_queries(self) -> bool:
        """True when this call takes the static path (every camera attends every query): always with
        ``"all"``; with ``"auto"`` under ``torch.compile`` and while a CUDA graph is being captured (the
        hit gather's host read is not allowed there; :meth:`plan` then takes a bounded gather where it
        learnt a bound)."""
        if self.query_bound == "auto":
            return torch.compiler.is_compiling() or capturing_cuda_graph()
        return self.query_bound == "all"

    def plan(
        self,
        reference_points_cam: torch.Tensor,
        bev_mask: torch.Tensor,
        max_len: int | None = None,
        grid_w: int = 0,
    ) -> SCAPlan:
        """The :class:`SCAPlan` of this module's path (build it once per frame, pass it to every layer).

        The hit gather reads its size ``K`` back (a sync) unless ``max_len`` gives it: the exact ``K`` of
        these points read earlier (``BEVEncoder.project_frames``: every frame's at once, before the
        backbone's kernels are queued ahead of the read). ``"auto"`` while a CUDA graph is captured: the
        hit gather with a static ``K`` (:func:`hit_bound` of the largest exact ``K`` an eager frame of
        these sizes had: the hits depend on the rig's calibration only, not on the images) where an eager
        frame came first, else every query. A frame that then hits more sets the bound's overflow flag
        (:meth:`hit_overflow`). Fused over the cameras (:meth:`fused`): the hits only, no gather, no read;
        ``grid_w`` the BEV's width (the queries are its cells, row by row: the kernel walks it in tiles)."""
        if self.fused(bev_mask):  # the static plan's hits and counts, nothing gathered
            plan = plan_spatial_cross_attention(reference_points_cam, bev_mask, True)
            return dataclasses.replace(plan, fused=True, grid_w=grid_w)
        all_queries = self.all_queries()
        key = (bev_mask.shape[0], bev_mask.shape[1], bev_mask.shape[2], bev_mask.device)  # (B, N, Q, device)
        if all_queries and self.query_bound == "auto" and capturing_cuda_graph() and key in self.hit_bounds:
            bound, overflow = self.hit_bounds[key]
            return plan_spatial_cross_attention(reference_points_cam, bev_mask, False, bound, overflow)
        given = None if all_queries else max_len
        plan = plan_spatial_cross_attention(reference_points_cam, bev_mask, all_queries, given)
        if not plan.all_queries and plan.order is not None and not torch.compiler.is_compiling():
            bound = hit_bound(plan.order.shape[1], key[2])
            old = self.hit_bounds.get(key)
            if old is None or old[0] < bound:
                flag = (
                    old[1] if old is not None else torch.zeros((), dtype=torch.bool, device=bev_mask.device)
                )
                self.hit_bounds[key] = (bound, flag)
        return plan

    def hit_overflow(self) -> bool:
        """Whether a bounded plan (CUDA-graph capture) dropped hit queries since the last call: a host
        read of the flags (a sync); clears them. The learnt bounds grow to every query after an overflow."""
        over = False
        for key, (_, flag) in list(self.hit_bounds.items()):
            if bool(flag):
                over = True
                flag.zero_()
                self.hit_bounds[key] = (key[2], flag)
        self.bound_epoch += over
        return over

    def forward(
        self,
        query: torch.Tensor,
        value: torch.Tensor,
        reference_points_cam: torch.Tensor,
        bev_mask: torch.Tensor,
        spatial_shapes: SpatialShapes,
        level_start_index: torch.Tensor,
        plan: SCAPlan | None = None,
    ) -> torch.Tensor:
        """
        Args:
            query: ``[B, Q, C]`` BEV queries (also the residual).
            value: ``[B, N, S, C]`` flattened multi-level camera features (with camera/level embeddings).
            reference_points_cam: ``[B, N, Q, Z, 2]`` normalised (u, v) of the pillar points.
            bev_mask: ``[B, N, Q, Z]`` bool, pillar point inside camera n of sample b.
            spatial_shapes: ``[L, 2]`` int64 or static (H, W) int pairs (:mod:`bevforge.ops.msda.shapes`).
            plan: :meth:`plan` of these ``reference_points_cam`` / ``bev_mask`` (None: built here).
        """
        assert query.dim() == 3 and value.dim() == 4, "query [B, Q, C], value [B, N, S, C]"
        assert reference_points_cam.dim() == 5 and bev_mask.dim() == 4
        batch, num_q, _ = query.shape
        num_cams = value.shape[1]
        if num_cams != self.num_cams:
            raise ValueError(f"got {num_cams} cameras, the model was built for {self.num_cams}")
        if plan is None:
            plan = self.plan(reference_points_cam, bev_mask)
        elif (
            plan.fused != self.fused(value)
            or (not plan.fused and plan.all_queries != self.all_queries() and not plan.bounded)
            or plan.hit.shape != (batch, num_cams, num_q)
        ):
            raise ValueError(
                f"SCAPlan (fused={plan.fused}, all_queries={plan.all_queries}, hit {tuple(plan.hit.shape)}) "
                f"does not fit this call (fused={self.fused(value)}, all_queries={self.all_queries()}, "
                f"[B, N, Q] = {(batch, num_cams, num_q)}): build it with this module's plan() on the same "
                "reference points and mask"
            )
        if plan.fused:
            args = (
                query,
                value,
                reference_points_cam,
                plan.hit,
                spatial_shapes,
                level_start_index,
                plan.grid_w,
            )
            slots = recomputed(self.recompute, self._attend_fused, *args)  # [B, Q, C] fp32
        elif plan.all_queries:
            slots = self._attend_all(
                query, value, reference_points_cam, plan, spatial_shapes, level_start_index
            )
        else:
            slots = self._attend_hits(query, value, plan, spatial_shapes, level_start_index)
        slots = slots / plan.num_hits[..., None].to(slots.dtype)
        return query + self.dropout(self.output_proj(slots.to(query.dtype)))

    def _attend_hits(
        self,
        query: torch.Tensor,
        value: torch.Tensor,
        plan: SCAPlan,
        spatial_shapes: SpatialShapes,
        level_start_index: torch.Tensor,
    ) -> torch.Tensor:
        """Gather per (sample, camera) its ``K`` planned queries, attend, scatter-add back: ``[B, Q, C]``
        sums over the cameras that hit each query."""
        assert plan.order is not None and plan.valid is not None and plan.refs is not None
        assert plan.sample_of_group is not None and plan.flat_index is not None
        batch, num_q, channels = query.shape
        groups = batch * value.shape[1]
        queries = query[plan.sample_of_group[:, None], plan.order]  # [B*N, K, C]
        args = (
            queries,
            value.reshape(groups, *value.shape[2:]),
            plan.refs,
            spatial_shapes,
            level_start_index,
        )
        out = recomputed(self.recompute, self.deformable_attention, *args)  # [B*N, K, C]
        # [B*N*K, C] into B*Q rows + a spare one for the padding slots, dropped
        slots = out.new_zeros(batch * num_q + 1, channels).index_add(
            0, plan.flat_index, out.reshape(-1, channels)
        )
        return slots[:-1].view(batch, num_q, channels)  # [B, Q, C]

    def _attend_all(
        self,
        query: torch.Tensor,
        value: torch.Tensor,
        reference_points_cam: torch.Tensor,
        plan: SCAPlan,
        spatial_shapes: SpatialShapes,
        level_start_index: torch.Tensor,
    ) -> torch.Tensor:
        """Every (sample, camera) attends all ``Q`` queries (static shapes, no host read); misses sample
        nothing and are zeroed before the sum over cameras. Offsets and weights are predicted once per
        query."""
        batch, num_q, channels = query.shape
        num_cams = value.shape[1]
        args = (query, value, reference_points_cam, plan.hit, spatial_shapes, level_start_index)
        out = recomputed(self.recompute, self._attend_all_cameras, *args)  # [B*N, Q, C]
        out = out.view(batch, num_cams, num_q, channels)  # [B, N, Q, C]
        # where, not a product: a miss's far-off sampling points never leak (not even a NaN)
        return torch.where(plan.hit[..., None], out, out.new_zeros(())).sum(dim=1)  # [B, Q, C]

    def _attend_fused(
        self,
        query: torch.Tensor,
        value: torch.Tensor,
        reference_points_cam: torch.Tensor,
        hit: torch.Tensor,
        spatial_shapes: SpatialShapes,
        level_start_index: torch.Tensor,
        grid_w: int = 0,
    ) -> torch.Tensor:
        """One op over the cameras: each query's offsets and weights once, its samples in every camera
        it hits summed (:func:`msda_cameras`): ``[B, Q, C]`` fp32 sums."""
        batch, num_q, _ = query.shape
        num_cams, num_value, channels = value.shape[1:]
        attn = self.deformable_attention
        m, lv, p = attn.num_heads, attn.num_levels, attn.num_points
        offsets, weights = attn.sampling(query, spatial_shapes, reference_points_cam.shape[-2])
        # [B, N, S, C] -> [B*N, S, C] -> [B*N, S, M, D] -> [B, N, S, M, D]
        value_heads = attn.value_heads(value.reshape(batch * num_cams, num_value, channels))
        value_heads = value_heads.view(batch, num_cams, num_value, m, channels // m)
        return msda_cameras(
            value_heads,
            spatial_shapes,
            level_start_index,
            reference_points_cam.float(),  # [B, N, Q, Z, 2]
            hit,  # [B, N, Q]
            offsets.view(batch, num_q, m, lv, p, 2),  # [B, Q, M, L, P/Z, Z, 2] -> [B, Q, M, L, P, 2]
            weights.float(),
            grid_w,
        )  # [B, Q, C]

    def _attend_all_cameras(
        self,
        query: torch.Tensor,
        value: torch.Tensor,
        reference_points_cam: torch.Tensor,
        hit: torch.Tensor,
        spatial_shapes: SpatialShapes,
        level_start_index: torch.Tensor,
    ) -> torch.Tensor:
        """The deformable attention of every query in every camera: ``[B*N, Q, C]`` (misses included)."""
        batch, num_q, _ = query.shape
        num_cams = value.shape[1]
        groups = batch * num_cams
        attn = self.deformable_attention
        m, lv, p = attn.num_heads, attn.num_levels, attn.num_points
        offsets, weights = attn.sampling(query, spatial_shapes, reference_points_cam.shape[-2])
        # [B, N, Q, Z, 2] -> [B, N, Q, 1, 1, 1, Z, 2] + [B, 1, Q, M, L, P/Z, Z, 2] -> [B*N, Q, M, L, P, 2]
        ref = reference_points_cam[:, :, :, None, None, None, :, :]
        locations = attn.locations(ref, offsets[:, None], spatial_shapes).reshape(groups, num_q, m, lv, p, 2)
        # a miss samples far outside every level: all its bilinear corners are out of range (no value
        # reads, no gradient atomics in the kernel); its result is dropped below either way
        hit_g = hit.reshape(groups, num_q)[:, :, None, None, None, None]  # [B*N, Q, 1, 1, 1, 1]
        locations = torch.where(hit_g, locations, locations.new_full((), -1.0))
        # [B, Q, M, L, P] -> [B, N, Q, M, L, P] -> [B*N, Q, M, L, P]
        weights = weights[:, None].expand(batch, num_cams, num_q, m, lv, p).reshape(groups, num_q, m, lv, p)
        return attn.attend(
            value.reshape(groups, *value.shape[2:]), locations, weights, spatial_shapes, level_start_index
        ).to(query.dtype)  # [B*N, Q, C]
