"""Resumable epochs: the epoch's batch order is fixed up front, so a run can restart mid-epoch.

At the start of every epoch the trainer records the RNG state, draws the epoch's batches of sample
indices from the loader's own (batch) sampler and iterates a copy of the loader over
``batches[skip:]``. A resumed run restores the recorded epoch-start RNG state, draws the same batches
and skips the ones already trained on, without loading them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from torch.utils.data import DataLoader, IterableDataset, Sampler


class FixedBatchSampler(Sampler[list[int]]):
    """Yields a precomputed list of index batches."""

    def __init__(self, batches: Sequence[list[int]]) -> None:
        self.batches = list(batches)

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def supports_resume(loader: DataLoader) -> bool:
    """Map-style dataset with a batch sampler (the loaders of ``bevforge.data.loader``)."""
    return not isinstance(loader.dataset, IterableDataset) and loader.batch_sampler is not None


def set_epoch(loader: DataLoader, epoch: int) -> None:
    for s in (loader.sampler, loader.batch_sampler, getattr(loader.batch_sampler, "sampler", None)):
        if s is not None and hasattr(s, "set_epoch"):
            s.set_epoch(epoch)


def draw_epoch_batches(loader: DataLoader, epoch: int) -> list[list[int]]:
    """The epoch's batches of dataset indices (consumes the RNG exactly as iterating the loader would)."""
    set_epoch(loader, epoch)
    assert loader.batch_sampler is not None
    return [list(b) for b in loader.batch_sampler]


def loader_over(loader: DataLoader, batches: Sequence[list[int]]) -> DataLoader:
    """A loader like ``loader`` (dataset, collate, workers, pinning) over the given batches only."""
    workers = loader.num_workers
    kwargs = {}
    if workers > 0:
        kwargs = {"prefetch_factor": loader.prefetch_factor, "persistent_workers": False}
    return DataLoader(
        loader.dataset,
        batch_sampler=FixedBatchSampler(batches),
        num_workers=workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context if workers > 0 else None,
        generator=loader.generator,
        pin_memory_device=loader.pin_memory_device,
        **kwargs,
    )
