"""Run set-up helpers of the trainer: seeding, determinism, building and wrapping the parts."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from bevforge.config import Config
from bevforge.train.checkpoint import CheckpointError, load_checkpoint, model_state_from
from bevforge.train.distributed import DistInfo


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed python, numpy and torch (all devices); ``deterministic`` also fixes the kernel choice."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    else:
        torch.backends.cudnn.benchmark = True


def build_parts(
    cfg: Config,
    dist_info: DistInfo,
    model: nn.Module | None,
    criterion: nn.Module | None,
    train_loader: DataLoader | Callable[[], DataLoader] | None,
) -> tuple[nn.Module, nn.Module, DataLoader]:
    """Model, criterion and training loader from the config unless given (tests, custom scripts)."""
    if model is None:
        from bevforge.models.build import build_model

        model = build_model(cfg)
    if criterion is None:
        from bevforge.losses.build import build_criterion

        criterion = build_criterion(cfg)
    if train_loader is None:
        from bevforge.data.loader import build_dataloader

        loader = build_dataloader(cfg, cfg.data.train_split, train=True, distributed=dist_info.distributed)
    elif callable(train_loader) and not isinstance(train_loader, DataLoader):
        loader = train_loader()
    else:
        loader = train_loader
    return model, criterion, loader


def load_weights(model: nn.Module, path: str | Path) -> tuple[list[str], list[str]]:
    """``--load-from``: initialise weights (not a resume); returns (missing, unexpected) key lists."""
    ckpt = load_checkpoint(path)
    state = model_state_from(ckpt, path)
    own = model.state_dict()
    shape_mismatch = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if shape_mismatch:
        raise CheckpointError(
            f"{path}: {len(shape_mismatch)} tensors have other shapes than the model "
            f"(first: {shape_mismatch[0]} {tuple(state[shape_mismatch[0]].shape)} vs "
            f"{tuple(own[shape_mismatch[0]].shape)}); was it trained with another recipe? "
            "Convert official checkpoints with bevforge.models.checkpoint_adapter first."
        )
    result = model.load_state_dict(state, strict=False)
    return list(result.missing_keys), list(result.unexpected_keys)


def wrap_model(model: nn.Module, cfg: Config, dist_info: DistInfo, warn: Callable[[str], None]) -> nn.Module:
    """Move to the device, SyncBN (GPU only) and DDP when distributed."""
    model = model.to(dist_info.device)
    if not dist_info.distributed:
        return model
    if cfg.train.sync_bn:
        if dist_info.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            warn("--sync-bn needs CUDA devices; keeping per-process BatchNorm on the CPU")
    device_ids = [dist_info.device.index] if dist_info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=cfg.train.find_unused_parameters
    )


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
