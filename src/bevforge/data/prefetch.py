"""Batches moved to the device one ahead, on a copy stream (the evaluation runner's input, and the
trainer's and ``bench train``'s on CUDA with worker processes: ``train/trainer.prefetched``).

``batch.to(device)`` on the compute stream runs the host->device copy in stream order: after the previous
frame's kernels, before the next frame's, with the GPU idle meanwhile (a BEVFormer-base evaluation frame
ships 6 x 3 x 928 x 1600 fp32 images, 107 MB: ~4-5 ms over PCIe against a ~50 ms replayed frame).
:func:`device_prefetch` issues batch ``i + 1``'s copy on a side stream when batch ``i`` is handed out, so
it overlaps batch ``i``'s frame; the compute stream waits for a batch's copy before using it, and its
tensors are marked as used there (``record_stream``) so the caching allocator does not hand their memory
to the next copy early. The loader pins its batches (``pin_memory`` on CUDA), which the overlap needs.
Off CUDA it is ``batch.to(device)``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import fields

import torch

from bevforge.structures.batch import Batch


def _tensors(batch: Batch) -> Iterator[torch.Tensor]:
    """Every tensor of ``batch`` (fields and lists of tensors)."""
    for f in fields(batch):
        value = getattr(batch, f.name)
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, list):
            yield from (v for v in value if isinstance(v, torch.Tensor))


def device_prefetch(batches: Iterable[Batch], device: torch.device | str) -> Iterator[Batch]:
    """``batch.to(device)`` for each of ``batches`` in order, the next one's copy overlapping the work on
    the current one (CUDA)."""
    device = torch.device(device)
    if device.type != "cuda":
        for batch in batches:
            yield batch.to(device)
        return
    copy_stream = torch.cuda.Stream(device)

    def issue(batch: Batch) -> Batch:
        with torch.cuda.stream(copy_stream):
            return batch.to(device, non_blocking=True)

    it = iter(batches)
    following = next(it, None)
    pending = None if following is None else issue(following)
    while pending is not None:
        compute = torch.cuda.current_stream(device)
        compute.wait_stream(copy_stream)  # this batch's copy (the next one is not issued yet)
        for t in _tensors(pending):
            if t.is_cuda:
                t.record_stream(compute)
        current = pending
        following = next(it, None)
        pending = None if following is None else issue(following)  # overlaps the work on `current`
        yield current


__all__ = ["device_prefetch"]
