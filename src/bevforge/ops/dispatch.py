"""What the kernel dispatches of ``ops/*`` share: the ``BEVFORGE_KERNELS`` switch and a lazily imported op.

``BEVFORGE_KERNELS=reference|triton|auto`` (default ``auto``). A custom op is imported on first use, so
importing bevforge never imports Triton; an op whose import fails is simply not eligible and
:attr:`LazyOp.error` says why.
"""

from __future__ import annotations

import importlib
import os
from typing import Any


def kernel_choice() -> str:
    choice = os.environ.get("BEVFORGE_KERNELS", "auto").lower()
    if choice not in ("reference", "triton", "auto"):
        raise ValueError(f"BEVFORGE_KERNELS={choice!r}: use reference, triton or auto")
    return choice


def interpreting() -> bool:
    """True under ``TRITON_INTERPRET=1`` (Triton kernels then run on CPU tensors, for tests)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


class LazyOp:
    """``module:attribute`` of a custom op, imported on the first :meth:`get`."""

    def __init__(self, module: str, attribute: str) -> None:
        self.module, self.attribute = module, attribute
        self.op: Any = None
        self.error: str | None = None
        self._tried = False

    def get(self) -> Any:
        """The op, or None when it cannot be imported (no triton, a broken triton, no driver)."""
        if not self._tried:
            self._tried = True
            try:
                self.op = getattr(importlib.import_module(self.module), self.attribute)
            except Exception as e:
                self.error = f"{type(e).__name__}: {e}"
        return self.op
