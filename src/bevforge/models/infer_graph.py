"""BEVFormer inference frames replayed as a CUDA graph (``eval.cuda_graph``: ``bevforge test``, ``bevforge
eval``, the periodic evaluation of training).

Inference at batch 1 is host-bound on an H100/H200: an eager BEVFormer-base frame took 86 ms there against
71 ms captured (52 ms with the channels-last backbone) at 9cdd050 (``bench infer``, whose ``cuda-graph``
mode replays the export frame). This holder gives the evaluation loop the same replay: each frame copies
its tensors into the captured buffers and launches :func:`bevforge.models.frame_graph.frame_preds`
(backbone, neck, encoder with the previous BEV, heads) as one graph.

What makes the replay the eager frame's computation (as ``train.history_graph``'s and
``train.frame_graph``'s captures, ``models/history_graph.py``):

- the host part (which sample continues its scene, the ego-motion deltas) is computed before the graph
  (``BEVFormer._temporal_inputs``), and a sample whose scene starts feeds the previous BEV with its flag
  off, exactly as the eager frame does;
- weights, cached BN folds and device constants stay alive with the holder; autocast's cast cache is off
  during warm-up and capture;
- the SCA over the cameras has static shapes; its hit gather (``model.sca_fuse_cameras=off``) gathers a
  bound learnt from the first, eager frame (+10 %) and flags a frame that hits more (read every
  ``CHECK_EVERY`` replays: recaptured, with a warning).

The first frame of an input signature runs eagerly (it learns the bound), the second captures, later
ones replay; a first frame without a previous state, CPU tensors, grad mode or more signatures than
``max_graphs`` (a smaller last batch of scene lanes) run eagerly, as do frames whose capture failed
(warned once; the evaluation goes on). The returned predictions are the
captured buffers: read them before the next frame (the evaluation loop decodes each frame at once; the
temporal state gets a copy of the BEV). The runner attaches a holder for one pass over a split and drops
it afterwards, with its memory pool.
"""

from __future__ import annotations

import torch
from torch import nn

from bevforge.models.frame_graph import frame_preds
from bevforge.models.history_graph import GraphHolder


class InferenceGraph(GraphHolder):
    """BEVFormer inference frames (:func:`frame_preds` without gradients), captured per input signature
    and replayed on CUDA."""

    what = "eval.cuda_graph"

    def __init__(self, max_graphs: int = 1, warmup: int = 2) -> None:
        super().__init__(max_graphs, warmup)

    def run(
        self,
        model: nn.Module,
        tensors: tuple[torch.Tensor, ...],
        pad_hw: tuple[int, int],
        num_cams: int,
    ) -> dict[str, torch.Tensor]:
        """:func:`frame_preds` of ``tensors`` (``images [B*N, 3, H, W]`` finished, ``lidar2img [B, N, 4,
        4]``, ``can_bus_delta [B, 18]``, ``prev_bev [B, Q, C]``, ``prev_exists [B]``): replayed on CUDA
        without grad mode, else eager."""
        if not self._replayable(tensors):
            return frame_preds(model, *tensors, pad_hw, num_cams)

        def step(*static: torch.Tensor) -> dict[str, torch.Tensor]:
            return frame_preds(model, *static, pad_hw, num_cams)

        key = self.signature(tensors, pad_hw, num_cams)
        captured = self._graph_for(model, key, lambda: self._capture_no_grad(model, step, tensors))
        if captured is None:
            self._seen[key] = None
            return step(*tensors)  # the first frame learns the SCA bound
        preds = dict(captured(tensors))  # the captured buffers: the next replay overwrites them
        self._replayed(model)
        return preds

    @staticmethod
    def _replayable(tensors: tuple[torch.Tensor, ...]) -> bool:
        """CUDA tensors and no grad mode: what a captured frame can take."""
        return tensors[0].is_cuda and not torch.is_grad_enabled()


__all__ = ["InferenceGraph"]
