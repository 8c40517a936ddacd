"""BEVFormer's history pass captured as a CUDA graph and replayed (``train.history_graph``).

The history pass (frames ``0..T-2``: backbone over every history frame, then the encoder frame by frame,
in eval mode and without gradients; official ``obtain_history_bev``) is a quarter of a base training
step's dispatched operators, and a base step is host-bound on an H200 (455 ms of CPU against 236 ms of
GPU work at 9cdd050, ``benchmarks/results/profile.md``). Captured once per input shape, each later step
copies its inputs into the captured buffers and replays the pass with one launch.

What makes that the same computation as the eager pass (:meth:`BEVFormer._history_state`):

- the host part, which sample has a previous BEV at each history frame (scene tokens, padding frames),
  is computed before the graph (:func:`history_prev_exists`) and fed to it as a ``[B, T-1]`` bool tensor;
  the graph itself is :func:`history_bev`, a function of tensors only (the eager pass's loop, unrolled);
- the weights are read at replay from their own storage (the optimizer updates them in place); a trained
  conv's BN fold is recomputed in the graph, a frozen one's cached fold and the device constants
  (``ops/constants.py``) are kept alive by the graph holder, so no captured pointer dangles;
- autocast runs with its cast cache off during warm-up and capture (a cached cast would not outlive the
  step), in the dtype the step runs in;
- the SCA cannot read its hit count back under capture: it gathers a static number of queries per camera
  learnt from eager frames (the hits depend on the rig's calibration, not on the images; 10% margin) and
  flags a frame that hits more; every ``CHECK_EVERY`` replays the flags are read (one sync) and an
  overflow drops the graphs (recaptured with the grown bound, a warning says so);
- the output is cloned before it leaves (the next replay overwrites the captured buffer).

Only training with ``state=None`` (each sample's queue starts fresh, as in the official training) and
CUDA inputs take the graph; anything else, a third input shape or a shape whose capture failed (warned
once, ``GraphHolder._graph_for``: the run goes on) runs :func:`history_bev` eagerly, which is also what the
eager pass (``BEVFormer._history_state``) runs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from bevforge.geometry.ego_motion import can_bus_deltas
from bevforge.models.bev_encoder import FrameProjections
from bevforge.structures.batch import Batch
from bevforge.structures.temporal import carried_tokens, continues_scene


def history_prev_exists(batch: Batch, prev_tokens: list[str] | None = None) -> tuple[torch.Tensor, list[str]]:
    """Host side of the history pass: ``[B, T-1]`` bool (frame t of sample b has a previous BEV) and the
    scene tokens the state carries after frame T-2, frame by frame as the state's rules say
    (:func:`continues_scene`, :func:`carried_tokens`); ``prev_tokens``: those of a given state (None:
    no previous frame)."""
    num_b, num_t = batch.images.shape[:2]
    prev = [""] * num_b if prev_tokens is None else list(prev_tokens)
    rows = []
    for t in range(num_t - 1):
        scenes, valid = [tokens[t] for tokens in batch.scene_tokens], batch.frame_valid[:, t]  # host fields
        rows.append(continues_scene(prev, scenes, valid))
        prev = carried_tokens(scenes, valid)
    return torch.stack(rows, dim=1), prev  # T-1 x [B] -> [B, T-1]


def history_bev(
    model: nn.Module,
    images: torch.Tensor,
    lidar2img: torch.Tensor,
    can_bus: torch.Tensor,
    prev_exists: torch.Tensor,
    pad_hw: tuple[int, int],
    prev_bev: torch.Tensor | None = None,
    prev_can_bus: torch.Tensor | None = None,
    projections: FrameProjections | None = None,
) -> torch.Tensor:
    """The history pass as a function of tensors: ``images [B, T', N, 3, H, W]`` (T' = T-1 history
    frames, finished), ``lidar2img [B, T', N, 4, 4]``, absolute ``can_bus [B, T', 18]``, ``prev_exists
    [B, T']`` bool (:func:`history_prev_exists`), a given state's ``prev_bev [B, Q, C]`` and
    ``prev_can_bus [B, 18]`` (None: none) -> the BEV of the last history frame ``[B, Q, C]``. Call it in
    eval mode without gradients (``BEVFormer._history_state`` and :class:`HistoryGraph` do).
    ``projections``: the frames' projections and SCA gather sizes made beforehand
    (``BEVEncoder.project_frames``; eager only: a captured pass takes the learnt bounds)."""
    num_b, num_h = images.shape[:2]
    feats = model.extract_features(images.flatten(0, 1))  # L x [B*T', N, C, h, w]
    feats = [f.view(num_b, num_h, *f.shape[1:]) for f in feats]  # L x [B, T', N, C, h, w]
    bev = None
    for t in range(num_h):
        exists = prev_exists[:, t]  # [B]
        delta = can_bus_deltas(can_bus[:, t], prev_can_bus, exists)  # [B, 18]
        projected = None if projections is None else projections.get(t)
        frame = [f[:, t] for f in feats]  # L x [B, N, C, h, w]
        bev = model.encoder(frame, lidar2img[:, t], pad_hw, delta, prev_bev, exists, projected)
        prev_bev, prev_can_bus = bev, can_bus[:, t]
    assert bev is not None, "history_bev needs at least one history frame"
    return bev


#: replays between two reads of the SCA's hit-bound overflow flags (a device sync each)
CHECK_EVERY = 25


def sca_hit_overflow(model: nn.Module) -> bool:
    """Whether a captured SCA plan dropped hit queries since the last check (reads and clears the flags)."""
    from bevforge.nn.spatial_cross_attn import SpatialCrossAttention

    flags = [m.hit_overflow() for m in model.modules() if isinstance(m, SpatialCrossAttention)]
    return any(flags)


def sca_bound_epoch(model: nn.Module) -> int:
    """How many SCA bound overflows were found so far, by any reader of the flags: a graph captured at
    another count may hold a bound that overflowed (every graph holder of one model reads the same flags)."""
    from bevforge.nn.spatial_cross_attn import SpatialCrossAttention

    return sum(m.bound_epoch for m in model.modules() if isinstance(m, SpatialCrossAttention))


#: failed captures' CUDAGraph objects, alive as long as the process: the allocators may still hold capture
#: filters that point at them (torch cannot undo a capture that ended in an error, see ``CUDAGraph::reset``),
#: also after their holder is dropped (the evaluation runner drops its holder after each pass)
_UNFINISHED_CAPTURES: list[Any] = []


def _unfinished(value: Any) -> bool:
    """A CUDAGraph whose capture did not end (a finished one has a pool and cleans up after itself)."""
    if not isinstance(value, torch.cuda.CUDAGraph):
        return False
    try:
        value.pool()
    except RuntimeError:
        return True
    return False


def _release_failed_capture(error: BaseException, owner: GraphHolder, stream: Any) -> list[Any]:
    """Put CUDA back as it was before a capture that raised, as far as torch allows: ``stream`` current again
    (``torch.cuda.graph``'s exit raises before restoring it), the device allocator no longer routing to the
    pool (``CUDAGraph::capture_end`` raises before ending that) and the pool's reference taken by the
    unfinished capture handed back (the pool is freed when no graph uses it; ``owner`` takes a new one
    for its next capture). Returns the CUDAGraph objects of ``error``'s traceback whose capture did not
    end, to be kept alive: the allocators' capture filters point at them. A sticky CUDA error raises here
    (no recovery)."""
    torch.cuda.set_stream(stream)
    torch.cuda.synchronize()
    graphs, tb = [], error.__traceback__
    while tb is not None:  # torch.cuda.graph's `graph`, make_graphed_callables' fwd_graphs / bwd_graphs
        for value in list(tb.tb_frame.f_locals.values()):
            items = value if isinstance(value, list | tuple) else (value,)
            graphs += [g for g in items if _unfinished(g) and all(g is not k for k in graphs)]
        tb = tb.tb_next
    if owner.pool is not None:
        device = torch.cuda.current_device()
        try:
            torch._C._cuda_endAllocateToPool(device, owner.pool)
        except RuntimeError:  # no capture into the pool under way: it had not begun, or it ended
            return graphs
        torch._C._cuda_releasePool(device, owner.pool)  # the reference of the capture that did not end
        owner.pool = None
    return graphs


class _Captured:
    """One capture: its input buffers, its output buffers, and what it reads that must stay alive."""

    def __init__(self, graph: Any, inputs: tuple[torch.Tensor, ...], out: Any, kept: list) -> None:
        self.graph, self.inputs, self.out, self.kept = graph, inputs, out, kept

    def __call__(self, inputs: tuple[torch.Tensor, ...]) -> Any:
        """Copy ``inputs`` in, replay: the output buffers (the next replay overwrites them)."""
        for buf, t in zip(self.inputs, inputs, strict=True):
            buf.copy_(t, non_blocking=True)
        self.graph.replay()
        return self.out


def _kept_tensors(model: nn.Module) -> list[torch.Tensor]:
    """Tensors a captured pass may read that live in caches, not in the model: the device constants and
    every BN fold cached by the model's backbones (a cache rebuilt later would free them under the graph)."""
    from bevforge.models.frozen_bn import FoldCache
    from bevforge.ops import constants

    kept = list(constants._CACHE.values())
    for module in model.modules():
        for value in vars(module).values():
            if isinstance(value, FoldCache):
                for entry in list(value._entries.values()):
                    kept += [t for t in (entry.scale, entry.bias, entry.weight) if t is not None]
    return kept


class GraphHolder:
    """What the two graph holders of a model share (:class:`HistoryGraph`, ``frame_graph.FrameGraph``):
    the captures per input signature, their limits, and the SCA bound check. Not a module: nothing of it
    is in the state dict; a copy or an unpickled one starts without graphs."""

    what = "a graph"  # the option, in warnings

    def __init__(self, max_graphs: int = 2, warmup: int = 2) -> None:
        self.max_graphs, self.warmup = max_graphs, warmup
        self._graphs: dict[tuple, Any] = {}
        #: signatures whose eager first frame ran -> what it learnt (``FrameGraph``: the prediction keys)
        self._seen: dict[tuple, Any] = {}
        self._failed: set[tuple] = set()  # signatures whose capture raised: eager from then on
        self.failures: list[str] = []  # their errors, "Type: first line" (bench rows say so)
        self.replays = 0  # for tests and logs
        self._epoch = 0  # sca_bound_epoch of the model when the graphs were captured
        #: the memory pool of this holder's captures (:meth:`_pool_id`)
        self.pool: Any = None

    @staticmethod
    def signature(tensors: tuple[torch.Tensor, ...], *static: Any) -> tuple:
        """What a capture is specific to: the autocast state, ``static`` (sizes passed as numbers) and the
        tensors' shapes, dtypes and strides."""
        amp, dtype = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
        return (*static, amp, dtype, *((t.shape, t.dtype, t.stride()) for t in tensors))

    def _graph_for(
        self, model: nn.Module, key: tuple, capture: Callable[[], Any], eager_first: bool = True
    ) -> Any | None:
        """The capture of signature ``key``, made by ``capture()`` if there is none yet; None where this
        frame runs eagerly: the first frame of a signature when ``eager_first`` (the caller runs it and
        records :attr:`_seen`), more signatures than ``max_graphs``, or a signature whose capture failed.

        A capture that raises (an operation that cannot be captured, out of memory with the graph's own
        pool, ...) does not stop the run: it is warned about once, with the option to turn off, and that
        signature runs eagerly from then on (the same computation, at the eager speed)."""
        captured = self._graphs.get(key)
        if captured is not None or key in self._failed or len(self._graphs) >= self.max_graphs:
            return captured
        if eager_first and key not in self._seen:
            return None
        self._capturing_first(model)
        stream = torch.cuda.current_stream() if torch.cuda.is_available() else None
        try:
            captured = capture()
        except Exception as e:  # noqa: BLE001 - any failure of the capture falls back to the eager frame
            if stream is not None:
                _UNFINISHED_CAPTURES.extend(_release_failed_capture(e, self._pool_owner(model), stream))
            self._failed.add(key)
            first = (str(e).strip().splitlines() or [""])[0]
            self.failures.append(f"{type(e).__name__}: {first}")
            memory = (
                " The graph keeps its activations in its own memory pool: a smaller data.batch_size may fit."
                if isinstance(e, torch.OutOfMemoryError)
                else ""
            )
            warnings.warn(
                f"{self.what}: capturing a CUDA graph failed ({type(e).__name__}: {first}); frames of this "
                f"input shape run eagerly from now on (same results, eager speed).{memory} Turn it off with "
                f"--set {self.what}=false, and please report the error.",
                stacklevel=4,
            )
            return None
        self._graphs[key] = captured
        return captured

    def outcome(self, label: str) -> str:
        """``label`` for a result row, saying when the graph did not do its job: a capture that failed (the
        frames ran eagerly) or no replay at all (CPU, or too few steps)."""
        if self.failures:
            return f"{label} FELL BACK to eager ({self.failures[0][:80]})"
        return label if self.replays else f"{label} NOT REPLAYED"

    def _pool_owner(self, model: nn.Module) -> GraphHolder:
        """The holder whose memory pool this one's captures go into (its own)."""
        return self

    def _pool_id(self) -> Any:
        """This holder's memory pool, made before its first capture (so a failed capture's reservation can
        be handed back, :func:`_release_failed_capture`) and shared by its later captures."""
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        return self.pool

    def _record(self, run: Callable[[], Any]) -> tuple[Any, Any]:
        """``run()`` warmed up ``warmup`` times on a side stream (Triton compiles, cuDNN's picks, caches
        fill), then captured into :meth:`_pool_id`: ``(graph, run's output buffers)``."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the capture stream
            for _ in range(self.warmup):
                run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread-local: the data loader's pin-memory thread keeps calling CUDA during the capture
        with torch.cuda.graph(graph, pool=self._pool_id(), capture_error_mode="thread_local"):
            out = run()
        return graph, out

    def _capture_no_grad(
        self, model: nn.Module, fn: Callable[..., Any], inputs: tuple[torch.Tensor, ...]
    ) -> _Captured:
        """``fn(*inputs)`` of ``model`` without gradients, in the step's autocast dtype (its cast cache off: a
        cached cast would not outlive the step), captured on buffers cloned from ``inputs``."""
        static = tuple(t.clone() for t in inputs)
        amp, dtype = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")

        def run() -> Any:
            autocast = torch.autocast("cuda", dtype=dtype, cache_enabled=False) if amp else nullcontext()
            with torch.no_grad(), autocast:
                return fn(*static)

        graph, out = self._record(run)
        return _Captured(graph, static, out, _kept_tensors(model))

    def __deepcopy__(self, memo: dict) -> GraphHolder:
        return type(self)(self.max_graphs, self.warmup)

    def __getstate__(self) -> dict:
        return {"max_graphs": self.max_graphs, "warmup": self.warmup}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def _capturing_first(self, model: nn.Module) -> None:
        """Before a capture: the first of a new set records the SCA bound epoch its bounds belong to."""
        if not self._graphs:
            self._epoch = sca_bound_epoch(model)

    def _replayed(self, model: nn.Module) -> None:
        """After a replay: every ``CHECK_EVERY`` replays the SCA overflow flags are read (one sync); an
        overflow found by this or another holder of the model drops the graphs (recaptured, warned)."""
        self.replays += 1
        if self.replays % CHECK_EVERY:
            return
        sca_hit_overflow(model)  # an overflow moves the bound epoch
        epoch = sca_bound_epoch(model)
        if epoch != self._epoch:
            warnings.warn(
                f"{self.what}: a frame hit more BEV queries in a camera than the captured SCA bound "
                "(learnt from earlier frames + 10%); the extra queries were left out of its BEV since the "
                "last check. Recapturing with the grown bound.",
                stacklevel=3,
            )
            self._graphs.clear()
            self._epoch = epoch


class HistoryGraph(GraphHolder):
    """The history pass of a BEVFormer, captured per input signature (at most ``max_graphs``) and replayed.

    ``warmup`` eager passes run on a side stream before the capture (Triton compiles, cuDNN picks its
    algorithms, caches fill)."""

    what = "train.history_graph"

    # its pool is every capture's (``train.frame_graph`` captures into it too): each replay's temporaries are
    # dead when it returns (its output is cloned), so graphs that replay one after the other may share it

    def run(
        self, model: nn.Module, inputs: tuple[torch.Tensor, ...], pad_hw: tuple[int, int]
    ) -> torch.Tensor:
        """:func:`history_bev` of ``inputs`` (``images``, ``lidar2img``, ``can_bus``, ``prev_exists``, no
        given state) with ``model`` in eval mode: replayed on CUDA (captured at a new signature), eager
        on the CPU."""

        def step(*tensors: torch.Tensor) -> torch.Tensor:
            return history_bev(model, *tensors, pad_hw)

        if not self._replayable(inputs):
            with torch.no_grad():
                return step(*inputs)
        key = self.signature(inputs, pad_hw)
        captured = self._graph_for(
            model, key, lambda: self._capture_no_grad(model, step, inputs), eager_first=False
        )
        if captured is None:  # a rare shape (an epoch's last batch), a failed capture: eager
            with torch.no_grad():
                return step(*inputs)
        out = captured(inputs).clone()  # the next replay overwrites the captured buffer
        self._replayed(model)
        return out

    @staticmethod
    def _replayable(inputs: tuple[torch.Tensor, ...]) -> bool:
        """CUDA tensors: what a captured history pass can take."""
        return inputs[0].is_cuda
