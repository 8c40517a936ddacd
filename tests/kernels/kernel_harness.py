"""What the kernel case files (``*_kernel_cases.py``) and their tests share: loading the cases, running
them one line each (``python tests/kernels/<op>_kernel_cases.py [--device cuda]``), and running them
under the Triton CPU interpreter in a fresh process (``TRITON_INTERPRET`` must be set before Triton loads).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def load_cases(stem: str) -> ModuleType:
    """``tests/kernels/<stem>.py`` loaded by path (works under any pytest import mode)."""
    spec = importlib.util.spec_from_file_location(stem, HERE / f"{stem}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_cases(cases: dict[str, Callable[[str], None]], argv: list[str]) -> int:
    """Run every case (``--device cuda``, or CPU under the Triton interpreter); one line per case."""
    device = "cuda" if "--device=cuda" in argv or argv[-2:] == ["--device", "cuda"] else "cpu"
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        print(
            "set TRITON_INTERPRET=1 before running this file on CPU (the Triton interpreter)", file=sys.stderr
        )
        return 2
    torch.manual_seed(0)
    failed = []
    for name, case in cases.items():
        t0 = time.perf_counter()
        try:
            case(device)
            print(f"ok   {name} ({time.perf_counter() - t0:.1f}s)")
        except Exception as e:  # report every case, then fail
            failed.append(name)
            print(f"FAIL {name}: {type(e).__name__}: {e}")
            traceback.print_exc()
    return 1 if failed else 0


def assert_cases_pass_under_interpreter(stem: str) -> None:
    """Every case of ``<stem>.py`` on CPU with TRITON_INTERPRET=1, in a fresh process."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO / "src"))
    env.pop("BEVFORGE_KERNELS", None)
    proc = subprocess.run(
        [sys.executable, str(HERE / f"{stem}.py")],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"interpreter cases failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    assert proc.stdout.count("ok   ") == len(load_cases(stem).CASES), proc.stdout


def case_file_tests(stem: str):
    """The two tests every ``<stem>.py`` case file gets, for a test module to bind at module level:
    all cases on CPU under the interpreter (one subprocess), and each case on CUDA (``gpu``, skipped
    without a device)::

        test_kernels_under_interpreter, test_kernels_cuda = case_file_tests("msda_kernel_cases")
    """
    import pytest

    def test_kernels_under_interpreter() -> None:
        """Every shared case on CPU with TRITON_INTERPRET=1, in a fresh process (set before Triton loads)."""
        pytest.importorskip("triton")
        assert_cases_pass_under_interpreter(stem)

    @pytest.mark.gpu
    @pytest.mark.parametrize("case", sorted(load_cases(stem).CASES))
    def test_kernels_cuda(case: str) -> None:
        if not torch.cuda.is_available():
            pytest.skip("needs CUDA")
        pytest.importorskip("triton")
        torch.manual_seed(0)
        load_cases(stem).CASES[case]("cuda")

    return test_kernels_under_interpreter, test_kernels_cuda


class Recorder:
    """Stands in for a ``@triton.jit`` kernel: ``kernel[grid](*args, **kwargs)`` records the call."""

    def __init__(self, fn) -> None:
        self.fn, self.launches = fn, []

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launches.append((args, kwargs))


@contextlib.contextmanager
def recorded(module, *names: str) -> Iterator[dict[str, Recorder]]:
    """``module.<name>`` kernels replaced by recorders for the block (the wrappers look them up at call)."""
    recorders = {name: Recorder(getattr(module, name)) for name in names}
    try:
        for name, rec in recorders.items():
            setattr(module, name, rec)
        yield recorders
    finally:
        for name, rec in recorders.items():
            setattr(module, name, rec.fn)


def bench_kernel_row_under_interpreter(tmp_path: Path, shape: str, contains: str = "") -> list[str]:
    """The cells of ``shape``'s (first) row holding ``contains`` of ``bevforge bench kernel --shape SHAPE``
    run on CPU with ``TRITON_INTERPRET=1`` in a fresh process (the Triton branch: timings meaningless,
    diffs real)."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO / "src"))
    env.pop("BEVFORGE_KERNELS", None)
    out = tmp_path / "kernel.md"
    cmd = [sys.executable, "-m", "bevforge.cli.main", "bench", "kernel", "--shape", shape]
    cmd += ["--iters", "1", "--warmup", "0", "--device", "cpu", "--out", str(out)]
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    lines = out.read_text().splitlines()
    row = next(line for line in lines if line.startswith(f"| {shape} |") and contains in line)
    return [c.strip() for c in row.strip("|").split("|")]
