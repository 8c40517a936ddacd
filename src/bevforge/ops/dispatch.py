"""What the kernel dispatches of ``ops/*`` share: the ``BEVFORGE_KERNELS`` switch (:func:`kernel_choice`,
:func:`kernels` to set it for a block), a lazily imported op, the device checks every kernel starts with
(:func:`placement_ineligible_reason`) and the kernel-or-reference decision (:func:`select_kernel`).

``BEVFORGE_KERNELS=reference|triton|auto`` (default ``auto``). ``BEVFORGE_KERNELS_OFF=name,...`` switches
single kernels off (their references run; names: :data:`KERNEL_NAMES`, as ``bevforge doctor`` reports
them): the way around one kernel that fails on a GPU without giving up the others. A custom op is imported
on first use, so importing bevforge never imports Triton; an op whose import fails is simply not eligible
and :attr:`LazyOp.error` says why.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import warnings
from collections.abc import Iterator
from typing import Any

import torch


def kernel_choice() -> str:
    choice = os.environ.get("BEVFORGE_KERNELS", "auto").lower()
    if choice not in ("reference", "triton", "auto"):
        raise ValueError(f"BEVFORGE_KERNELS={choice!r}: use reference, triton or auto")
    return choice


#: the kernels by name (``BEVFORGE_KERNELS_OFF``, ``bevforge doctor``, :class:`LazyOp`)
KERNEL_NAMES = ("msda", "msda-offsets", "msda-cameras", "dcn", "bev-pool", "finish-images")


def kernels_off() -> tuple[str, ...]:
    """The kernel names in ``BEVFORGE_KERNELS_OFF`` (comma-separated; an unknown name is an error)."""
    raw = os.environ.get("BEVFORGE_KERNELS_OFF", "")
    if not raw:
        return ()
    names = tuple(n.strip().lower() for n in raw.split(",") if n.strip())
    unknown = [n for n in names if n not in KERNEL_NAMES]
    if unknown:
        raise ValueError(
            f"BEVFORGE_KERNELS_OFF={raw!r}: unknown kernel(s) {unknown}; use {', '.join(KERNEL_NAMES)}"
        )
    return names


def interpreting() -> bool:
    """True under ``TRITON_INTERPRET=1`` (Triton kernels then run on CPU tensors, for tests)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


class LazyOp:
    """``module:attribute`` of a custom op of the kernel ``name`` (:data:`KERNEL_NAMES`), imported on the
    first :meth:`get`."""

    #: every LazyOp made so far (:func:`prime_kernel_ops` imports them all)
    instances: list[LazyOp] = []

    def __init__(self, module: str, attribute: str, name: str) -> None:
        if name not in KERNEL_NAMES:
            raise ValueError(f"kernel name {name!r} is not one of {KERNEL_NAMES}")
        self.module, self.attribute, self.name = module, attribute, name
        self.op: Any = None
        self.error: str | None = None
        self._tried = False
        LazyOp.instances.append(self)

    def get(self) -> Any:
        """The op, or None when it cannot be imported (no triton, a broken triton, no driver) or its kernel
        is in ``BEVFORGE_KERNELS_OFF`` (:meth:`unavailable` says which)."""
        if not self._tried:
            self._tried = True
            try:
                self.op = getattr(importlib.import_module(self.module), self.attribute)
            except Exception as e:
                self.error = f"{type(e).__name__}: {e}"
        return None if self.name in kernels_off() else self.op

    def unavailable(self) -> str:
        """Why :meth:`get` returns None."""
        if self.name in kernels_off():
            return f"switched off by BEVFORGE_KERNELS_OFF={os.environ.get('BEVFORGE_KERNELS_OFF')}"
        return f"triton could not be imported ({self.error})"


#: the modules that make the kernel ops' LazyOps (imported by :func:`prime_kernel_ops`)
_KERNEL_OP_MODULES = (
    "bevforge.ops.msda",
    "bevforge.ops.dcn.sampled",
    "bevforge.ops.bev_pool",
    "bevforge.data.device_images",
)


def prime_kernel_ops() -> None:
    """Import every kernel op now, before ``torch.compile`` traces anything: its tracer cannot run an
    import, so the first :meth:`LazyOp.get` inside a compiled region (the first kernel it dispatches,
    where no eager call came before) is a graph break, and an error under ``fullgraph``. An op that cannot
    be imported (no Triton) stays ineligible, as on first use."""
    for module in _KERNEL_OP_MODULES:
        importlib.import_module(module)
    for op in LazyOp.instances:
        op.get()


def placement_ineligible_reason(tensors: list[torch.Tensor], fallback: str, hint: str = "") -> str | None:
    """What every Triton op's eligibility starts with: not inside an ONNX export / TorchScript trace (they
    take ``fallback``), every tensor on one device, and that device CUDA (or CPU under the interpreter).
    None when these hold, else why not (``hint`` follows the several-devices reason)."""
    if torch.onnx.is_in_onnx_export() or torch.jit.is_tracing():
        return f"exporting (ONNX/TorchScript use the {fallback})"
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        return f"inputs on several devices {sorted(str(d) for d in devices)}{hint}"
    device = tensors[0].device
    if device.type != "cuda" and not (device.type == "cpu" and interpreting()):
        return f"tensors on {device.type} (needs CUDA, or CPU with TRITON_INTERPRET=1)"
    return None


def select_kernel(choice: str, op: LazyOp, reason: str | None, what: str) -> Any:
    """The op to run when ``reason`` is None and it imports, else None (the caller runs its reference);
    under ``BEVFORGE_KERNELS=triton`` a kernel that cannot run is an error naming ``what`` and why."""
    kernel = op.get() if reason is None else None
    if reason is None and kernel is None:
        reason = op.unavailable()
    if reason is not None and choice == "triton":
        raise RuntimeError(
            f"BEVFORGE_KERNELS=triton but the {what} cannot run: {reason}. "
            "Unset BEVFORGE_KERNELS (auto falls back to the reference) or set it to 'reference'."
        )
    return kernel


class KernelLaunchError(RuntimeError):
    """A Triton kernel failed to compile or launch on this machine; the message names it and the way
    around it (the original error is its ``__cause__``)."""


def launch(what: str, kernel: Any, grid: Any, *args: Any, **kwargs: Any) -> None:
    """``kernel[grid](*args, **kwargs)`` for ``what`` ("<kernel name> <part>", e.g. "msda-cameras
    backward"). Where it fails (Triton cannot compile the kernel for this GPU, too little shared memory
    or too many registers, a driver error at launch) the error is a :class:`KernelLaunchError` that names
    the kernel and how to run without it, instead of Triton's own. A fault inside a running kernel is
    reported by CUDA later, not here."""
    try:
        kernel[grid](*args, **kwargs)
    except Exception as e:
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        name = what.split()[0]
        raise KernelLaunchError(
            f"the Triton {what} kernel failed to compile or launch here ({type(e).__name__}: {first}); "
            f"BEVFORGE_KERNELS_OFF={name} runs its pure-PyTorch reference instead (BEVFORGE_KERNELS="
            "reference: every kernel's), and `bevforge doctor` checks every kernel on this GPU"
        ) from e


@contextlib.contextmanager
def kernels(choice: str | None) -> Iterator[None]:
    """``BEVFORGE_KERNELS=choice`` inside the block (None: leave it as it is), restored afterwards."""
    old = os.environ.get("BEVFORGE_KERNELS")
    if choice is not None:
        os.environ["BEVFORGE_KERNELS"] = choice
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("BEVFORGE_KERNELS", None)
        else:
            os.environ["BEVFORGE_KERNELS"] = old


def alert_not_deterministic(what: str) -> None:
    """What PyTorch's own non-deterministic CUDA ops do under ``torch.use_deterministic_algorithms(True)``:
    raise, or warn under ``warn_only=True`` (``--deterministic``). For kernels that sum with atomics."""
    if not torch.are_deterministic_algorithms_enabled():
        return
    message = (
        f"{what} sums gradients with fp32 atomic adds, so it is not deterministic (the order of the sums, "
        "i.e. fp32 rounding, varies from run to run), but torch.use_deterministic_algorithms(True) is set. "
        "BEVFORGE_KERNELS=reference runs the grid_sample reference instead, whose CUDA backward PyTorch "
        "flags the same way; or call torch.use_deterministic_algorithms(True, warn_only=True) (what "
        "--deterministic does) to accept it with this warning."
    )
    if torch.is_deterministic_algorithms_warn_only_enabled():
        warnings.warn(message, stacklevel=2)
    else:
        raise RuntimeError(message)
