"""ops/dispatch.py: a kernel that cannot compile or launch here says which one and how to run without it."""

import re
from pathlib import Path

import pytest

from bevforge.ops.dispatch import KernelLaunchError, launch


class _FakeKernel:
    """``kernel[grid](*args, **kwargs)`` as a Triton JIT function is called, recording or failing."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error, self.calls = error, []

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            if self.error is not None:
                raise self.error
            self.calls.append((grid, args, kwargs))

        return run


def test_launch_runs_the_kernel_on_its_grid():
    kernel = _FakeKernel()
    launch("Triton test kernel", kernel, (3, 2), "a", 1, num_warps=4)
    assert kernel.calls == [((3, 2), ("a", 1), {"num_warps": 4})]


def test_a_failed_compile_names_the_kernel_and_the_way_around_it():
    cause = RuntimeError("out of resource: shared memory, Required: 232448, Hardware limit: 101376\nmore")
    with pytest.raises(KernelLaunchError) as info:
        launch("Triton MSDA backward kernel", _FakeKernel(cause), (1,))
    message = str(info.value)
    assert message.startswith(
        "the Triton MSDA backward kernel failed to compile or launch here (RuntimeError: "
    )
    assert "Hardware limit: 101376)" in message and "more" not in message  # the first line of the cause
    assert "BEVFORGE_KERNELS=reference" in message and "bevforge doctor" in message
    assert info.value.__cause__ is cause and isinstance(info.value, RuntimeError)


def test_every_triton_kernel_is_launched_through_it():
    """No ``_name_kernel[grid](`` launch left in the package (each goes through ``launch``)."""
    src = Path(__file__).resolve().parents[3] / "src" / "bevforge"
    direct = [
        f"{path.relative_to(src)}:{n}"
        for path in src.rglob("*.py")
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if re.match(r"\s+_\w+_kernel\[.+\]\(", line)
    ]
    assert not direct, direct
    launches = sum(
        path.read_text().count("launch(\n") + path.read_text().count('launch("')
        for path in src.rglob("triton_*.py")
    )
    assert launches >= 10, launches
