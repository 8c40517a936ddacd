"""A tiny stand-in model / criterion / dataset that follow the bevforge contracts (for trainer tests).

It uses every RNG the real parts use (torch dropout, numpy and python ``random`` in the dataset) so
resume tests check that all of them are restored. Run as a script to train it:
``python train_standin.py WORK_DIR [--resume auto] [--set k=v ...] [--nan-after N] [--die-in-save N]``
(also under ``torchrun``).
"""

from __future__ import annotations

import argparse
import io
import os
import random
import sys

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

from bevforge.config import Config, apply_overrides
from bevforge.structures.batch import Batch
from bevforge.structures.temporal import TemporalState

T, N, H, W, K, Q = 2, 2, 8, 8, 3, 4


class StandInDataset(Dataset):
    def __init__(self, num_samples: int = 12) -> None:
        self.num_samples = num_samples

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict:
        g = torch.Generator().manual_seed(index)
        images = torch.randn(T, N, 3, H, W, generator=g)  # [T, N, 3, H, W]
        images = images + 0.01 * float(np.random.rand()) + 0.01 * random.random()  # augmentation noise
        boxes = torch.randn(2, 9, generator=g)  # [M, 9]
        return {"images": images, "boxes": boxes, "labels": torch.tensor([0, index % K]), "index": index}


def collate(samples: list[dict]) -> Batch:
    b = len(samples)
    return Batch(
        images=torch.stack([s["images"] for s in samples]),  # [B, T, N, 3, H, W]
        lidar2img=torch.eye(4).expand(b, T, N, 4, 4).clone(),
        can_bus=torch.zeros(b, T, 18),
        ego2global=torch.eye(4, dtype=torch.float64).expand(b, T, 4, 4).clone(),
        lidar2ego=torch.eye(4, dtype=torch.float64).expand(b, T, 4, 4).clone(),
        frame_valid=torch.ones(b, T, dtype=torch.bool),
        scene_tokens=[["scene"] * T for _ in samples],
        sample_tokens=[f"s{s['index']}" for s in samples],
        timestamps=torch.zeros(b, T, dtype=torch.int64),
        img_hw=(H, W),
        gt_boxes=[s["boxes"] for s in samples],
        gt_labels=[s["labels"] for s in samples],
    )


class StandInModel(nn.Module):
    """``forward(batch, state) -> (preds, state)``; ``nan_after`` >= 0 makes outputs NaN from that call."""

    def __init__(self, dims: int = 16, nan_after: int = -1, kill_at_call: int = -1) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, dims, 3, padding=1), nn.BatchNorm2d(dims), nn.ReLU())
        self.norm = nn.LayerNorm(dims)
        self.drop = nn.Dropout(0.2)
        self.cls = nn.Linear(dims, Q * K)
        self.box = nn.Linear(dims, Q * 10)
        self.nan_after = nan_after
        self.kill_at_call = kill_at_call
        self.calls = 0

    def forward(self, batch: Batch, state: TemporalState | None = None) -> tuple[dict, TemporalState]:
        assert batch.images.dim() == 6
        b = batch.batch_size
        if self.calls == self.kill_at_call:
            os.kill(os.getpid(), 9)  # kill -9 mid-training
        x = batch.images[:, -1].flatten(0, 1)  # [B*N, 3, H, W] current frame
        f = self.backbone(x).mean(dim=(2, 3)).view(b, N, -1).mean(1)  # [B, C]
        f = self.drop(self.norm(f))
        if 0 <= self.nan_after <= self.calls:
            f = f * float("nan")
        self.calls += 1
        preds = {
            "cls_logits": self.cls(f).view(1, b, Q, K),  # [D, B, Q, K]
            "box_code": self.box(f).view(1, b, Q, 10),  # [D, B, Q, 10]
            "bev": f[:, None, :],  # [B, 1, C]
        }
        new_state = TemporalState(
            f.detach()[:, None], batch.can_bus[:, -1], [s[-1] for s in batch.scene_tokens]
        )
        return preds, new_state


class StandInCriterion(nn.Module):
    def forward(self, preds, gt_boxes, gt_labels, seg_target=None) -> dict[str, torch.Tensor]:
        target = torch.stack([b[:, :7].mean(0) for b in gt_boxes])  # [B, 7]
        loss_bbox = (preds["box_code"][-1, :, :, :7] - target[:, None]).abs().mean()
        labels = torch.stack([lab[0] for lab in gt_labels])  # [B]
        logits = preds["cls_logits"][-1].mean(1)  # [B, K]
        loss_cls = nn.functional.cross_entropy(logits, labels)
        return {"loss": loss_cls + loss_bbox, "loss_cls": loss_cls, "loss_bbox": loss_bbox}


def make_loader(num_samples: int = 12, batch_size: int = 2) -> DataLoader:
    ds = StandInDataset(num_samples)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    sampler = DistributedSampler(ds, shuffle=True, seed=0) if distributed else RandomSampler(ds)
    return DataLoader(ds, batch_size=batch_size, sampler=sampler, collate_fn=collate, num_workers=0)


def tiny_config(overrides: list[str] | None = None) -> Config:
    cfg = Config(name="standin")
    for kv in ("train.epochs=2", "train.warmup_iters=2", "train.log_interval=1", "train.lr=0.01"):
        apply_overrides(cfg, [kv])
    return apply_overrides(cfg, overrides or [])


def main(argv: list[str]) -> int:
    from bevforge.train import checkpoint
    from bevforge.train.errors import TrainingStopped
    from bevforge.train.trainer import train

    p = argparse.ArgumentParser()
    p.add_argument("work_dir")
    p.add_argument("--resume", default="")
    p.add_argument("--set", dest="overrides", nargs="*", default=[])
    p.add_argument("--nan-after", type=int, default=-1)
    p.add_argument("--die-in-save", type=int, default=0, help="kill -9 self during the N-th checkpoint save")
    p.add_argument("--samples", type=int, default=12)
    p.add_argument("--kill-at-call", type=int, default=-1, help="kill -9 self in the N-th forward (0-based)")
    args = p.parse_args(argv)
    if args.die_in_save > 0:
        real_save, count = torch.save, {"n": 0}

        def dying_save(obj, f, *a, **kw):
            count["n"] += 1
            if count["n"] >= args.die_in_save and not isinstance(f, io.BytesIO):
                f.write(b"PK\x03\x04 torn checkpoint")
                f.flush()
                os.kill(os.getpid(), 9)
            return real_save(obj, f, *a, **kw)

        checkpoint.torch.save = dying_save  # = torch.save: checkpoints are serialised straight into the file
    cfg = tiny_config(args.overrides)
    torch.manual_seed(cfg.train.seed)
    model = StandInModel(nan_after=args.nan_after, kill_at_call=args.kill_at_call)
    try:
        train(
            cfg, args.work_dir, resume=args.resume, model=model, criterion=StandInCriterion(),
            train_loader=lambda: make_loader(args.samples), progress=False, tensorboard=False,
        )  # fmt: skip
    except TrainingStopped as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
