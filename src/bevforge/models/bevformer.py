"""BEVFormer: backbone + FPN -> temporal BEV encoder -> detection / segmentation heads.

Shape letters: B batch, T frames (history ``0..T-2``, current ``T-1``), N cameras, L feature levels,
C channels, H/W image size, Q = bev_h * bev_w BEV queries, D decoder layers, K classes, S seg classes.

``forward(batch, state) -> (preds, state)`` (docs/CONTRACTS.md). History frames run as the official
``obtain_history_bev``: the whole history pass is in eval mode and without gradients, the backbone
batched over all history frames, the encoder recurrent. The current frame gets gradients. Temporal
state is explicit and per sample: a frame whose scene differs from the state's (or that is padding)
starts without a previous BEV, exactly as a scene start in the official code.
"""

from __future__ import annotations

import torch
from torch import nn

from bevforge.geometry.ego_motion import can_bus_deltas
from bevforge.models.bev_encoder import BEVEncoder, FrameProjections
from bevforge.models.frame_graph import FrameGraph
from bevforge.models.history_graph import HistoryGraph, history_bev, history_prev_exists
from bevforge.models.infer_graph import InferenceGraph
from bevforge.structures.batch import Batch, require_finished_images
from bevforge.structures.temporal import TemporalState, carried_tokens


class BEVFormer(nn.Module):
    def __init__(
        self,
        backbone: nn.Module,
        neck: nn.Module,
        encoder: BEVEncoder,
        det_head: nn.Module | None = None,
        seg_head: nn.Module | None = None,
        grid_mask: nn.Module | None = None,
        aux_head: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if det_head is None and seg_head is None:
            raise ValueError("BEVFormer needs a detection head, a segmentation head or both")
        self.backbone = backbone
        self.neck = neck
        self.encoder = encoder
        self.det_head = det_head
        self.seg_head = seg_head
        self.grid_mask = grid_mask  # applied in training only (the module checks self.training too)
        # optional training-only dense head on the BEV (CenterPoint heatmaps, ``model.aux_heatmap``): its
        # outputs go to the loss as ``aux.*`` and are never computed in evaluation or export
        self.aux_head = aux_head
        # train.history_graph: the training history pass as a replayed CUDA graph (models/history_graph.py)
        self.history_graph: HistoryGraph | None = None
        # train.frame_graph: the training step's current frame as replayed CUDA graphs (models/frame_graph.py)
        self.frame_graph: FrameGraph | None = None
        # eval.cuda_graph: inference frames replayed as a CUDA graph (models/infer_graph.py); the evaluation
        # runner attaches one for a pass over a split
        self.infer_graph: InferenceGraph | None = None

    def extract_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """``images [B', N, 3, H, W]`` -> L x ``[B', N, C, H_l, W_l]`` (one backbone call for all)."""
        assert images.dim() == 5, f"expected [B', N, 3, H, W], got {tuple(images.shape)}"
        require_finished_images(images)
        groups, num_cams = images.shape[:2]
        x = images.flatten(0, 1)  # [B'*N, 3, H, W]
        if self.grid_mask is not None and self.training:
            x = self.grid_mask(x)
        feats = self.neck(self.backbone(x))  # L x [B'*N, C, H_l, W_l]
        # [B'*N, C, H_l, W_l] -> [B', N, C, H_l, W_l]
        return [f.view(groups, num_cams, *f.shape[1:]) for f in feats]

    def encode_frame(
        self,
        batch: Batch,
        t: int,
        feats: list[torch.Tensor],
        state: TemporalState | None,
        projected: tuple[torch.Tensor, torch.Tensor, int] | None = None,
    ) -> tuple[torch.Tensor, TemporalState]:
        """BEV of frame ``t`` given L x ``[B, N, C, H_l, W_l]`` features and the previous state
        (``projected``: the frame's projection and SCA gather size, ``BEVEncoder.project_frames``)."""
        can_bus_delta, prev_bev, prev_exists = self._temporal_inputs(batch, t, state)
        pad_hw = (int(batch.images.shape[-2]), int(batch.images.shape[-1]))
        bev = self.encoder(
            feats, batch.lidar2img[:, t], pad_hw, can_bus_delta, prev_bev, prev_exists, projected
        )
        return bev, self._next_state(batch, t, bev.detach())

    def _temporal_inputs(
        self, batch: Batch, t: int, state: TemporalState | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Frame ``t``'s ego-motion deltas ``[B, 18]``, previous BEV ``[B, Q, C]`` (None: no state) and
        previous-BEV flags ``[B]`` bool, from the state and the batch's scene tokens (host side)."""
        scenes = [tokens[t] for tokens in batch.scene_tokens]
        can_bus = batch.can_bus[:, t]  # [B, 18] absolute
        if state is None:
            prev_exists = torch.zeros(batch.batch_size, dtype=torch.bool, device=can_bus.device)
            prev_bev, prev_can_bus = None, None
        else:
            _check_state(state, batch.batch_size)
            prev_exists = state.prev_exists(scenes, batch.frame_valid[:, t]).to(can_bus.device)
            prev_bev, prev_can_bus = state.prev_bev, state.prev_can_bus
        return can_bus_deltas(can_bus, prev_can_bus, prev_exists), prev_bev, prev_exists  # deltas [B, 18]

    def _next_state(self, batch: Batch, t: int, bev: torch.Tensor) -> TemporalState:
        """The state after frame ``t`` with its (detached) ``bev [B, Q, C]``."""
        scenes, valid = [tokens[t] for tokens in batch.scene_tokens], batch.frame_valid[:, t]
        return TemporalState(bev, batch.can_bus[:, t].detach().clone(), carried_tokens(scenes, valid))

    def _graphed_frame(
        self, batch: Batch, state: TemporalState
    ) -> tuple[dict[str, torch.Tensor], TemporalState]:
        """The current frame through ``train.frame_graph`` (:class:`FrameGraph`): the grid mask and the
        temporal inputs here, :func:`frame_preds` replayed."""
        assert self.frame_graph is not None
        images = batch.images[:, -1]  # [B, N, 3, H, W]
        require_finished_images(images)
        x = images.flatten(0, 1)  # [B*N, 3, H, W]
        if self.grid_mask is not None and self.training:
            x = self.grid_mask(x)
        t = batch.images.shape[1] - 1  # the current frame
        can_bus_delta, prev_bev, prev_exists = self._temporal_inputs(batch, t, state)
        assert prev_bev is not None
        pad_hw = (int(images.shape[-2]), int(images.shape[-1]))
        tensors = (x, batch.lidar2img[:, t], can_bus_delta, prev_bev, prev_exists)
        preds = self.frame_graph.run(self, tensors, pad_hw, images.shape[1])
        return preds, self._next_state(batch, t, preds["bev"].detach().clone())  # a replay reuses bev

    def _graphed_inference(
        self, batch: Batch, state: TemporalState
    ) -> tuple[dict[str, torch.Tensor], TemporalState]:
        """One inference frame (``T = 1``) through ``eval.cuda_graph`` (:class:`InferenceGraph`): the
        temporal inputs here, :func:`frame_preds` replayed; the same computation as the eager frame."""
        assert self.infer_graph is not None
        images = batch.images[:, 0]  # [B, N, 3, H, W]
        require_finished_images(images)
        can_bus_delta, prev_bev, prev_exists = self._temporal_inputs(batch, 0, state)
        assert prev_bev is not None
        pad_hw = (int(images.shape[-2]), int(images.shape[-1]))
        tensors = (images.flatten(0, 1), batch.lidar2img[:, 0], can_bus_delta, prev_bev, prev_exists)
        preds = self.infer_graph.run(self, tensors, pad_hw, images.shape[1])
        return preds, self._next_state(batch, 0, preds["bev"].clone())  # a replay reuses bev

    def forward(
        self, batch: Batch, state: TemporalState | None = None
    ) -> tuple[dict[str, torch.Tensor], TemporalState]:
        """``batch.images [B, T, N, 3, H, W]`` -> (preds, state after the current frame).

        preds: ``bev [B, Q, C]``; with a detection head ``cls_logits [D, B, Q, K]`` and
        ``box_code [D, B, Q, 10]``; with a segmentation head ``seg_logits [B, S, bev_h, bev_w]``; in
        training with an auxiliary head its outputs as ``aux.<key>`` (models/centerpoint_head.py keys).
        """
        assert batch.images.dim() == 6, f"images must be [B, T, N, 3, H, W], got {tuple(batch.images.shape)}"
        num_b, num_t = batch.images.shape[:2]
        pad_hw = (int(batch.images.shape[-2]), int(batch.images.shape[-1]))
        if not (self.training and torch.is_grad_enabled()):
            if self.infer_graph is not None and not self.training and num_t == 1 and state is not None:
                return self._graphed_inference(batch, state)
            # inference: no mode switch needed, one backbone call for every frame
            projections = self.encoder.project_frames(batch.lidar2img, pad_hw, range(num_t))
            feats = self.extract_features(batch.images.flatten(0, 1))  # L x [B*T, N, C, h, w]
            feats = [f.view(num_b, num_t, *f.shape[1:]) for f in feats]  # L x [B, T, N, C, h, w]
            for t in range(num_t):
                projected = None if projections is None else projections.get(t)
                bev, state = self.encode_frame(batch, t, [f[:, t] for f in feats], state, projected)
        else:
            # the frames that run eagerly are projected first (a captured pass projects its own)
            history_graphed = num_t > 1 and self.history_graph is not None and state is None
            frame_graphed = self.frame_graph is not None and (num_t > 1 or state is not None)
            eager = range(num_t - 1 if history_graphed else 0, num_t - 1 if frame_graphed else num_t)
            projections = self.encoder.project_frames(batch.lidar2img, pad_hw, eager)
            if num_t > 1:
                state = self._history_state(batch, state, projections)
            if frame_graphed:
                assert state is not None
                return self._graphed_frame(batch, state)
            feats = self.extract_features(batch.images[:, -1])  # L x [B, N, C, h, w]
            projected = None if projections is None else projections.get(num_t - 1)
            bev, state = self.encode_frame(batch, num_t - 1, feats, state, projected)
        return self._heads(bev), state

    def _history_state(
        self,
        batch: Batch,
        state: TemporalState | None,
        projections: FrameProjections | None = None,
    ) -> TemporalState:
        """Frames ``0..T-2`` in eval mode without gradients (official ``obtain_history_bev``):
        :func:`history_bev` after the host's previous-BEV flags; with ``train.history_graph`` and no given
        state, the same function captured and replayed on CUDA (:class:`HistoryGraph`). ``projections``:
        the frames' projections made beforehand (``BEVEncoder.project_frames``; the eager pass)."""
        if state is not None:
            _check_state(state, batch.batch_size)
        exists, scenes = history_prev_exists(batch, None if state is None else state.scene_tokens)
        images = batch.images[:, :-1]  # [B, T-1, N, 3, H, W]
        inputs = (
            images,
            batch.lidar2img[:, :-1],
            batch.can_bus[:, :-1],
            exists.to(images.device, non_blocking=True),
        )
        pad_hw = (int(images.shape[-2]), int(images.shape[-1]))
        was_training = self.training
        self.eval()
        try:
            if self.history_graph is not None and state is None:
                bev = self.history_graph.run(self, inputs, pad_hw)
            else:
                prev = (None, None) if state is None else (state.prev_bev, state.prev_can_bus)
                with torch.no_grad():
                    bev = history_bev(self, *inputs, pad_hw, *prev, projections)
        finally:
            self.train(was_training)
        return TemporalState(bev, batch.can_bus[:, -2].detach().clone(), scenes)

    def _heads(self, bev: torch.Tensor) -> dict[str, torch.Tensor]:
        preds: dict[str, torch.Tensor] = {"bev": bev}
        if self.det_head is not None:
            preds["cls_logits"], preds["box_code"] = self.det_head(bev)
        if self.seg_head is not None:
            preds["seg_logits"] = self.seg_head(bev)
        if self.aux_head is not None and self.training:
            num_b, _, num_c = bev.shape
            bev_map = bev.view(num_b, self.encoder.bev_h, self.encoder.bev_w, num_c)  # [B, bev_h, bev_w, C]
            aux = self.aux_head(bev_map.permute(0, 3, 1, 2))  # input [B, C, bev_h, bev_w]
            preds.update({f"aux.{k}": v for k, v in aux.items()})
        return preds

    def decode(
        self,
        preds: dict[str, torch.Tensor],
        max_boxes: int = 300,
        post_center_range: tuple[float, ...] | None = None,
        score_threshold: float = 0.0,
    ) -> list[dict[str, torch.Tensor]] | None:
        """Detections per batch element (``boxes [N, 9]``, ``scores [N]``, ``labels [N]``) from this
        model's ``preds``, or None without a detection head. Every model family implements ``decode``
        so evaluation never reads a family's raw outputs (docs/CONTRACTS.md)."""
        if "cls_logits" not in preds:
            return None
        from bevforge.eval.postprocess import decode_predictions  # pure function of the head outputs

        return decode_predictions(preds, max_boxes, post_center_range, score_threshold)


def _check_state(state: TemporalState, num_b: int) -> None:
    if state.prev_bev.shape[0] != num_b or len(state.scene_tokens) != num_b:
        raise ValueError(
            f"TemporalState holds {state.prev_bev.shape[0]} samples but the batch has {num_b}; "
            "pass state=None at a batch-size change (the state is per sample)"
        )
