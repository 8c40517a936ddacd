"""The current frame of a BEVFormer training step as two CUDA graphs, forward and backward
(``train.frame_graph``).

A base training step is host-bound on an H200 (455 ms of CPU against 236 ms of GPU work at 9cdd050,
``benchmarks/results/profile.md``): some 13 700 dispatched operators. The history pass (a quarter of them)
replays as one graph with ``train.history_graph``; the current frame (backbone, neck, encoder and heads,
forward and backward: most of the rest) replays as two with this option, through
``torch.cuda.make_graphed_callables``: each step copies its inputs into the captured buffers and launches
the forward graph; the backward graph runs as one autograd node and hands the parameters their gradients.
Left eager: the grid mask and the temporal bookkeeping before, the criterion (its Hungarian matching is
on the host) and the optimizer after.

What makes the replay the eager step's computation:

- the graph is :func:`frame_preds`, a function of tensors (the host parts, which sample has a previous
  BEV and the ego-motion deltas, are computed before); the eager path of :class:`FrameGraph` runs the same
  function;
- weights are read from their own storage at replay (the optimizer updates them in place); cached BN folds
  and device constants are kept alive by the holder (as the history graph's);
- autocast runs with its cast cache off during warm-up and capture (``make_graphed_callables`` refuses it
  on), in the step's dtype;
- the recompute regions that draw no random numbers (the SCA's, the TSA's, checkpointed backbone blocks)
  replay in the backward graph without the RNG state (``nn/recompute.py``), so the frame keeps what the
  eager step keeps; those that draw (the FFN's, whole encoder layers under ``train.grad_ckpt``) are kept
  under capture (with ``train.grad_ckpt`` the layers' SCA/TSA regions recompute instead);
- dropout draws new numbers at each replay (the CUDA generator's offsets advance in the graph);
- the SCA gathers a static number of hit queries learnt from the first, eager step (+10%) and flags a
  frame that hits more; every ``CHECK_EVERY`` replays the flags are read and an overflow (found by this or
  the history graph) recaptures;
- the outputs are the captured buffers: the criterion reads them before the next replay, the temporal
  state gets a copy.

The first step of an input signature runs eagerly (its plans learn the SCA bound and the prediction
keys), the second captures (``warmup`` eager forward+backward passes on a side stream first, as
``make_graphed_callables`` does), later ones replay. CPU inputs, no grad mode, a previous BEV missing
(a one-frame queue), more signatures than ``max_graphs`` or a signature whose capture failed (warned
once; the run goes on) run :func:`frame_preds` eagerly. Under DDP the all-reduce stays outside the graphs:
DDP's hooks fire as the backward graph's autograd node hands the parameters their gradients (the same
parameters as eager DDP, on the CPU with gloo and the capture emulated, ``tests/unit/models/
frame_graph_ddp.py``; not yet on GPUs); every trained parameter must get a gradient (the node hides an
unused one from DDP's search) and SyncBN is refused (``wrap_model``). No gradient
accumulation: autograd hands the parameters the backward graph's own gradient buffers (it steals a
fresh-looking gradient), which the next replay rewrites (``apply_speed_options`` refuses
``train.accum_steps > 1``).
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from bevforge.models.history_graph import GraphHolder, _kept_tensors


def frame_preds(
    model: nn.Module,
    images: torch.Tensor,
    lidar2img: torch.Tensor,
    can_bus_delta: torch.Tensor,
    prev_bev: torch.Tensor,
    prev_exists: torch.Tensor,
    pad_hw: tuple[int, int],
    num_cams: int,
) -> dict[str, torch.Tensor]:
    """The current frame as a function of tensors: ``images [B*N, 3, H, W]`` (finished, grid-masked),
    ``lidar2img [B, N, 4, 4]``, ``can_bus_delta [B, 18]``, ``prev_bev [B, Q, C]``, ``prev_exists [B]``
    bool -> the model's predictions (``BEVFormer._heads``: ``bev``, the heads' outputs)."""
    feats = model.neck(model.backbone(images))  # L x [B*N, C, H_l, W_l]
    feats = [f.view(-1, num_cams, *f.shape[1:]) for f in feats]  # L x [B, N, C, H_l, W_l]
    bev = model.encoder(feats, lidar2img, pad_hw, can_bus_delta, prev_bev, prev_exists)  # [B, Q, C]
    return model._heads(bev)


class _Frame(nn.Module):
    """What ``make_graphed_callables`` captures: :func:`frame_preds` as a module whose parameters are the
    model's parts' (shared; this module is never part of the model, so nothing of it is in a state dict)."""

    def __init__(self, model: nn.Module, pad_hw: tuple[int, int], num_cams: int, keys: tuple[str, ...]):
        super().__init__()
        parts = [model.backbone, model.neck, model.encoder, model.det_head, model.seg_head, model.aux_head]
        self.parts = nn.ModuleList(p for p in parts if p is not None)
        self.__dict__["_model"] = model  # a plain reference: not a submodule (no second owner of its hooks)
        self.pad_hw, self.num_cams, self.keys = pad_hw, num_cams, keys

    def forward(self, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        preds = frame_preds(self._model, *tensors, self.pad_hw, self.num_cams)
        return tuple(preds[k] for k in self.keys)


class _Graphed:
    """One captured frame: the graphed module, its prediction keys, what it reads that must stay alive."""

    def __init__(self, module: nn.Module, keys: tuple[str, ...], kept: list[torch.Tensor]) -> None:
        self.module, self.keys, self.kept = module, keys, kept


class FrameGraph(GraphHolder):
    """The current frame of BEVFormer training steps, captured per input signature and replayed."""

    what = "train.frame_graph"

    def __init__(self, max_graphs: int = 1, warmup: int = 2) -> None:
        super().__init__(max_graphs, warmup)  # _seen: signature -> prediction keys of its eager step

    def run(
        self,
        model: nn.Module,
        tensors: tuple[torch.Tensor, ...],
        pad_hw: tuple[int, int],
        num_cams: int,
    ) -> dict[str, torch.Tensor]:
        """:func:`frame_preds` of ``tensors`` (``images``, ``lidar2img``, ``can_bus_delta``, ``prev_bev``,
        ``prev_exists``): replayed on CUDA in grad mode, else eager."""
        if not self._replayable(tensors, model):
            return frame_preds(model, *tensors, pad_hw, num_cams)
        key = self.signature(tensors, pad_hw, num_cams)
        graphed = self._graph_for(
            model, key, lambda: self._capture(model, tensors, pad_hw, num_cams, self._seen[key])
        )
        if graphed is None:
            preds = frame_preds(model, *tensors, pad_hw, num_cams)  # learns the SCA bound, the keys
            self._seen.setdefault(key, tuple(sorted(preds)))
            return preds
        outs = graphed.module(*tensors)  # the captured buffers: read them before the next replay
        self._replayed(model)
        return dict(zip(graphed.keys, outs, strict=True))

    @staticmethod
    def _replayable(tensors: tuple[torch.Tensor, ...], model: nn.Module) -> bool:
        """CUDA tensors, grad mode and a training model: what the captured frame can take."""
        return tensors[0].is_cuda and torch.is_grad_enabled() and model.training

    def _pool_owner(self, model: nn.Module) -> GraphHolder:
        """The history graph's pool when there is one: it replays before this forward and its output is
        cloned, and this frame's activations are dead from the backward replay until the next forward."""
        history = getattr(model, "history_graph", None)
        return self if history is None else history

    def _capture(
        self,
        model: nn.Module,
        tensors: tuple[torch.Tensor, ...],
        pad_hw: tuple[int, int],
        num_cams: int,
        keys: tuple[str, ...],
    ) -> _Graphed:
        frame = _Frame(model, pad_hw, num_cams, keys)
        sample = tuple(t.detach().clone() for t in tensors)  # no input requires grad, as in the step
        amp, dtype = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
        autocast: Any = torch.autocast("cuda", dtype=dtype, cache_enabled=False) if amp else nullcontext()
        pool = self._pool_owner(model)._pool_id()
        with autocast:
            # thread-local: the data loader's pin-memory thread keeps calling CUDA during the capture
            graphed = torch.cuda.make_graphed_callables(
                frame,
                sample,
                num_warmup_iters=self.warmup,
                allow_unused_input=True,  # a parameter the frame does not reach gets no gradient, as eager
                pool=pool,
                capture_error_mode="thread_local",
            )
        return _Graphed(graphed, keys, _kept_tensors(model))


__all__ = ["FrameGraph", "frame_preds"]
