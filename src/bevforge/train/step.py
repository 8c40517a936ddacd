"""One training step: autocast forward, fp32 criterion, scaled backward, accumulation, clip, skip-on-NaN.

Non-finite steps are skipped without a host sync on CUDA (the fused AdamW kernel reads a ``found_inf``
flag, as under ``GradScaler``); on the CPU the check is a cheap Python bool. ``max_nan_steps``
consecutive skipped steps stop the run with :class:`NonFiniteLoss`.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from bevforge.structures.batch import Batch
from bevforge.train.distributed import all_reduce_max_
from bevforge.train.errors import NonFiniteLoss

AMP_MODES = ("auto", "bf16", "fp16", "off")


def resolve_amp(mode: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` on GPUs that support it, ``fp16`` on older GPUs, ``off`` on the CPU."""
    if mode not in AMP_MODES:
        raise ValueError(f"train.amp={mode!r} is not one of {', '.join(AMP_MODES)}")
    if mode == "auto":
        if device.type != "cuda":
            return "off"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if mode == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU does not support bf16; use --amp fp16 (or off)")
    return mode


def to_fp32(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor) and obj.is_floating_point() and obj.dtype != torch.float32:
        return obj.float()
    if isinstance(obj, dict):
        return {k: to_fp32(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(to_fp32(v) for v in obj)
    return obj


class Stepper:
    """Owns the forward/backward/update sequence of the training loop."""

    def __init__(
        self,
        model: nn.Module,
        criterion: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        *,
        device: torch.device,
        amp: str,
        grad_clip: float,
        accum_steps: int,
        max_nan_steps: int,
    ) -> None:
        if accum_steps < 1:
            raise ValueError(f"train.accum_steps must be >= 1, got {accum_steps}")
        self.model, self.criterion = model, criterion
        self.optimizer, self.scheduler = optimizer, scheduler
        self.device, self.amp = device, amp
        self.grad_clip, self.accum_steps, self.max_nan_steps = grad_clip, accum_steps, max_nan_steps
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
        self.autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
        self._fused = bool(optimizer.defaults.get("fused")) and device.type == "cuda"
        self._params = [p for g in optimizer.param_groups for p in g["params"]]
        self._loss_ok = torch.ones((), dtype=torch.bool, device=device)
        self.consecutive_bad = torch.zeros((), dtype=torch.int64, device=device)
        self.max_consecutive_bad = torch.zeros((), dtype=torch.int64, device=device)
        self.skipped_steps = torch.zeros((), dtype=torch.int64, device=device)
        self.last_grad_norm: torch.Tensor | None = None
        self.last_lr = max(g["lr"] for g in optimizer.param_groups)

    def forward_backward(self, batch: Batch, sync_grads: bool = True) -> dict[str, torch.Tensor]:
        """Forward + backward of one (micro-)batch; ``sync_grads=False`` skips the DDP all-reduce."""
        no_sync = isinstance(self.model, DDP) and not sync_grads
        if self.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()  # train.compile=reduce-overhead: a new graph step
        with self.model.no_sync() if no_sync else contextlib.nullcontext():  # type: ignore[operator]
            with torch.autocast(
                self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None
            ):
                preds, _ = self.model(batch, None)
            losses = self.criterion(to_fp32(preds), batch.gt_boxes, batch.gt_labels, batch.seg_target)
            if "loss" not in losses:
                raise KeyError(
                    f"the criterion returned {sorted(losses)} without the 'loss' entry to backprop"
                )
            loss = losses["loss"]
            self._loss_ok &= torch.isfinite(loss.detach())
            self.scaler.scale(loss / self.accum_steps).backward()
        return {k: v.detach() for k, v in losses.items()}

    def optimizer_step(self) -> torch.Tensor:
        """Unscale, clip (L2), update unless non-finite, advance the schedule. Returns the grad norm."""
        self.last_lr = max(g["lr"] for g in self.optimizer.param_groups)  # the rate this step uses
        if self.scaler.is_enabled():
            self.scaler.unscale_(self.optimizer)
        params = [p for p in self._params if p.grad is not None]
        max_norm = self.grad_clip if self.grad_clip > 0 else math.inf
        if params:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=self.device.type == "cuda")
        else:
            grad_norm = torch.zeros((), device=self.device)
        bad = ~self._loss_ok
        if not self.scaler.is_enabled():  # with fp16 the scaler handles inf gradients itself
            bad = bad | ~torch.isfinite(grad_norm)
        bad = all_reduce_max_(bad.to(torch.int64))  # every rank skips together
        if self.scaler.is_enabled():
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif self._fused:
            self.optimizer.found_inf = bad.float()  # type: ignore[attr-defined]  # fused kernel skips, no sync
            self.optimizer.step()
        elif not bool(bad):  # CPU: reading the flag costs nothing
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*")
            self.scheduler.step()
        self.consecutive_bad = (self.consecutive_bad + bad) * bad
        self.max_consecutive_bad = torch.maximum(self.max_consecutive_bad, self.consecutive_bad)
        self.skipped_steps += bad
        self._loss_ok = torch.ones((), dtype=torch.bool, device=self.device)
        self.last_grad_norm = grad_norm.detach()
        return self.last_grad_norm

    def check_non_finite(self) -> None:
        """Raise once ``max_nan_steps`` consecutive steps were skipped (a host sync: call at log steps)."""
        if self.max_nan_steps > 0 and int(self.max_consecutive_bad) >= self.max_nan_steps:
            raise NonFiniteLoss(
                f"{int(self.max_consecutive_bad)} optimizer steps in a row had a non-finite loss or gradient "
                f"({int(self.skipped_steps)} skipped in total); stopping. Lower the LR (--set train.lr=...), "
                "keep gradient clipping on (train.grad_clip), try --amp bf16 instead of fp16, and check the "
                "data with `bevforge browse`."
            )

    def state_dict(self) -> dict[str, Any]:
        return {"scaler": self.scaler.state_dict(), "skipped_steps": int(self.skipped_steps)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.skipped_steps.fill_(int(state.get("skipped_steps", 0)))
