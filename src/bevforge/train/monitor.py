"""What a training run tells its user: log lines / progress bar, ``metrics.jsonl``, TensorBoard, advice.

Only rank 0 writes. Loss values stay on the device between log intervals (summed as tensors), so the
hot loop never synchronises except at a log step (one ``tolist()`` for all terms). Python warnings raised
in the training process (a kernel fallback, a graph recaptured or left eager, ...) become WARNING lines of
``output.log`` while :meth:`TrainMonitor.warnings_to_log` is active (the trainer's loop).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
import time
import warnings
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import torch

from bevforge.train.distributed import all_reduce_mean

DATA_TIME_WARN_SHARE = 0.2
GPU_UTIL_WARN_PCT = 50.0
PLATEAU_WINDOW = 10  # logged values per window compared by the loss-not-decreasing check
PLATEAU_MIN_LR_SHARE = 0.1  # no loss-plateau warning once the LR has decayed below this share of its peak
_MIB = 1024.0 * 1024.0


def gpu_stats(device: torch.device) -> dict[str, float | None]:
    """Utilisation (%) via NVML and memory (MiB) via the caching allocator; None on CPU / without NVML."""
    stats: dict[str, float | None] = {
        "gpu_util": None,
        "mem_allocated_mib": None,
        "mem_reserved_mib": None,
        "mem_peak_mib": None,
    }
    if device.type != "cuda":
        return stats
    try:
        stats["gpu_util"] = float(torch.cuda.utilization(device))
    except Exception:  # pynvml (nvidia-ml-py) missing or NVML unavailable: degrade gracefully
        stats["gpu_util"] = None
    stats["mem_allocated_mib"] = torch.cuda.memory_allocated(device) / _MIB
    stats["mem_reserved_mib"] = torch.cuda.memory_reserved(device) / _MIB
    stats["mem_peak_mib"] = torch.cuda.max_memory_allocated(device) / _MIB
    return stats


def _fmt_eta(seconds: float) -> str:
    seconds = max(int(seconds), 0)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}"


class Advisor:
    """Turns logged numbers into warnings with advice (each kind rate-limited)."""

    def __init__(self, every: int = 20) -> None:
        self.every = every
        self.counts: dict[str, int] = {}
        self.losses: deque[float] = deque(maxlen=2 * PLATEAU_WINDOW)
        self.plateau_checked_at = 0
        self.records = 0
        self.peak_lr = 0.0

    def _due(self, kind: str) -> bool:
        n = self.counts.get(kind, 0)
        self.counts[kind] = n + 1
        return n % self.every == 0

    def check(self, rec: dict[str, Any]) -> list[str]:
        out: list[str] = []
        self.records += 1
        step, data = rec.get("step_time"), rec.get("data_time")
        if self.records == 1:  # the first window holds start-up (workers, allocator, kernels): no advice
            step = data = None
        if step and data is not None and data > DATA_TIME_WARN_SHARE * step and self._due("data"):
            out.append(
                f"data loading takes {100 * data / step:.0f}% of the step time: raise data.num_workers / "
                "enable the image cache (`bevforge cache`) / use faster storage"
            )
        util = rec.get("gpu_util") if self.records > 1 else None
        if util is not None and util < GPU_UTIL_WARN_PCT and self._due("gpu"):
            out.append(
                f"GPU utilisation is low ({util:.0f}%): check the data-time share, raise data.batch_size, "
                "or run more processes (GPUS=<n>)"
            )
        lr = rec.get("lr")
        if lr is not None:
            self.peak_lr = max(self.peak_lr, lr)
        # a flat loss at the tail of a decayed schedule (LR < 10 % of its peak) is convergence, not a fault
        annealed = lr is not None and lr < PLATEAU_MIN_LR_SHARE * self.peak_lr
        loss = rec.get("loss")
        if loss is not None and math.isfinite(loss):
            self.losses.append(loss)
            self.plateau_checked_at += 1
            if len(self.losses) == self.losses.maxlen and self.plateau_checked_at >= PLATEAU_WINDOW:
                self.plateau_checked_at = 0
                old = sum(list(self.losses)[:PLATEAU_WINDOW]) / PLATEAU_WINDOW
                new = sum(list(self.losses)[PLATEAU_WINDOW:]) / PLATEAU_WINDOW
                if new >= 0.99 * old and not annealed:
                    out.append(
                        f"the loss is not decreasing (mean {old:.4f} -> {new:.4f} over the last "
                        f"{2 * PLATEAU_WINDOW} logs): check the LR, visualise the data with `bevforge browse`"
                    )
        return out


class TrainMonitor:
    """Collects per-step numbers and writes them at log steps (rank 0 only)."""

    def __init__(
        self,
        work_dir: Path,
        *,
        is_main: bool,
        device: torch.device,
        total_iters: int,
        start_iter: int = 0,
        tensorboard: bool = True,
        progress: bool | None = None,
    ) -> None:
        self.work_dir = work_dir
        self.is_main = is_main
        self.device = device
        self.total_iters = total_iters
        self.advisor = Advisor()
        self._sums: dict[str, torch.Tensor] = {}
        self._n = 0
        self._data_time = 0.0
        self._samples = 0
        self._window_start = time.perf_counter()
        self._run_start = time.perf_counter()
        self._start_iter = start_iter
        self._log_file: TextIO | None = None
        self._metrics_file: TextIO | None = None
        self._tb: Any = None
        self._progress: Any = None
        self._task: Any = None
        if not is_main:
            return
        work_dir.mkdir(parents=True, exist_ok=True)
        self._log_file = open(work_dir / "output.log", "a", encoding="utf-8")  # noqa: SIM115
        self._metrics_file = open(work_dir / "metrics.jsonl", "a", encoding="utf-8")  # noqa: SIM115
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(work_dir / "tb"))
            except Exception as e:  # tensorboard missing: the jsonl still has everything
                self.info(f"TensorBoard disabled ({type(e).__name__}: {e})")
        if progress is None:
            progress = sys.stdout.isatty()
        if progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[bold]train"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[status]}"),
            )
            self._progress.start()
            self._task = self._progress.add_task("train", total=total_iters, completed=start_iter, status="")

    # ---------------------------------------------------------------- messages
    def info(self, msg: str) -> None:
        if not self.is_main:
            return
        line = f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {msg}"
        if self._progress is not None:
            self._progress.console.print(line, markup=False, highlight=False)
        else:
            print(line, flush=True)
        if self._log_file is not None:
            self._log_file.write(line + "\n")
            self._log_file.flush()

    def warn(self, msg: str) -> None:
        self.info(f"WARNING: {msg}")

    @contextlib.contextmanager
    def warnings_to_log(self) -> Iterator[None]:
        """Python warnings shown meanwhile (Python's filters first: each once per place by default) go to
        :meth:`warn` on rank 0, so ``output.log`` keeps them; other ranks show them as usual."""
        if not self.is_main:
            yield
            return
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None) -> None:  # noqa: ANN001
            self.warn(f"{message} ({category.__name__}, {Path(filename).name}:{lineno})")

        warnings.showwarning = show
        try:
            yield
        finally:
            warnings.showwarning = shown

    # ---------------------------------------------------------------- per step (no sync)
    def update(self, losses: dict[str, torch.Tensor], data_time: float, num_samples: int) -> None:
        for k, v in losses.items():
            v = v.detach().float()
            self._sums[k] = self._sums[k] + v if k in self._sums else v.clone()
        self._n += 1
        self._data_time += data_time
        self._samples += num_samples

    # ---------------------------------------------------------------- log step (one sync)
    def log(
        self, *, epoch: int, global_iter: int, lr: float, grad_norm: torch.Tensor | None, extra: dict
    ) -> dict[str, Any]:
        """Average the window, reduce over ranks, write the record; returns it (on every rank).
        ``epoch`` is the 0-based index of the running epoch; the record holds it 1-based."""
        n = max(self._n, 1)
        keys = sorted(self._sums)
        vals = [self._sums[k] / n for k in keys]
        if grad_norm is not None:
            vals.append(grad_norm.detach().float())
        host = torch.stack(vals).tolist() if vals else []
        now = time.perf_counter()
        elapsed = now - self._window_start
        epoch += 1  # 1-based like the console, epoch_N.pth and the periodic-eval records
        rec: dict[str, Any] = {"epoch": epoch, "iter": global_iter}
        rec.update({k: float(v) for k, v in zip(keys, host)})
        rec["lr"] = lr
        rec["grad_norm"] = float(host[-1]) if grad_norm is not None else None
        rec["data_time"] = self._data_time / n
        rec["step_time"] = elapsed / n
        local_sps = self._samples / elapsed if elapsed > 0 else 0.0
        rec.update(extra)
        rec.update(gpu_stats(self.device))
        rec = all_reduce_mean(rec | {"epoch": float(epoch), "iter": float(global_iter)}, self.device)
        rec["epoch"], rec["iter"] = epoch, global_iter
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        rec["samples_per_s"] = local_sps * world
        self._sums, self._n, self._data_time, self._samples = {}, 0, 0.0, 0
        self._window_start = now
        if self.is_main:
            self._write(rec)
        return rec

    def _write(self, rec: dict[str, Any]) -> None:
        assert self._metrics_file is not None
        self._metrics_file.write(json.dumps(rec) + "\n")
        self._metrics_file.flush()
        if self._tb is not None:
            for k, v in rec.items():
                if k not in ("epoch", "iter") and isinstance(v, int | float) and v is not None:
                    self._tb.add_scalar(f"train/{k}", v, rec["iter"])
        done = rec["iter"] - self._start_iter
        run_time = time.perf_counter() - self._run_start
        eta = run_time / max(done, 1) * max(self.total_iters - rec["iter"], 0)
        terms = " ".join(f"{k} {rec[k]:.4f}" for k in rec if k.startswith("loss") and rec[k] is not None)
        gn = f" grad_norm {rec['grad_norm']:.3f}" if rec.get("grad_norm") is not None else ""
        mem = f" mem {rec['mem_peak_mib']:.0f}MiB" if rec.get("mem_peak_mib") is not None else ""
        line = (
            f"epoch {rec['epoch']} iter {rec['iter']}/{self.total_iters} {terms} lr {rec['lr']:.3e}{gn} "
            f"data {rec['data_time']:.3f}s step {rec['step_time']:.3f}s "
            f"{rec['samples_per_s']:.2f} samples/s{mem} eta {_fmt_eta(eta)}"
        )
        if self._progress is not None:
            status = f"loss {rec.get('loss', float('nan')):.4f} lr {rec['lr']:.2e}"
            self._progress.update(self._task, completed=rec["iter"], status=status)
            if self._log_file is not None:
                self._log_file.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {line}\n")
                self._log_file.flush()
        else:
            self.info(line)
        for msg in self.advisor.check(rec):
            self.warn(msg)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        for f in (self._log_file, self._metrics_file):
            if f is not None:
                f.close()
        self._log_file = self._metrics_file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def truncate_metrics(path: Path, last_iter: int) -> None:
    """On resume, drop records logged after the checkpoint (they are logged again)."""
    if not path.exists():
        return
    from bevforge.io import atomic_write_text

    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line torn by a kill
        if int(rec.get("iter", 0)) <= last_iter:
            kept.append(line)
    atomic_write_text(path, "".join(k + "\n" for k in kept))
