"""Checkpoints: atomic writes, auto-resume, retention and RNG state as tensors.

A checkpoint is a dict loadable with ``torch.load(path, weights_only=True)``: tensors, numbers,
strings, lists and dicts only (the config is a JSON string, RNG states are tensors). It is written
with :func:`bevforge.io.atomic_write`, so a kill during a save leaves the previous file intact; a torn
temp file (``.latest.pth.*.tmp``) is never picked by :func:`find_resume_checkpoint`.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bevforge.errors import CheckpointError
from bevforge.io import atomic_write

FORMAT = "bevforge-checkpoint"
FORMAT_VERSION = 1
_EPOCH_RE = re.compile(r"^epoch_(\d+)\.pth$")
RESUME_KEYS = ("model", "optimizer", "scheduler", "epoch", "iter_in_epoch", "global_iter")


# --------------------------------------------------------------------------------------------------
# RNG state <-> tensors


def get_rng_state(device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """python, numpy, torch (and the current CUDA device's) generator states as tensors."""
    version, mt, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    assert np_name == "MT19937"
    state = {
        "py_mt": torch.tensor(mt, dtype=torch.int64),  # [625]
        "py_meta": torch.tensor([version, 0 if gauss is None else 1], dtype=torch.int64),
        "py_gauss": torch.tensor([0.0 if gauss is None else gauss], dtype=torch.float64),
        "np_keys": torch.from_numpy(np_keys.astype(np.int64)),  # [624]
        "np_meta": torch.tensor([np_pos, np_has_gauss], dtype=torch.int64),
        "np_gauss": torch.tensor([np_gauss], dtype=torch.float64),
        "torch": torch.get_rng_state(),
    }
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, torch.Tensor], device: torch.device | None = None) -> None:
    version, has_gauss = (int(v) for v in state["py_meta"].tolist())
    gauss = float(state["py_gauss"][0]) if has_gauss else None
    random.setstate((version, tuple(int(v) for v in state["py_mt"].tolist()), gauss))
    pos, np_has_gauss = (int(v) for v in state["np_meta"].tolist())
    keys = state["np_keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, pos, np_has_gauss, float(state["np_gauss"][0])))
    torch.set_rng_state(state["torch"])
    if device is not None and device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


# --------------------------------------------------------------------------------------------------
# save / load


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` (plus the format header) atomically with ``torch.save``."""
    body = {"format": FORMAT, "format_version": FORMAT_VERSION, **payload}
    return atomic_write(path, lambda f: torch.save(body, f))


def copy_checkpoint(src: str | Path, dst: str | Path) -> Path:
    """Copy a written checkpoint to another name, atomically."""
    with open(src, "rb") as f_in:
        return atomic_write(dst, lambda f_out: shutil.copyfileobj(f_in, f_out, 16 * 1024 * 1024))


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a bevforge checkpoint with ``weights_only=True``; a clear error names the file and the fix."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass an existing .pth (or --resume auto)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torn file, pickle with custom classes, not a torch file ...
        raise CheckpointError(
            f"checkpoint {path} cannot be loaded with torch.load(weights_only=True) ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); it is damaged or not a bevforge checkpoint — "
            "use another one (e.g. an epoch_N.pth) or --resume auto, which skips broken files"
        ) from e
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(ckpt).__name__}, expected a dict")
    return ckpt


def check_resumable(ckpt: dict[str, Any], path: str | Path) -> dict[str, Any]:
    """A checkpoint written by the trainer (not just weights); else a clear error with the fix."""
    missing = [k for k in RESUME_KEYS if k not in ckpt]
    if ckpt.get("format") != FORMAT or missing:
        raise CheckpointError(
            f"{path} is not a resumable bevforge training checkpoint (missing "
            f"{', '.join(missing) or 'format'}); to start from its weights use --load-from, not --resume"
        )
    return ckpt


def _candidates(work_dir: Path) -> list[Path]:
    files = [p for p in work_dir.glob("*.pth") if p.name == "latest.pth" or _EPOCH_RE.match(p.name)]
    return sorted(files, key=lambda p: p.stat().st_mtime, reverse=True)


def find_resume_checkpoint(work_dir: str | Path) -> Path | None:
    """The newest loadable resumable checkpoint in ``work_dir`` (by training progress), or None."""
    best: tuple[int, float, Path] | None = None
    for path in _candidates(Path(work_dir)):
        try:
            ckpt = load_checkpoint(path)
        except (CheckpointError, OSError):
            continue
        if ckpt.get("format") != FORMAT or any(k not in ckpt for k in RESUME_KEYS):
            continue
        key = (int(ckpt["global_iter"]), path.stat().st_mtime, path)
        if best is None or key[:2] > best[:2]:
            best = key
    return None if best is None else best[2]


def remove_stale_temp_files(work_dir: str | Path) -> list[Path]:
    """Delete temp files left by a save that was killed (``.<name>.pth.<random>.tmp``)."""
    removed = []
    for p in Path(work_dir).glob(".*.pth.*.tmp"):
        p.unlink(missing_ok=True)
        removed.append(p)
    return removed


def apply_retention(work_dir: str | Path, keep_last: int) -> list[Path]:
    """Keep the ``keep_last`` newest ``epoch_N.pth`` (by N); ``keep_last <= 0`` keeps all."""
    if keep_last <= 0:
        return []
    epochs = []
    for p in Path(work_dir).glob("epoch_*.pth"):
        m = _EPOCH_RE.match(p.name)
        if m:
            epochs.append((int(m.group(1)), p))
    epochs.sort()
    removed = [p for _, p in epochs[:-keep_last]]
    for p in removed:
        p.unlink(missing_ok=True)
    return removed


def model_state_from(ckpt: dict[str, Any], path: str | Path) -> dict[str, torch.Tensor]:
    """The model weights of a bevforge checkpoint, or of a plain / mmcv-style state dict."""
    for key in ("model", "state_dict"):
        if key in ckpt and isinstance(ckpt[key], dict):
            state = ckpt[key]
            break
    else:
        if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            state = ckpt
        else:
            raise CheckpointError(
                f"{path}: no model weights found (expected a 'model' or 'state_dict' entry)"
            )
    return {k.removeprefix("module."): v for k, v in state.items()}
