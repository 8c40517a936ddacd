"""Selective recomputation: keep a region's custom-op outputs (the MSDA kernel's), recompute the rest.

The spatial cross-attention's deformable attention keeps, per layer, its value projection (bf16
``[B*N, S, C]``), its fp32 sampling locations (``[B*N, K, M, L, P, 2]``) and attention weights for the
MSDA's backward: at BEVFormer-base ~1.0 GiB over the six layers in the memory census at half the image
size, ~1.4 GiB at full size (the value projection grows with the image; benchmarks/README.md).
All of it comes from a few projections of tensors that are alive anyway (the gathered queries, the camera
features), so :func:`run_recomputed` runs such a region under a selective checkpoint
(``torch.utils.checkpoint`` with a policy): the ``bevforge`` custom ops (the MSDA kernel) keep their
outputs, everything else is recomputed in backward (three GEMMs and some elementwise work per layer),
and the MSDA kernel is never run twice. The same numbers as without it (a test checks the gradients). The
region casts afresh under autocast (no cast cache: the replay must dispatch what the forward did).

The temporal self-attention does the same (``model.tsa_recompute``, default auto): its region starts from
the layer's input, the positional encoding and the frame's BEVs (alive anyway) and keeps only the MSDA
output.

The encoder layers' FFN can run the same way (``model.ffn_recompute``, off by default): it has no custom
op, so only its input is kept and both GEMMs run again in backward (dropout replays its masks: the
checkpoint restores the RNG state).

Modes (:data:`RECOMPUTE_MODES`): ``"auto"`` recomputes where the MSDA runs as the custom op (CUDA, or the
CPU under ``TRITON_INTERPRET=1``; on the reference path the whole region would run twice), ``"on"``
always, ``"off"`` never. Never without autograd or under ``torch.compile``.

Random numbers: a region that draws none (the SCA's and TSA's: their dropout is outside, after the output
projection) is recomputed without saving and restoring the RNG state, which is exact and works while a
CUDA graph is captured (``train.frame_graph``: the graph's backward replays the recompute, so the frame
keeps the same memory as the eager step); reading the CUDA generator's state is not allowed there. A
region that draws (the FFN's dropout, ``draws_random=True``) restores the state in backward and is not
recomputed under capture.

Inside :func:`regions_off` regions run plainly: a checkpointed encoder layer (``train.grad_ckpt``) is
recomputed whole, and a region inside it would only add a third run of its projections. Under capture the
layer is not checkpointed (its dropout) and its regions are recomputed as configured.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

from bevforge.ops.constants import capturing_cuda_graph
from bevforge.ops.dispatch import kernel_choice, placement_ineligible_reason

RECOMPUTE_MODES = ("auto", "on", "off")

_STATE = threading.local()  # ``off``: inside regions_off (thread-local: the CUDA backward has its own thread)


def check_recompute_mode(mode: str, what: str, error: type[ValueError] = ValueError) -> None:
    """``error`` naming ``what`` unless ``mode`` is one of :data:`RECOMPUTE_MODES`."""
    if mode not in RECOMPUTE_MODES:
        raise error(f"{what}={mode!r} is not one of {', '.join(RECOMPUTE_MODES)}")


def recompute_active(mode: str, device_tensor: torch.Tensor, draws_random: bool = False) -> bool:
    """Whether a region on ``device_tensor``'s device runs recomputed under ``mode`` (one that
    ``draws_random`` not under CUDA-graph capture)."""
    if (
        mode == "off"
        or not torch.is_grad_enabled()
        or torch.compiler.is_compiling()
        or (draws_random and capturing_cuda_graph())
    ):
        return False
    if mode == "on":
        return True
    return (
        kernel_choice() != "reference" and placement_ineligible_reason([device_tensor], "reference") is None
    )


def _keep_custom_op_outputs(ctx: Any, func: Any, *args: Any, **kwargs: Any) -> CheckpointPolicy:
    if getattr(func, "namespace", None) == "bevforge":
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


_CONTEXT = functools.partial(create_selective_checkpoint_contexts, _keep_custom_op_outputs)


def _without_autocast_cache(fn: Callable[..., torch.Tensor], device_type: str, *args: Any) -> torch.Tensor:
    """``fn(*args)``, autocast (if on) casting afresh: the selective checkpoint replays the region's
    operators in backward and requires the same sequence, but autocast's cache of weight casts is filled
    by whatever ran before in the forward's autocast region (the history frames) and is empty in backward."""
    if not torch.is_autocast_enabled(device_type):
        return fn(*args)
    dtype = torch.get_autocast_dtype(device_type)
    with torch.autocast(device_type, dtype=dtype, cache_enabled=False):
        return fn(*args)


def run_recomputed(fn: Callable[..., torch.Tensor], *args: Any, draws_random: bool = False) -> torch.Tensor:
    """``fn(*args)``, keeping for backward only the region's inputs and its custom ops' outputs; the RNG
    state saved for the replay only when the region ``draws_random``."""
    device = next(a for a in args if isinstance(a, torch.Tensor)).device
    region = functools.partial(_without_autocast_cache, fn, device.type)
    return checkpoint(
        region, *args, use_reentrant=False, context_fn=_CONTEXT, preserve_rng_state=draws_random
    )


def recomputed(
    mode: str, fn: Callable[..., torch.Tensor], *args: Any, draws_random: bool = False
) -> torch.Tensor:
    """``fn(*args)``, as a recompute region where :func:`recompute_active` says so under ``mode`` (on the
    device of the first tensor argument). ``draws_random``: whether ``fn`` draws random numbers (dropout)."""
    device_tensor = next(a for a in args if isinstance(a, torch.Tensor))
    if not getattr(_STATE, "off", False) and recompute_active(mode, device_tensor, draws_random):
        return run_recomputed(fn, *args, draws_random=draws_random)
    return fn(*args)


@contextlib.contextmanager
def regions_off() -> Iterator[None]:
    """Recompute regions run plainly meanwhile (in this thread): for a computation checkpointed whole."""
    before = getattr(_STATE, "off", False)
    _STATE.off = True
    try:
        yield
    finally:
        _STATE.off = before


__all__ = [
    "RECOMPUTE_MODES",
    "check_recompute_mode",
    "recompute_active",
    "recomputed",
    "regions_off",
    "run_recomputed",
]
