"""Process-group set-up for training: one process per device under ``torchrun``, gloo on CPU, NCCL on GPU.

All distributed code of bevforge lives in ``train/`` (DESIGN.md, habit 4). Without ``torchrun``
(no ``WORLD_SIZE`` in the environment) everything here is a no-op on a single process.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def select_device(local_rank: int = 0, prefer: str = "auto") -> torch.device:
    """``cuda:<local_rank>`` when a GPU is visible (and ``prefer`` is not "cpu"), else the CPU."""
    if prefer != "cpu" and torch.cuda.is_available():
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} GPU(s) are visible; "
                "start at most one process per GPU (GPUS=<n> / torchrun --nproc_per_node <n>)"
            )
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(prefer_device: str = "auto", timeout_s: float = 1800.0) -> DistInfo:
    """Read RANK/WORLD_SIZE/LOCAL_RANK (set by torchrun), pick the device and join the process group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = select_device(local_rank, prefer_device)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(
            backend=backend,
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
            **kwargs,
        )
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=device)


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if is_dist():
        dist.barrier()


def cleanup() -> None:
    if is_dist():
        dist.destroy_process_group()


def all_reduce_mean(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Average scalar metrics over all ranks (one collective for the whole dict); None stays None."""
    if not is_dist() or not values:
        return values
    keys = sorted(k for k, v in values.items() if v is not None)
    vec = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=device)  # [K]
    dist.all_reduce(vec, op=dist.ReduceOp.SUM)
    vec /= dist.get_world_size()
    out = dict(values)
    out.update({k: float(v) for k, v in zip(keys, vec.tolist())})
    return out


def all_reduce_max_(t: torch.Tensor) -> torch.Tensor:
    """In-place max over ranks (e.g. a 'skip this step' flag every rank must agree on)."""
    if is_dist():
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t


def all_gather_objects(obj: object) -> list[object]:
    """Every rank's ``obj`` (rank order); ``[obj]`` on one process."""
    if not is_dist():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
