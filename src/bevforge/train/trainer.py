"""The training loop: one readable function, explicit about data, precision, checkpoints and logging.

``train(cfg, work_dir)`` runs on one process (CPU or one GPU) or, under ``torchrun``, as one of N
DDP processes (one per device). The work dir receives ``output.log``, ``metrics.jsonl``, TensorBoard
events (``tb/``), ``config.json``, ``latest.pth`` and ``epoch_N.pth``. Iterations count batches;
the LR schedule advances once per optimizer step (``accum_steps`` batches).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from bevforge.config import Config, config_to_dict, dump_config
from bevforge.data.device_images import finish_images
from bevforge.data.prefetch import device_prefetch
from bevforge.structures.batch import Batch
from bevforge.train import checkpoint as ckpt_io
from bevforge.train import epoch_data
from bevforge.train.distributed import (
    DistInfo,
    all_gather_objects,
    barrier,
    cleanup,
    init_distributed,
    is_dist,
)
from bevforge.train.errors import OutOfMemory, TrainingStopped, oom_advice
from bevforge.train.monitor import TrainMonitor, truncate_metrics
from bevforge.train.optim import build_optimizer, build_scheduler, scaled_lr
from bevforge.train.setup import (
    backend_switches,
    build_parts,
    load_weights,
    seed_everything,
    set_tf32,
    unused_parameters,
    unwrap,
    wrap_model,
)
from bevforge.train.step import Stepper, resolve_amp


def train(
    cfg: Config,
    work_dir: str | Path,
    *,
    resume: str = "",
    load_from: str = "",
    model: nn.Module | None = None,
    criterion: nn.Module | None = None,
    train_loader: DataLoader | Callable[[], DataLoader] | None = None,
    progress: bool | None = None,
    tensorboard: bool = True,
) -> dict[str, Any]:
    """Train ``cfg`` into ``work_dir``; returns a summary (last metrics, iterations, checkpoint path).

    ``resume``: "" (fresh), "auto" (newest valid checkpoint in ``work_dir``, else fresh) or a path.
    ``load_from`` (or ``cfg.load_from``): initial weights only. ``model``/``criterion``/``train_loader``
    replace the parts built from the config (tests, custom scripts). Raises
    :class:`bevforge.train.errors.TrainingStopped` subclasses with advice on NaN losses or CUDA OOM.
    """
    owns_group = not is_dist()
    dist_info = init_distributed()
    try:
        # --deterministic flips process-wide torch switches: given back to an in-process caller
        with backend_switches():
            return _train(
                cfg, Path(work_dir), dist_info, resume, load_from or cfg.load_from, model, criterion,
                train_loader, progress, tensorboard,
            )  # fmt: skip
    finally:
        if owns_group:
            cleanup()


def _train(
    cfg: Config,
    work_dir: Path,
    dist_info: DistInfo,
    resume: str,
    load_from: str,
    model: nn.Module | None,
    criterion: nn.Module | None,
    train_loader: DataLoader | Callable[[], DataLoader] | None,
    progress: bool | None,
    tensorboard: bool,
) -> dict[str, Any]:
    tc, device, rank = cfg.train, dist_info.device, dist_info.rank
    if dist_info.is_main:
        work_dir.mkdir(parents=True, exist_ok=True)
        ckpt_io.remove_stale_temp_files(work_dir)
        dump_config(cfg, work_dir / "config.json")
    barrier()
    seed_everything(tc.seed + rank, tc.deterministic)
    set_tf32(tc.tf32)
    amp = resolve_amp(tc.amp, device)

    # ---- resume point (read before building the monitor: metrics after it are dropped)
    resume_path: Path | None = None
    if resume == "auto":
        resume_path = ckpt_io.find_resume_checkpoint(work_dir)
    elif resume:
        resume_path = Path(resume)
    state = None
    if resume_path is not None:
        state = ckpt_io.check_resumable(ckpt_io.load_checkpoint(resume_path), resume_path)
    if state is not None and dist_info.is_main:
        truncate_metrics(work_dir / "metrics.jsonl", int(state["global_iter"]))

    model, criterion, loader = build_parts(cfg, dist_info, model, criterion, train_loader)
    iters_per_epoch = len(loader)
    if iters_per_epoch == 0:
        raise TrainingStopped(
            f"the training loader of split {cfg.data.train_split!r} is empty: check data.info_dir "
            f"({cfg.data.info_dir}) and run `bevforge prepare`"
        )
    total_iters = tc.epochs * iters_per_epoch
    if tc.max_iters > 0:
        total_iters = min(total_iters, tc.max_iters)
    steps_per_epoch = math.ceil(iters_per_epoch / tc.accum_steps)
    total_steps = min(tc.epochs * steps_per_epoch, math.ceil(total_iters / tc.accum_steps))
    start_iter = int(state["global_iter"]) if state is not None else 0
    monitor = TrainMonitor(
        work_dir, is_main=dist_info.is_main, device=device, total_iters=total_iters,
        start_iter=start_iter, tensorboard=tensorboard, progress=progress,
    )  # fmt: skip
    try:
        if load_from and state is None:
            missing, unexpected = load_weights(model, load_from)
            monitor.info(
                f"loaded weights from {load_from} ({len(missing)} missing, {len(unexpected)} unexpected)"
            )
        criterion = criterion.to(device)
        if cfg.data.images_on_device and device.type != "cuda":
            monitor.warn(
                "data.images_on_device=true on the CPU: the batched photometric/normalise step costs more "
                "here than in the loader workers; --set data.images_on_device=false for CPU training"
            )
        probe = None
        if epoch_data.supports_resume(loader):
            amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
            probe = lambda m: unused_parameters(m, criterion, loader, device, amp_dtype, cfg.data)  # noqa: E731
        model = wrap_model(model, cfg, dist_info, monitor.warn, probe)
        global_batch = (loader.batch_size or cfg.data.batch_size) * dist_info.world_size * tc.accum_steps
        lr = scaled_lr(tc, global_batch)
        optimizer = build_optimizer(unwrap(model), tc, device, lr)
        scheduler = build_scheduler(optimizer, tc, total_steps)
        stepper = Stepper(
            model, criterion, optimizer, scheduler, device=device, amp=amp, grad_clip=tc.grad_clip,
            accum_steps=tc.accum_steps, max_nan_steps=tc.max_nan_steps,
        )  # fmt: skip
        n_params = sum(p.numel() for p in unwrap(model).parameters())
        if device.type == "cpu":
            from bevforge.doctor.env import cpu_thread_advice  # the doctor package: import on use

            if (advice := cpu_thread_advice()) is not None:
                monitor.warn(advice)
        monitor.info(
            f"training {cfg.name}: {n_params / 1e6:.2f}M parameters, {dist_info.world_size} process(es) on "
            f"{device.type}, amp {amp}, lr {lr:.3e} (global batch {global_batch}), {iters_per_epoch} "
            f"iterations/epoch, {total_iters} in total, work dir {work_dir}"
        )
        pos = _Position(epoch=0, iter_in_epoch=0, global_iter=0)
        rng_resume: dict[str, torch.Tensor] | None = None
        epoch_rng_resume: dict[str, torch.Tensor] | None = None
        if state is not None:
            try:
                unwrap(model).load_state_dict(ckpt_io.model_state_from(state, resume_path))
            except RuntimeError as e:
                raise ckpt_io.CheckpointError(
                    f"{resume_path} does not fit this config's model ({str(e).splitlines()[0]} ...); resume "
                    "with the config it was trained with, or use --load-from for a partial initialisation"
                ) from None
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            _sync_lr(optimizer, scheduler)
            stepper.load_state_dict(state.get("stepper", {}))
            pos = _Position(int(state["epoch"]), int(state["iter_in_epoch"]), int(state["global_iter"]))
            rng_resume = _rank_entry(state.get("rng"), rank, monitor)
            epoch_rng_resume = _rank_entry(state.get("epoch_rng"), rank, monitor)
            monitor.info(f"resumed from {resume_path} at epoch {pos.epoch + 1}, iteration {pos.global_iter}")
            _warn_drift(state, cfg, dist_info, monitor)
        elif resume == "auto":
            monitor.info(f"--resume auto: no valid checkpoint in {work_dir}, starting from scratch")

        saver = _Saver(work_dir, cfg, dist_info, model, optimizer, scheduler, stepper)
        last: dict[str, Any] = {}
        try:
            with monitor.warnings_to_log():  # the model's warnings (kernel fallbacks, graphs) in output.log
                last = _loop(
                    cfg, loader, model, stepper, monitor, saver, dist_info, pos, total_iters, rng_resume,
                    epoch_rng_resume,
                )  # fmt: skip
        except torch.OutOfMemoryError:
            optimizer.zero_grad(set_to_none=True)
            raise OutOfMemory(
                oom_advice(cfg.data.batch_size, amp, tc.grad_ckpt, cfg.data.img_scale)
            ) from None
        except RuntimeError as e:
            if "find_unused_parameters" in str(e) and not tc.find_unused_parameters:
                raise TrainingStopped(
                    "DDP found parameters that got no gradient in a step (a branch of the model is unused "
                    "by this recipe). Freeze them (requires_grad=False) or run with "
                    "--set train.find_unused_parameters=true (slower)."
                ) from e
            raise
        monitor.info(
            f"done: {pos.global_iter} iterations, {int(stepper.skipped_steps)} skipped non-finite steps, "
            f"checkpoint {saver.last_path}"
        )
        return {
            "work_dir": str(work_dir),
            "global_iter": pos.global_iter,
            "epoch": pos.epoch,
            "checkpoint": str(saver.last_path) if saver.last_path else "",
            "skipped_steps": int(stepper.skipped_steps),
            "last_metrics": last,
        }
    finally:
        monitor.close()


class _Position:
    def __init__(self, epoch: int, iter_in_epoch: int, global_iter: int) -> None:
        self.epoch, self.iter_in_epoch, self.global_iter = epoch, iter_in_epoch, global_iter


def _sync_lr(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LambdaLR) -> None:
    """Set each group's lr from this run's schedule at the restored step (same value when the schedule
    is unchanged; correct from the first step when epochs / max_iters changed)."""
    step = scheduler.last_epoch
    for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(step)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]  # what get_last_lr() reports


def _rank_entry(entries: Any, rank: int, monitor: TrainMonitor) -> dict[str, torch.Tensor] | None:
    if not entries:
        return None
    if rank >= len(entries):
        monitor.warn(f"the checkpoint was written by {len(entries)} process(es); RNG streams are not exact")
    return entries[rank % len(entries)]


def _flat(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix[:-1]: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}."))
    return out


def _warn_drift(state: dict[str, Any], cfg: Config, dist_info: DistInfo, monitor: TrainMonitor) -> None:
    """Say what differs from the run that wrote the checkpoint (allowed, but the user should know)."""
    try:
        old = _flat(json.loads(state.get("config_json", "{}")))
    except json.JSONDecodeError:
        return
    new = _flat(config_to_dict(cfg))
    changed = [f"{k}: {old[k]!r} -> {new[k]!r}" for k in sorted(new) if k in old and old[k] != new[k]]
    if changed:
        monitor.warn(
            "resuming with a changed config: " + "; ".join(changed[:8]) + (" ..." if len(changed) > 8 else "")
        )
    saved_world = int(state.get("world_size", dist_info.world_size))
    if saved_world != dist_info.world_size and int(state.get("iter_in_epoch", 0)) > 0:
        monitor.warn(
            f"the checkpoint was written by {saved_world} process(es), this run has {dist_info.world_size}: "
            "the rest of this epoch uses a different sample order (runs are not bit-identical)"
        )


class _Saver:
    """Writes checkpoints atomically (rank 0); every rank contributes its RNG state."""

    def __init__(
        self, work_dir: Path, cfg: Config, dist_info: DistInfo, model, optimizer, scheduler, stepper
    ):
        self.work_dir, self.cfg, self.dist_info = work_dir, cfg, dist_info
        self.model, self.optimizer, self.scheduler, self.stepper = model, optimizer, scheduler, stepper
        self.last_path: Path | None = None

    def save(self, names: list[str], pos: _Position, epoch_rng: dict[str, torch.Tensor]) -> None:
        rngs = all_gather_objects(ckpt_io.get_rng_state(self.dist_info.device))
        epoch_rngs = all_gather_objects(epoch_rng)
        if self.dist_info.is_main:
            payload = {
                "format": ckpt_io.FORMAT,
                "format_version": ckpt_io.FORMAT_VERSION,
                "model": unwrap(self.model).state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "stepper": self.stepper.state_dict(),
                "epoch": pos.epoch,
                "iter_in_epoch": pos.iter_in_epoch,
                "global_iter": pos.global_iter,
                "world_size": self.dist_info.world_size,
                "rng": rngs,
                "epoch_rng": epoch_rngs,
                "config_json": json.dumps(config_to_dict(self.cfg)),
                "saved_at": time.time(),
            }
            first = ckpt_io.save_checkpoint(self.work_dir / names[0], payload)
            for name in names[1:]:  # the same bytes under other names, each written atomically
                ckpt_io.copy_checkpoint(first, self.work_dir / name)
            self.last_path = self.work_dir / names[-1]
            ckpt_io.apply_retention(self.work_dir, self.cfg.train.keep_last)
        barrier()


def prefetched(batches: Iterable[Batch], loader: Any, device: torch.device) -> Iterable[Batch]:
    """The loader's batches; on CUDA with worker processes already on the device, the next batch's
    host->device copy running on a side stream while this step computes (:func:`device_prefetch`; base:
    ~100 MB of uint8 images per sample). Otherwise as they come, the caller moving each when its step
    starts (``batch.to(device)``, a no-op on a prefetched batch): with ``num_workers=0`` a lookahead would
    draw the next batch's augmentations from the main process's RNG before this step's grid mask, and a
    resumed run would no longer retrace an uninterrupted one."""
    if device.type == "cuda" and getattr(loader, "num_workers", 0) > 0:
        return device_prefetch(batches, device)
    return batches


def _loop(
    cfg: Config,
    loader: DataLoader,
    model: nn.Module,
    stepper: Stepper,
    monitor: TrainMonitor,
    saver: _Saver,
    dist_info: DistInfo,
    pos: _Position,
    total_iters: int,
    rng_resume: dict[str, torch.Tensor] | None,
    epoch_rng_resume: dict[str, torch.Tensor] | None,
) -> dict[str, Any]:
    tc, device = cfg.train, dist_info.device
    n = len(loader)
    last: dict[str, Any] = {}
    if pos.iter_in_epoch >= n:  # resumed from the end of an epoch
        pos.epoch, pos.iter_in_epoch = pos.epoch + 1, 0
        epoch_rng_resume = None
    resumable = epoch_data.supports_resume(loader)
    while pos.epoch < tc.epochs and pos.global_iter < total_iters:
        # ---- fix the epoch's batch order (restoring the recorded RNG state when resuming mid-epoch)
        if rng_resume is not None and (pos.iter_in_epoch == 0 or epoch_rng_resume is None):
            ckpt_io.set_rng_state(rng_resume, device)  # resumed at an epoch boundary
            rng_resume = None
        elif epoch_rng_resume is not None:
            ckpt_io.set_rng_state(epoch_rng_resume, device)  # redraw this epoch's batches identically
        epoch_rng = ckpt_io.get_rng_state(device)
        if resumable:
            batches = epoch_data.draw_epoch_batches(loader, pos.epoch)
            data_iter = iter(epoch_data.loader_over(loader, batches[pos.iter_in_epoch :]))
        else:
            epoch_data.set_epoch(loader, pos.epoch)
            data_iter = iter(loader)
            for _ in range(pos.iter_in_epoch):  # no batch sampler: skip by loading
                next(data_iter)
        if rng_resume is not None:
            ckpt_io.set_rng_state(rng_resume, device)
        rng_resume = epoch_rng_resume = None
        model.train()
        t_end = time.perf_counter()
        for batch in prefetched(data_iter, loader, device):
            data_time = time.perf_counter() - t_end
            batch = finish_images(batch.to(device), cfg.data)  # data.images_on_device: uint8 -> normalised
            i = pos.iter_in_epoch
            boundary = (i + 1) % tc.accum_steps == 0 or i + 1 == n or pos.global_iter + 1 == total_iters
            losses = stepper.forward_backward(batch, sync_grads=boundary)
            if boundary:
                stepper.optimizer_step()
            pos.iter_in_epoch += 1
            pos.global_iter += 1
            monitor.update(losses, data_time, batch.batch_size)
            at_end = pos.iter_in_epoch == n or pos.global_iter >= total_iters
            log_now = pos.global_iter % max(tc.log_interval, 1) == 0 or at_end
            if log_now:
                extra = {"skipped_steps": float(stepper.skipped_steps)}
                last = monitor.log(
                    epoch=pos.epoch, global_iter=pos.global_iter, lr=stepper.last_lr,
                    grad_norm=stepper.last_grad_norm, extra=extra,
                )  # fmt: skip
            if log_now or device.type == "cpu":  # a host sync: only at log steps on GPUs
                stepper.check_non_finite()
            ckpt_due = tc.ckpt_iter_interval > 0 and pos.global_iter % tc.ckpt_iter_interval == 0
            if ckpt_due and boundary and not at_end:
                saver.save(["latest.pth"], pos, epoch_rng)
            if pos.global_iter >= total_iters:
                break
            t_end = time.perf_counter()
        if pos.iter_in_epoch < n:  # stopped by max_iters mid-epoch: keep a resumable checkpoint
            saver.save(["latest.pth"], pos, epoch_rng)
            break
        pos.epoch, pos.iter_in_epoch = pos.epoch + 1, 0
        finished = pos.epoch >= tc.epochs or pos.global_iter >= total_iters
        if pos.epoch % max(tc.ckpt_interval, 1) == 0 or finished:
            saver.save([f"epoch_{pos.epoch}.pth", "latest.pth"], pos, epoch_rng)
        if tc.eval_interval > 0 and (pos.epoch % tc.eval_interval == 0 or finished):
            from bevforge.train.periodic_eval import periodic_eval

            metrics = periodic_eval(unwrap(model), cfg, dist_info, monitor, saver.work_dir, pos.epoch)
            last = {**last, **{f"val/{k}": v for k, v in metrics.items()}}
    return last
