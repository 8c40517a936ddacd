"""AdamW with parameter groups and the per-iteration cosine schedule with linear warm-up.

Groups (official BEVFormer recipe): image-backbone parameters (names starting with ``backbone.`` or
``img_backbone``) train at ``lr * backbone_lr_mult``; norms, biases and embeddings get no weight decay.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bevforge.config import TrainConfig

BACKBONE_PREFIXES = ("backbone.", "img_backbone")


def _is_backbone(name: str) -> bool:
    # DDP / torch.compile wrappers prefix names; look at the name below them.
    for wrapper in ("module.", "_orig_mod."):
        while name.startswith(wrapper):
            name = name[len(wrapper) :]
    return name.startswith(BACKBONE_PREFIXES)


def _no_decay_names(model: nn.Module) -> set[str]:
    """Parameters of norm layers and embeddings, and every bias / 1-d parameter."""
    names: set[str] = set()
    norm_types = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
    for mod_name, module in model.named_modules():
        is_norm_or_emb = isinstance(module, (*norm_types, nn.Embedding))
        is_norm_or_emb = is_norm_or_emb or "norm" in type(module).__name__.lower()
        for p_name, p in module.named_parameters(recurse=False):
            full = f"{mod_name}.{p_name}" if mod_name else p_name
            if is_norm_or_emb or p_name.endswith("bias") or p.ndim <= 1 or "embed" in p_name:
                names.add(full)
    return names


def param_groups(model: nn.Module, lr: float, weight_decay: float, backbone_lr_mult: float) -> list[dict]:
    """Up to four groups: (backbone | rest) x (decay | no decay); empty groups are dropped.

    Every group records ``initial_lr`` so the scheduler scales each group's own base rate.
    """
    no_decay = _no_decay_names(model)
    buckets: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = (_is_backbone(name), name not in no_decay)
        buckets.setdefault(key, []).append(p)
    groups = []
    for (is_backbone, decay), params in sorted(buckets.items()):
        group_lr = lr * (backbone_lr_mult if is_backbone else 1.0)
        groups.append(
            {
                "params": params,
                "lr": group_lr,
                "initial_lr": group_lr,
                "weight_decay": weight_decay if decay else 0.0,
                "name": f"{'backbone' if is_backbone else 'head'}_{'decay' if decay else 'no_decay'}",
            }
        )
    if not groups:
        raise ValueError("the model has no trainable parameters (all requires_grad=False?)")
    return groups


def build_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device, lr: float) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`; the fused kernel when every parameter is a CUDA float tensor."""
    groups = param_groups(model, lr, cfg.weight_decay, cfg.backbone_lr_mult)
    params = [p for g in groups for p in g["params"]]
    fused = device.type == "cuda" and all(p.is_cuda and p.is_floating_point() for p in params)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=cfg.weight_decay, fused=fused)


def lr_factor(
    step: int, total_steps: int, warmup_iters: int, warmup_ratio: float, min_lr_ratio: float
) -> float:
    """Multiplier of the base lr at optimizer step ``step`` (0-based).

    Linear warm-up from ``warmup_ratio`` to 1 over ``warmup_iters`` steps (mmcv 'linear' warm-up applied
    on top of the cosine value), cosine decay from 1 to ``min_lr_ratio`` over ``total_steps``.
    """
    total = max(total_steps, 1)
    progress = min(step, total) / total
    cosine = min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))
    if warmup_iters > 0 and step < warmup_iters:
        k = (1.0 - step / warmup_iters) * (1.0 - warmup_ratio)
        return cosine * (1.0 - k)
    return cosine


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-iteration schedule (call ``step()`` after every optimizer step)."""

    def factor(step: int) -> float:
        return lr_factor(step, total_steps, cfg.warmup_iters, cfg.warmup_ratio, cfg.min_lr_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def scaled_lr(cfg: TrainConfig, global_batch: int) -> float:
    """``--auto-scale-lr``: linear scaling rule, lr x global batch / ``base_batch_size``."""
    if not cfg.auto_scale_lr:
        return cfg.lr
    if cfg.base_batch_size <= 0:
        raise ValueError("train.base_batch_size must be > 0 with --auto-scale-lr")
    return cfg.lr * global_batch / cfg.base_batch_size
