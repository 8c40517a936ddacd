"""Where every benchmark writes: one markdown section per run with device, commit, command and versions."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

from bevforge.io import atomic_write_text


def git_commit() -> str:
    """Short commit of the working tree (``BEVFORGE_COMMIT`` wins: machines without git/.git)."""
    if os.environ.get("BEVFORGE_COMMIT"):
        return os.environ["BEVFORGE_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def command_line() -> str:
    argv = sys.argv[1:] if Path(sys.argv[0]).name in ("bevforge", "main.py", "__main__.py") else sys.argv
    return "bevforge " + " ".join(argv) if argv is not sys.argv else " ".join(argv)


def append_result(path: str | Path, title: str, device: str, body: str) -> Path:
    """Append one section (title, device, commit, command, versions, body) to a markdown results file."""
    path = Path(path)
    old = path.read_text() if path.exists() else f"# {path.stem} benchmarks\n"
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # not installed / broken: recorded as such
        triton_version = "none"
    section = (
        f"\n## {title} — {stamp}\n\n"
        f"- device: {device_name(device)}\n- commit: {git_commit()}\n- command: `{command_line()}`\n"
        f"- torch {torch.__version__}, triton {triton_version}, CUDA {torch.version.cuda}\n\n{body}\n"
    )
    return atomic_write_text(path, old.rstrip("\n") + "\n" + section)
