"""Scene-whole inference over a split: ``run_inference(model, loader, cfg) -> {sample_token: result}``.

The ``TemporalState`` returned by the model for one frame is passed to the next; the model resets it
itself when a batch element's scene changes (scene tokens), so the loader only has to keep each scene
in temporal order (batch size 1, or ``SceneLaneBatchSampler`` lanes). Under ``torchrun`` the
``SceneAwareDistributedSampler`` gives each rank whole scenes; results are gathered to rank 0 with
``gather_object`` over a gloo group with a long time-out (ranks finish at different times on long
evaluations), de-duplicated and checked for completeness.

Per-sample result: ``boxes [K, 9]`` (ours, lidar frame), ``scores [K]``, ``labels [K]`` (numpy, float64/
int64), and with a segmentation head ``seg_intersection`` / ``seg_union`` [S] pixel counts.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from bevforge.config import Config
from bevforge.data.prefetch import device_prefetch
from bevforge.structures.batch import Batch
from bevforge.structures.temporal import TemporalState

GATHER_TIMEOUT = datetime.timedelta(hours=6)


class IncompleteResultsError(RuntimeError):
    """Some samples of the split got no prediction (a rank failed or the sampler lost a scene)."""


def _slice_state(state: TemporalState | None, batch_size: int) -> TemporalState | None:
    """Keep the first ``batch_size`` lanes (scene lanes end from the last one first)."""
    if state is None or len(state.scene_tokens) == batch_size:
        return state
    if len(state.scene_tokens) < batch_size:
        return None  # more lanes than before: cannot happen with the lane sampler; start fresh
    return TemporalState(
        state.prev_bev[:batch_size], state.prev_can_bus[:batch_size], state.scene_tokens[:batch_size]
    )


def _seg_counts(seg_logits: torch.Tensor, seg_target: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """[B, S, H, W] logits/targets -> per-element intersection, union [B, S] (sigmoid > 0.5)."""
    pred = seg_logits > 0
    gt = seg_target.to(pred.device) > 0.5
    inter = (pred & gt).sum(dim=(2, 3))  # [B, S]
    union = (pred | gt).sum(dim=(2, 3))  # [B, S]
    return inter.cpu().numpy().astype(np.int64), union.cpu().numpy().astype(np.int64)


@torch.inference_mode()
def infer_batches(model: torch.nn.Module, batches: Iterable[Batch], cfg: Config) -> dict[str, dict[str, Any]]:
    """This process's part: forward every batch in order, carrying the temporal state."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    state: TemporalState | None = None
    out: dict[str, dict[str, Any]] = {}
    graphed = _attach_inference_graph(model, cfg)
    try:
        for batch in device_prefetch(batches, device):  # the next batch's copy overlaps this frame
            if batch.num_frames != 1:
                raise ValueError(f"evaluation batches must hold T=1 frame, got T={batch.num_frames}")
            state = _slice_state(state, batch.batch_size)
            preds, state = model(batch, state)
            dets = model.decode(
                preds,
                max_boxes=cfg.eval.max_boxes,
                post_center_range=tuple(cfg.eval.post_center_range),
                score_threshold=cfg.eval.score_threshold,
            )
            if dets is None:  # no detection head (map segmentation only)
                dets = [None] * batch.batch_size
            seg = None
            if "seg_logits" in preds and batch.seg_target is not None:
                seg = _seg_counts(preds["seg_logits"], batch.seg_target)
            for b, token in enumerate(batch.sample_tokens):
                res: dict[str, Any] = {}
                if dets[b] is not None:
                    res["boxes"] = dets[b]["boxes"].double().cpu().numpy()
                    res["scores"] = dets[b]["scores"].double().cpu().numpy()
                    res["labels"] = dets[b]["labels"].long().cpu().numpy()
                if seg is not None:
                    res["seg_intersection"], res["seg_union"] = seg[0][b], seg[1][b]
                out[token] = res
    finally:
        if graphed is not None:
            graphed.infer_graph = None  # the captured graphs and their memory pool go with the holder
        model.train(was_training)
    return out


def _attach_inference_graph(model: torch.nn.Module, cfg: Config) -> torch.nn.Module | None:
    """With ``eval.cuda_graph``, a fresh :class:`InferenceGraph` on a BEVFormer (plain or in DDP; the holder
    replays CUDA frames and runs the others eagerly); returns the module holding it, else None."""
    from bevforge.models.bevformer import BEVFormer
    from bevforge.models.infer_graph import InferenceGraph

    if not cfg.eval.cuda_graph:
        return None
    target = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    if not isinstance(target, BEVFormer):  # another family, or a compiled model (inductor's own graphs)
        return None
    target.infer_graph = InferenceGraph()
    return target


def gather_results(local: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]] | None:
    """All ranks' results on rank 0 (others get None); without a process group returns ``local``."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return local
    group = dist.new_group(backend="gloo", timeout=GATHER_TIMEOUT)
    rank, world = dist.get_rank(), dist.get_world_size()
    parts: list[Any] | None = [None] * world if rank == 0 else None
    dist.gather_object(local, parts, dst=0, group=group)
    dist.destroy_process_group(group)
    if rank != 0:
        return None
    merged: dict[str, dict[str, Any]] = {}
    for part in parts or []:
        for token, res in part.items():
            merged.setdefault(token, res)  # de-duplicate (a sample seen by two ranks keeps the first)
    return merged


def expected_tokens(loader: Any) -> list[str] | None:
    """The split's sample tokens in dataset order, from the loader's dataset when it exposes them."""
    dataset = getattr(loader, "dataset", None)
    if dataset is not None and hasattr(dataset, "sample_token"):
        return [dataset.sample_token(i) for i in range(len(dataset))]
    samples = getattr(dataset, "samples", None)
    return [s["token"] for s in samples] if samples is not None else None


def run_inference(
    model: torch.nn.Module, loader: Any, cfg: Config, tokens: list[str] | None = None
) -> dict[str, dict[str, Any]]:
    """Inference over a whole split; on rank 0 (or a single process) every sample token is present.

    Non-zero ranks return an empty dict. ``tokens`` (default: the loader dataset's samples) is the
    completeness check; a missing token raises :class:`IncompleteResultsError`.
    """
    local = infer_batches(model, loader, cfg)
    merged = gather_results(local)
    if merged is None:
        return {}
    tokens = tokens if tokens is not None else expected_tokens(loader)
    if tokens is not None:
        missing = [t for t in tokens if t not in merged]
        if missing:
            raise IncompleteResultsError(
                f"{len(missing)} of {len(tokens)} samples got no prediction (e.g. {missing[0]}); "
                f"check that every rank finished and the sampler covers all scenes"
            )
        merged = {t: merged[t] for t in tokens}  # split order
    return merged
