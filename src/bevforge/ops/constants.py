"""Small constant tensors (level shapes, level starts, normalisers) on the compute device, made once.

A ``torch.tensor([...]).to(cuda)`` in a forward pass is a host->device copy on every call: a launch of
its own, and an error while a CUDA graph is being captured ("Cannot copy between CPU and CUDA tensors
during CUDA graph capture"). :func:`device_constant` copies each distinct constant once per device and
dtype and hands the same tensor back afterwards. The tensors are shared: read them, never write them.
They are made outside inference mode: a constant first asked for by an evaluation under
``torch.inference_mode`` is then saved for backward by training.

While tracing (``torch.compile``, ``torch.jit`` / ONNX export) the cache is bypassed: the constant is
built in the traced code as before, so it is part of the graph. While a CUDA graph is captured, a
constant not cached yet (no eager warm-up ran first) is built with device-side fills, not cached: it
lives in the graph's private memory pool.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

#: (values, dtype, device) -> the tensor on that device
_CACHE: dict[tuple, torch.Tensor] = {}
_MAX_ENTRIES = 512


def capturing_cuda_graph() -> bool:
    """True while the current CUDA stream is being captured into a CUDA graph."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def _tracing() -> bool:
    return torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


def _freeze(values: Sequence) -> tuple:
    """Nested sequences of Python numbers -> nested tuples (hashable)."""
    return tuple(_freeze(v) if isinstance(v, Sequence) else v for v in values)


def _filled(values: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The constant built on the device (one fill per element, no host copy); for capture."""
    host = torch.tensor(values, dtype=dtype)  # on the host only: its shape and values
    parts = [torch.full((), v, dtype=dtype, device=device) for v in host.reshape(-1).tolist()]
    if not parts:
        return torch.empty(host.shape, dtype=dtype, device=device)
    return torch.stack(parts).reshape(host.shape)


def device_constant(values: Sequence, dtype: torch.dtype, device: torch.device | str) -> torch.Tensor:
    """``torch.tensor(values, dtype=dtype)`` on ``device``, copied there once (read-only, shared)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if _tracing():
        return torch.tensor(values, dtype=dtype, device=device)
    key = (_freeze(values), dtype, device)
    hit = _CACHE.get(key)
    if hit is not None:
        return hit
    if capturing_cuda_graph():
        return _filled(key[0], dtype, device)
    if len(_CACHE) >= _MAX_ENTRIES:
        _CACHE.clear()
    # non_blocking: a pageable host->device copy is staged at once and does not wait for the stream;
    # a normal tensor even when first asked for under inference_mode (training saves it for backward)
    with torch.inference_mode(False):
        tensor = torch.tensor(key[0], dtype=dtype).to(device, non_blocking=True)
    _CACHE[key] = tensor
    return tensor
