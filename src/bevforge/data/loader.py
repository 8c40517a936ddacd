"""Data loader: collate to ``Batch``, the resumable training sampler, the scene-aware eval sampler.

Shape letters: B batch, T frames, N cameras, H/W padded image size, M boxes, S seg classes.

- Training: :class:`TrainSampler` (DistributedSampler semantics: same permutation on every rank from
  ``seed + epoch``, padded to a multiple of the world size, rank r takes ``perm[r::world]``), with
  ``set_epoch`` and ``set_start_index`` so the trainer can resume mid-epoch.
- Evaluation: :class:`SceneAwareDistributedSampler` gives every scene whole to one rank, frames in
  temporal order, scenes balanced by sample count (greedy, largest first). With ``batch_size > 1``
  :class:`SceneLaneBatchSampler` runs B scene streams side by side (element b of consecutive batches
  follows one stream), so temporal state per batch element stays valid; when the shortest streams end,
  later batches shrink from the end (the runner keeps ``state[:B']``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from bevforge.config import Config
from bevforge.data.nuscenes.dataset import NuScenesDataset
from bevforge.structures.batch import Batch


def collate(items: list[dict[str, Any]]) -> Batch:
    """Stack dataset items (``NuScenesDataset.__getitem__``) into a ``Batch``."""
    shapes = {tuple(it["images"].shape) for it in items}
    if len(shapes) != 1:
        raise ValueError(f"cannot batch items with different image/frame shapes {sorted(shapes)}")
    segs = [it["seg_target"] for it in items]
    return Batch(
        images=torch.stack([it["images"] for it in items]),  # [B, T, N, 3, H, W]
        lidar2img=torch.stack([it["lidar2img"] for it in items]),  # [B, T, N, 4, 4]
        can_bus=torch.stack([it["can_bus"] for it in items]),  # [B, T, 18]
        ego2global=torch.stack([it["ego2global"] for it in items]),  # [B, T, 4, 4]
        lidar2ego=torch.stack([it["lidar2ego"] for it in items]),  # [B, T, 4, 4]
        frame_valid=torch.stack([it["frame_valid"] for it in items]),  # [B, T]
        scene_tokens=[list(it["scene_tokens"]) for it in items],
        sample_tokens=[it["sample_token"] for it in items],
        timestamps=torch.stack([it["timestamps"] for it in items]),  # [B, T]
        img_hw=items[0]["img_hw"],
        gt_boxes=[it["gt_boxes"] for it in items],
        gt_labels=[it["gt_labels"] for it in items],
        seg_target=torch.stack(segs) if segs[0] is not None else None,  # [B, S, bev_h, bev_w]
        depth_gt=(
            torch.stack([it["depth_gt"] for it in items]) if items[0].get("depth_gt") is not None else None
        ),  # [B, N, fH, fW]
        photometric=(
            torch.stack([it["photometric"] for it in items])
            if items[0].get("photometric") is not None
            else None
        ),  # [B, T, N, 6]
    )


class TrainSampler(Sampler[int]):
    """Shuffled, DistributedSampler-compatible, resumable (``set_epoch``, ``set_start_index``)."""

    def __init__(
        self, size: int, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0
    ) -> None:
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside [0, {num_replicas})")
        self.size, self.num_replicas, self.rank = size, num_replicas, rank
        self.shuffle, self.seed = shuffle, seed
        self.epoch = 0
        self.start_index = 0
        self.num_samples = math.ceil(size / num_replicas)  # per rank (padded like DistributedSampler)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_start_index(self, start: int) -> None:
        """Skip the first ``start`` samples of THIS rank's list for the next epoch (mid-epoch resume)."""
        self.start_index = max(0, int(start))

    def indices(self) -> list[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.size, generator=g).tolist()
        else:
            order = list(range(self.size))
        total = self.num_samples * self.num_replicas
        order += order[: total - len(order)] if total > len(order) else []
        return order[self.rank : total : self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        mine = self.indices()[self.start_index :]
        self.start_index = 0  # applies to one epoch only
        return iter(mine)

    def __len__(self) -> int:
        return self.num_samples - self.start_index


def assign_scenes(scene_sizes: Sequence[int], num_bins: int) -> list[list[int]]:
    """Greedy balance: scenes (largest first) go to the bin with the fewest samples; sorted ids per bin."""
    bins: list[list[int]] = [[] for _ in range(num_bins)]
    load = [0] * num_bins
    for sid in sorted(range(len(scene_sizes)), key=lambda s: (-scene_sizes[s], s)):
        b = min(range(num_bins), key=lambda k: (load[k], k))
        bins[b].append(sid)
        load[b] += scene_sizes[sid]
    return [sorted(b) for b in bins]


def _scene_indices(scene_of: Sequence[int]) -> list[list[int]]:
    """Sample indices per scene id, in dataset (= temporal) order."""
    out: list[list[int]] = [[] for _ in range(max(scene_of) + 1 if scene_of else 0)]
    for i, s in enumerate(scene_of):
        out[s].append(i)
    return out


class SceneAwareDistributedSampler(Sampler[int]):
    """Evaluation: each rank gets whole scenes, in temporal order (no history lost at rank borders)."""

    def __init__(self, scene_of: Sequence[int], num_replicas: int = 1, rank: int = 0) -> None:
        self.per_scene = _scene_indices(scene_of)
        bins = assign_scenes([len(s) for s in self.per_scene], num_replicas)
        self.scenes = bins[rank]
        self.order = [i for sid in self.scenes for i in self.per_scene[sid]]

    def set_epoch(self, epoch: int) -> None:  # evaluation order never changes
        pass

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)


class SceneLaneBatchSampler(Sampler[list[int]]):
    """B parallel scene streams for eval with batch size > 1 (batch element b follows lane b)."""

    def __init__(
        self, scene_of: Sequence[int], batch_size: int, num_replicas: int = 1, rank: int = 0
    ) -> None:
        per_scene = _scene_indices(scene_of)
        rank_scenes = assign_scenes([len(s) for s in per_scene], num_replicas)[rank]
        lanes_sc = assign_scenes([len(per_scene[s]) for s in rank_scenes], batch_size)
        lanes = [[i for k in lane for i in per_scene[rank_scenes[k]]] for lane in lanes_sc]
        self.lanes = sorted((ln for ln in lanes if ln), key=len, reverse=True)  # ending lanes are last

    def __iter__(self) -> Iterator[list[int]]:
        steps = len(self.lanes[0]) if self.lanes else 0
        for t in range(steps):
            yield [lane[t] for lane in self.lanes if t < len(lane)]

    def __len__(self) -> int:
        return len(self.lanes[0]) if self.lanes else 0


def build_dataloader(
    cfg: Config,
    split: str,
    train: bool,
    distributed: bool = False,
    batch_size: int | None = None,
    shuffle: bool | None = None,
) -> DataLoader:
    """The loader of docs/CONTRACTS.md yielding ``Batch`` (T = queue_length in training, else 1)."""
    dataset = NuScenesDataset.from_config(cfg, split, train)
    bs = int(batch_size or cfg.data.batch_size)
    world, rank = 1, 0
    if distributed and torch.distributed.is_available() and torch.distributed.is_initialized():
        world, rank = torch.distributed.get_world_size(), torch.distributed.get_rank()
    workers = int(cfg.data.num_workers)
    common: dict[str, Any] = {
        "num_workers": workers,
        "collate_fn": collate,
        "pin_memory": torch.cuda.is_available(),
        "persistent_workers": workers > 0,
    }
    if workers > 0:
        common["prefetch_factor"] = 2
    if train:
        do_shuffle = True if shuffle is None else bool(shuffle)
        sampler = TrainSampler(len(dataset), world, rank, shuffle=do_shuffle, seed=cfg.train.seed)
        return DataLoader(dataset, batch_size=bs, sampler=sampler, drop_last=False, **common)
    if bs == 1:
        eval_sampler: Sampler[int] = SceneAwareDistributedSampler(
            [dataset.scene_of(i) for i in range(len(dataset))], world, rank
        )
        return DataLoader(dataset, batch_size=bs, sampler=eval_sampler, **common)
    lanes = SceneLaneBatchSampler([dataset.scene_of(i) for i in range(len(dataset))], bs, world, rank)
    return DataLoader(dataset, batch_sampler=lanes, **common)
