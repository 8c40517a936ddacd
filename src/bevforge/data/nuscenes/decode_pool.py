"""The images of one training item decoded in threads (``data.decode_threads``).

An item is T frames x N cameras of JPEGs (a base sample: 24), read one after the other by its loader
worker. JPEG decoding and resizing run outside the GIL (simplejpeg / Pillow / OpenCV), so a few threads per
worker decode an item's images at once: the item's latency drops and a machine with more cores than loader
workers gets used. Only the reads run in threads; everything that draws random numbers (photometric
distortion, augmentation) stays in the item's own order, so an item is the same with or without them.

The pool is made lazily in the process that uses it (a loader worker; never pickled or forked with it).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the platform has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class DecodePool:
    """``threads`` reader threads per process (0 or 1: none, the reads run where they are asked for)."""

    def __init__(self, threads: int = 0) -> None:
        if threads < 0:
            raise ValueError(f"data.decode_threads must be >= 0, got {threads}")
        self.threads = int(threads)
        self._pool: ThreadPoolExecutor | None = None
        self._pid = -1

    def __getstate__(self) -> dict:
        return {"threads": self.threads}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["threads"])

    @property
    def active(self) -> bool:
        return self.threads > 1

    def submit_all(self, read: Callable[..., Any], jobs: dict[Hashable, tuple]) -> dict[Hashable, Future]:
        """``{key: read(*args)}`` as futures, started at once on the pool (made on first use in this
        process)."""
        if self._pool is None or self._pid != os.getpid():  # a forked worker holds a copy of no thread
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="bevforge-decode")
            self._pid = os.getpid()
        return {key: self._pool.submit(read, *args) for key, args in jobs.items()}


__all__ = ["DecodePool", "usable_cores"]
