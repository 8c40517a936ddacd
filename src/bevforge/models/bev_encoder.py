"""BEVFormer BEV encoder: learned BEV queries refined by TSA -> norm -> SCA -> norm -> FFN -> norm layers.

Shape letters: B batch, N cameras, L feature levels, C channels, H_l/W_l level sizes, S = sum_l H_l W_l,
bev_h/bev_w BEV rows/cols, Q = bev_h * bev_w queries, Z pillar points, V = 2 BEV queues.

Holds what the official code spreads over ``BEVFormerHead`` (``bev_embedding``, positional encoding),
``PerceptionTransformer.get_bev_features`` (camera/level embeddings, can_bus MLP, ego-motion alignment)
and ``BEVFormerEncoder`` (reference points, projection, layers). Single frame per call; the temporal
recurrence lives in :mod:`bevforge.models.bevformer`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from bevforge.geometry.ego_motion import OFFICIAL_ROTATE_CENTER, bev_shift, rotate_bev
from bevforge.geometry.projection import project_to_cameras
from bevforge.geometry.reference_points import bev_reference_points_2d, pillar_reference_points_3d
from bevforge.nn.ffn import FFN
from bevforge.nn.positional_encoding import LearnedPositionalEncoding
from bevforge.nn.recompute import recomputed, regions_off
from bevforge.nn.spatial_cross_attn import SCAPlan, SpatialCrossAttention
from bevforge.nn.temporal_self_attn import TemporalSelfAttention
from bevforge.ops.constants import capturing_cuda_graph, device_constant
from bevforge.ops.msda.shapes import LevelShapes, SpatialShapes


def read_costs_a_wait(device: torch.device) -> bool:
    """A host read of a tensor on ``device`` waits for the work queued before it (CUDA; not a CPU)."""
    return device.type == "cuda"


class FrameProjections:
    """Per frame ``t``: the pillar points in its cameras (``ref_cam [B, N, Q, Z, 2]``, ``bev_mask [B, N,
    Q, Z]``) and its SCA gather size ``K``, made by :meth:`BEVEncoder.project_frames` at the start of a
    forward. The sizes are copied to the host without waiting: the first :meth:`get` waits for an event
    recorded right after the copy, i.e. for the work queued before it only, not for what was queued
    since (the backbone)."""

    def __init__(
        self, frames: Sequence[int], projections: list[tuple[torch.Tensor, torch.Tensor]], sizes: torch.Tensor
    ) -> None:
        self._projections = dict(zip(frames, projections, strict=True))
        self._sizes: dict[int, int] | None = None
        self._event = None
        if sizes.is_cuda:
            self._host = torch.empty(sizes.shape, dtype=sizes.dtype, pin_memory=True)  # [T']
            self._host.copy_(sizes, non_blocking=True)
            self._event = torch.cuda.Event()
            self._event.record()
        else:
            self._host = sizes

    def get(self, t: int) -> tuple[torch.Tensor, torch.Tensor, int] | None:
        """Frame ``t``'s ``(ref_cam, bev_mask, K)`` (None: not one of the frames)."""
        if t not in self._projections:
            return None
        if self._sizes is None:
            if self._event is not None:
                self._event.synchronize()
            self._sizes = dict(zip(self._projections, self._host.tolist(), strict=True))
        return (*self._projections[t], self._sizes[t])


class BEVFormerLayer(nn.Module):
    """One encoder layer: TSA -> LayerNorm -> SCA -> LayerNorm -> FFN -> LayerNorm (post-norm)."""

    def __init__(
        self,
        embed_dims: int,
        ffn_dims: int,
        dropout: float,
        num_cams: int,
        num_levels: int,
        tsa_heads: int,
        tsa_points: int,
        sca_heads: int,
        sca_points: int,
        sca_recompute: str = "auto",
        ffn_recompute: bool = False,
        tsa_recompute: str = "auto",
        sca_fuse_cameras: str = "auto",
    ) -> None:
        super().__init__()
        self.ffn_recompute = ffn_recompute  # the FFN recomputed in backward (nn/recompute.py)
        self.temporal_attn = TemporalSelfAttention(
            embed_dims, tsa_heads, 1, tsa_points, 2, dropout, recompute=tsa_recompute
        )
        self.spatial_attn = SpatialCrossAttention(
            embed_dims, num_cams, sca_heads, num_levels, sca_points, dropout, recompute=sca_recompute,
            fuse_cameras=sca_fuse_cameras,
        )  # fmt: skip
        self.ffn = FFN(embed_dims, ffn_dims, dropout)
        self.norms = nn.ModuleList([nn.LayerNorm(embed_dims) for _ in range(3)])

    def forward(
        self,
        query: torch.Tensor,
        bev_pos: torch.Tensor,
        prev_bev: torch.Tensor | None,
        has_prev: torch.Tensor | None,
        ref_2d: torch.Tensor,
        bev_shapes: SpatialShapes,
        bev_start: torch.Tensor,
        feats: torch.Tensor,
        ref_cam: torch.Tensor,
        bev_mask: torch.Tensor,
        spatial_shapes: SpatialShapes,
        level_start_index: torch.Tensor,
        bev_query_init: torch.Tensor,
        sca_plan: SCAPlan | None = None,
    ) -> torch.Tensor:
        """``query [B, Q, C]`` -> ``[B, Q, C]`` (see :class:`BEVEncoder` for the other shapes).

        ``bev_query_init [B, Q, C]``: the encoder's input queries, TSA's current-queue value.
        ``sca_plan``: the frame's SCA plan (the same for every layer; None: the layer builds it).
        """
        query = self.temporal_attn(
            query, bev_pos, prev_bev, has_prev, ref_2d, bev_shapes, bev_start, bev_query_init
        )
        query = self.norms[0](query)
        query = self.spatial_attn(
            query, feats, ref_cam, bev_mask, spatial_shapes, level_start_index, sca_plan
        )
        query = self.norms[1](query)
        # with model.ffn_recompute a recompute region: only its input is kept for backward
        ffn_mode = "on" if self.ffn_recompute else "off"
        return self.norms[2](recomputed(ffn_mode, self.ffn, query, draws_random=self.training))  # dropout


def _whole_layer(layer: nn.Module, *args: object) -> torch.Tensor:
    """``layer(*args)`` with its recompute regions off: what a checkpoint of the whole layer runs (in its
    forward and again in backward)."""
    with regions_off():
        return layer(*args)


class BEVEncoder(nn.Module):
    """Image features of one frame (+ the aligned previous BEV) -> BEV features ``[B, Q, C]``."""

    def __init__(
        self,
        embed_dims: int = 256,
        ffn_dims: int = 512,
        dropout: float = 0.1,
        num_layers: int = 3,
        bev_h: int = 50,
        bev_w: int = 50,
        pc_range: tuple[float, ...] = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0),
        num_cams: int = 6,
        num_levels: int = 1,
        num_points_in_pillar: int = 4,
        tsa_heads: int = 8,
        tsa_points: int = 4,
        sca_heads: int = 8,
        sca_points: int = 8,
        use_can_bus: bool = True,
        use_shift: bool = True,
        rotate_prev_bev: bool = True,
        use_cams_embeds: bool = True,
        official_compat: bool = False,
        grad_ckpt: bool = False,
        sca_recompute: str = "auto",
        ffn_recompute: bool = False,
        tsa_recompute: str = "auto",
        sca_fuse_cameras: str = "auto",
    ) -> None:
        super().__init__()
        if len(pc_range) != 6:
            raise ValueError(f"pc_range needs 6 values (x0, y0, z0, x1, y1, z1), got {pc_range}")
        if embed_dims % 2:
            raise ValueError(f"embed_dims must be even (row + col positional halves), got {embed_dims}")
        self.embed_dims = embed_dims
        self.bev_h, self.bev_w = bev_h, bev_w
        self.pc_range = tuple(float(v) for v in pc_range)
        self.num_cams, self.num_levels = num_cams, num_levels
        self.num_points_in_pillar = num_points_in_pillar
        self.use_can_bus, self.use_shift = use_can_bus, use_shift
        self.rotate_prev_bev, self.use_cams_embeds = rotate_prev_bev, use_cams_embeds
        self.official_compat = official_compat
        self.grad_ckpt = grad_ckpt
        # metres per BEV cell (y, x), official ``grid_length``
        self.grid_length_m = ((pc_range[4] - pc_range[1]) / bev_h, (pc_range[3] - pc_range[0]) / bev_w)

        self.bev_embedding = nn.Embedding(bev_h * bev_w, embed_dims)
        self.positional_encoding = LearnedPositionalEncoding(embed_dims // 2, bev_h, bev_w)
        self.level_embeds = nn.Parameter(torch.empty(num_levels, embed_dims))
        self.cams_embeds = nn.Parameter(torch.empty(num_cams, embed_dims))
        self.can_bus_mlp = nn.Sequential(
            nn.Linear(18, embed_dims // 2),
            nn.ReLU(inplace=True),
            nn.Linear(embed_dims // 2, embed_dims),
            nn.ReLU(inplace=True),
            nn.LayerNorm(embed_dims),
        )
        self.layers = nn.ModuleList(
            BEVFormerLayer(
                embed_dims,
                ffn_dims,
                dropout,
                num_cams,
                num_levels,
                tsa_heads,
                tsa_points,
                sca_heads,
                sca_points,
                sca_recompute,  # not inside a checkpointed layer (grad_ckpt): see forward
                ffn_recompute,
                tsa_recompute,
                sca_fuse_cameras,
            )
            for _ in range(num_layers)
        )
        self.init_weights()

    def init_weights(self) -> None:
        """Official ``PerceptionTransformer.init_weights``: xavier on matrices, then the attention inits."""
        for name, p in self.named_parameters():
            if p.dim() > 1 and not name.startswith(("bev_embedding", "positional_encoding")):
                nn.init.xavier_uniform_(p)
        for module in self.modules():
            if module is not self and hasattr(module, "init_weights"):
                module.init_weights()
        for lin in self.can_bus_mlp:
            if isinstance(lin, nn.Linear):
                nn.init.zeros_(lin.bias)
        nn.init.normal_(self.level_embeds)
        nn.init.normal_(self.cams_embeds)

    def _flatten_features(
        self, mlvl_feats: list[torch.Tensor]
    ) -> tuple[torch.Tensor, LevelShapes, torch.Tensor]:
        """L x ``[B, N, C, H_l, W_l]`` -> ``value [B, N, S, C]``, L static (H, W) pairs, ``start [L]``.

        The shapes stay Python ints (ops/msda/shapes.py): a shape tensor built per call is a blocking
        host->device copy, and reading one back a device sync and a torch.compile graph break."""
        if len(mlvl_feats) != self.num_levels:
            raise ValueError(
                f"got {len(mlvl_feats)} feature levels, the encoder was built for {self.num_levels}"
            )
        flat, shapes = [], []
        for lvl, feat in enumerate(mlvl_feats):
            assert feat.dim() == 5, f"level {lvl}: expected [B, N, C, H, W], got {tuple(feat.shape)}"
            shapes.append(feat.shape[-2:])
            x = feat.flatten(3).transpose(2, 3)  # [B, N, C, H*W] -> [B, N, H*W, C]
            if self.use_cams_embeds:
                x = x + self.cams_embeds[None, :, None, :].to(x.dtype)
            x = x + self.level_embeds[None, None, lvl : lvl + 1, :].to(x.dtype)
            flat.append(x)
        value = torch.cat(flat, dim=2)  # [B, N, S, C]
        spatial_shapes = tuple((int(h), int(w)) for h, w in shapes)  # L (H, W)
        starts = [sum(h * w for h, w in spatial_shapes[:lvl]) for lvl in range(len(spatial_shapes))]
        start = device_constant(starts, torch.long, value.device)  # [L] (copied to the device once)
        return value, spatial_shapes, start

    def _project(self, lidar2img: torch.Tensor, img_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The pillar points in the cameras of ``lidar2img [B, N, 4, 4]``: ``ref_cam [B, N, Q, Z, 2]``,
        ``bev_mask [B, N, Q, Z]``."""
        height_m = self.pc_range[5] - self.pc_range[2]
        ref_3d = pillar_reference_points_3d(
            self.bev_h, self.bev_w, self.num_points_in_pillar, height_m, lidar2img.device
        )  # [Z, Q, 3]
        return project_to_cameras(ref_3d, self.pc_range, lidar2img, img_hw)

    def project_frames(
        self, lidar2img: torch.Tensor, img_hw: tuple[int, int], frames: Sequence[int]
    ) -> FrameProjections | None:
        """Each frame ``t`` in ``frames`` of ``lidar2img [B, T, N, 4, 4]`` projected into its cameras, with
        its SCA gather size (the most BEV queries a (sample, camera) hits: what
        :meth:`SpatialCrossAttention.plan` reads back), for :meth:`forward`'s ``projected``. Call it at
        the start of a forward: every frame's size is computed before the backbone is queued and copied
        back without waiting (:class:`FrameProjections`), where each frame's own read would wait for the
        kernels queued ahead of it (a base training step: the history backbone, 18 images, then the
        current one). :meth:`forward` then uses these very projections, so the sizes are its own.

        None where nothing would be read back: a CPU (a read costs no wait there), the static paths
        (this encoder compiled, ``nn.Module.compile``; a capture; ``query_bound="all"``; the SCA fused over
        the cameras), no SCA."""
        if not self.layers or not read_costs_a_wait(lidar2img.device) or not frames:
            return None
        compiled = getattr(self, "_compiled_call_impl", None) is not None  # an int argument would recompile
        sca = self.layers[0].spatial_attn
        if compiled or sca.all_queries() or sca.fused(lidar2img):
            return None
        projections, sizes = [], []
        for t in frames:
            ref_cam, bev_mask = self._project(lidar2img[:, t], img_hw)  # [B, N, Q, Z, 2], [B, N, Q, Z]
            projections.append((ref_cam, bev_mask))
            sizes.append(bev_mask.any(dim=-1).sum(dim=-1).amax())  # [B, N, Q] -> [B, N] -> 0-d
        return FrameProjections(frames, projections, torch.stack(sizes))  # sizes [T']: one copy for all

    def forward(
        self,
        mlvl_feats: list[torch.Tensor],
        lidar2img: torch.Tensor,
        img_hw: tuple[int, int],
        can_bus_delta: torch.Tensor,
        prev_bev: torch.Tensor | None = None,
        has_prev: torch.Tensor | None = None,
        projected: tuple[torch.Tensor, torch.Tensor, int] | None = None,
    ) -> torch.Tensor:
        """
        Args:
            mlvl_feats: L x ``[B, N, C, H_l, W_l]`` neck features of one frame.
            lidar2img: ``[B, N, 4, 4]`` lidar -> pixels of the padded network input.
            img_hw: (H, W) of the padded network input in pixels.
            can_bus_delta: ``[B, 18]`` can_bus with translation/yaw-deg deltas
                (:func:`bevforge.geometry.ego_motion.can_bus_deltas`).
            prev_bev: ``[B, Q, C]`` previous BEV (not yet aligned), or None.
            has_prev: ``[B]`` bool, which samples have a previous BEV (None: all when ``prev_bev`` given).
            projected: this frame's ``(ref_cam, bev_mask, K)`` from :meth:`project_frames` (None: projected
                here, ``K`` read back by the SCA's plan).

        Returns ``[B, Q, C]`` BEV features, query ``row * bev_w + col`` (row = lidar y, col = lidar x).
        """
        assert lidar2img.dim() == 4 and can_bus_delta.dim() == 2, "lidar2img [B, N, 4, 4], can_bus [B, 18]"
        batch = lidar2img.shape[0]
        num_q = self.bev_h * self.bev_w
        value, spatial_shapes, level_start = self._flatten_features(mlvl_feats)
        dtype, device = value.dtype, value.device

        query = self.bev_embedding.weight.to(dtype).unsqueeze(0).expand(batch, -1, -1)  # [B, Q, C]
        # [B, C, H, W] -> [B, C, Q] -> [B, Q, C], made contiguous once: every layer's TSA adds it to its
        # query, which a transposed view would turn into CUDA's generic strided kernel each time
        bev_pos = self.positional_encoding(batch).to(dtype).flatten(2).transpose(1, 2).contiguous()
        if self.use_can_bus:
            query = query + self.can_bus_mlp(can_bus_delta.to(dtype))[:, None, :]  # + [B, 1, C]

        # ego-motion alignment: rotate the previous BEV, shift the reference points into it
        shift = bev_shift(can_bus_delta, self.bev_h, self.bev_w, self.grid_length_m).to(device)  # [B, 2]
        if not self.use_shift:
            shift = torch.zeros_like(shift)
        if prev_bev is not None:
            assert prev_bev.shape == (batch, num_q, self.embed_dims), f"prev_bev {tuple(prev_bev.shape)}"
            if has_prev is None:
                has_prev = torch.ones(batch, dtype=torch.bool, device=device)
            if self.rotate_prev_bev:
                center = OFFICIAL_ROTATE_CENTER if self.official_compat else None
                prev_bev = rotate_bev(prev_bev, can_bus_delta[:, 17], self.bev_h, self.bev_w, center)

        ref_2d = bev_reference_points_2d(self.bev_h, self.bev_w, device, torch.float32)  # [Q, 2]
        ref_2d = ref_2d.unsqueeze(0).expand(batch, -1, -1)  # [B, Q, 2]
        shifted = ref_2d + shift[:, None, :].float()  # [B, Q, 2]
        # official_compat: the released models shifted ref_2d in place, so the current queue is shifted too
        current = shifted if self.official_compat else ref_2d
        hybrid_ref = torch.cat((shifted, current), dim=0).unsqueeze(2)  # [V*B, Q, 1, 2] queue-major

        sca_max_len = None
        if projected is None:
            ref_cam, bev_mask = self._project(lidar2img, img_hw)  # [B, N, Q, Z, 2], [B, N, Q, Z]
        else:
            ref_cam, bev_mask, sca_max_len = projected
            assert bev_mask.shape[:2] == lidar2img.shape[:2], "projected: another frame's cameras"
        bev_shapes = ((self.bev_h, self.bev_w),)  # static (H, W) of the 1-level BEV value map
        bev_start = torch.zeros(1, dtype=torch.long, device=device)

        # which queries each camera attends: the same in every layer (one max_len host read per frame
        # unless given)
        sca_plan = None
        if len(self.layers):
            sca_plan = self.layers[0].spatial_attn.plan(ref_cam, bev_mask, sca_max_len, self.bev_w)
        bev_query_init = query  # TSA's current-queue value in every layer (official)
        for layer in self.layers:
            args = (query, bev_pos, prev_bev, has_prev, hybrid_ref, bev_shapes, bev_start)
            args = (*args, value, ref_cam, bev_mask, spatial_shapes, level_start, bev_query_init, sca_plan)
            # a checkpointed layer is recomputed whole (its recompute regions run plainly inside); not
            # under CUDA-graph capture (train.frame_graph): its layers draw dropout numbers, and the
            # checkpoint cannot save the CUDA RNG state there: the layer's own regions recompute instead
            if self.grad_ckpt and self.training and torch.is_grad_enabled() and not capturing_cuda_graph():
                query = checkpoint(_whole_layer, layer, *args, use_reentrant=False)
            else:
                query = layer(*args)
        return query
