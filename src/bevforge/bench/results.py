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

_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # .../src/bevforge


def _git(repo_dir: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(repo_dir), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit(package_dir: Path = _PACKAGE_DIR) -> str:
    """The commit of the bevforge source that ran: ``BEVFORGE_COMMIT`` wins (a snapshot without .git);
    else git's short HEAD of the checkout holding ``src/bevforge``, ``-dirty`` when tracked files under
    ``src/`` or ``configs/`` differ from it (the results files that benchmarks append to do not count);
    else (an installed package, not a checkout) ``bevforge <version>``. Never the commit of whatever
    repository the command was started in."""
    if os.environ.get("BEVFORGE_COMMIT"):
        return os.environ["BEVFORGE_COMMIT"]
    top = _git(package_dir, "rev-parse", "--show-toplevel")
    if top and (Path(top) / "src" / "bevforge").resolve() == package_dir.resolve():
        sha = _git(package_dir, "rev-parse", "--short", "HEAD")
        if sha:
            changed = _git(Path(top), "status", "--porcelain", "--untracked-files=no", "--", "src", "configs")
            return sha + ("-dirty" if changed else "")
    from bevforge import __version__

    return f"bevforge {__version__}"


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
