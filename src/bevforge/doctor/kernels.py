"""The doctor's kernel check: the smoke test of ``doctor/kernel_smoke.py`` in a child process, one check per
kernel (a kernel that faults, hangs or computes wrong numbers fails its check; the doctor goes on)."""

from __future__ import annotations

import json
import subprocess
import sys

from bevforge.doctor.report import FAIL, OK, WARN, Check, DoctorReport
from bevforge.ops.dispatch import KERNEL_NAMES, interpreting

KERNELS_TIMEOUT_S = 300.0


def _fix(name: str) -> str:
    return (
        f"BEVFORGE_KERNELS_OFF={name} runs this kernel's pure-PyTorch reference instead (correct, slower; "
        "BEVFORGE_KERNELS=reference: every kernel's); report the detail with `bevforge doctor --json`"
    )


def _check_kernels(report: DoctorReport, only: str = "", timeout_s: float = KERNELS_TIMEOUT_S) -> None:
    """The smoke test of every kernel in a child process, one check each (``kernel <name>``): on the first
    GPU; on the CPU only under ``TRITON_INTERPRET=1`` (elsewhere the kernels are not used)."""
    if report.gpus:
        device = f"cuda:{report.gpus[0].index}"
    elif interpreting():
        device = "cpu"
    else:
        report.checks.append(
            Check("kernels", OK, "no GPU: the pure-PyTorch references run, nothing to check")
        )
        return
    cmd = [sys.executable, "-m", "bevforge.doctor.kernel_smoke", "--device", device]
    if only:
        cmd += ["--only", only]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        stdout, stderr, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        stdout, stderr, rc = out, f"did not finish within {timeout_s:.0f} s (a kernel hangs?)", None
    results = []
    for line in stdout.splitlines():
        try:
            result = json.loads(line)
        except json.JSONDecodeError:
            continue  # a library's own print
        if isinstance(result, dict) and "name" in result:
            results.append(result)
    for r in results:
        name, detail = str(r.get("name")), str(r.get("detail", ""))
        if r.get("status") == "ok":
            status, fix = OK, ""
        elif r.get("status") == "skip" and "BEVFORGE_KERNELS_OFF" in detail:
            status, fix = OK, ""  # the user's own choice: its reference runs
        elif r.get("status") == "skip":
            status, fix = WARN, "pip install triton (the version matching torch) for the fast kernels"
        else:
            status, fix = FAIL, _fix(name)
        report.checks.append(Check(f"kernel {name}", status, detail, fix))
    if rc != 0:  # crashed (a fault takes the process), timed out, or refused its arguments
        asked = [n for n in KERNEL_NAMES if not only or n in only.split(",")]  # the child's order
        last = str(results[-1].get("name")) if results else None
        after = asked.index(last) + 1 if last in asked else 0
        running = asked[after] if after < len(asked) else None
        tail = (stderr or "").strip().splitlines()[-3:]
        where = f"in kernel {running}" if running else "after the last kernel"
        report.checks.append(
            Check(
                "kernels",
                FAIL,
                f"the kernel smoke test stopped {where} ({'timed out' if rc is None else f'exit {rc}'}): "
                + " | ".join(tail),
                _fix(running) if running else _fix("<name>"),
            )
        )
