"""ops/dispatch.py: a kernel that cannot compile or launch here says which one and how to run without it."""

import re
from pathlib import Path

import pytest
import torch

from bevforge.ops import dispatch
from bevforge.ops.dispatch import KERNEL_NAMES, KernelLaunchError, kernels_off, launch, select_kernel


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
    launch("msda forward", kernel, (3, 2), "a", 1, num_warps=4)
    assert kernel.calls == [((3, 2), ("a", 1), {"num_warps": 4})]


def test_a_failed_compile_names_the_kernel_and_the_way_around_it():
    cause = RuntimeError("out of resource: shared memory, Required: 232448, Hardware limit: 101376\nmore")
    with pytest.raises(KernelLaunchError) as info:
        launch("msda-cameras backward", _FakeKernel(cause), (1,))
    message = str(info.value)
    assert message.startswith("the Triton msda-cameras backward kernel failed to compile or launch here (")
    assert "Hardware limit: 101376)" in message and "more" not in message  # the first line of the cause
    assert "BEVFORGE_KERNELS_OFF=msda-cameras runs its pure-PyTorch reference" in message
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
        len(re.findall(r"^\s+launch\(", path.read_text(), re.M)) for path in src.rglob("triton_*.py")
    )
    assert launches >= 10, launches


def test_kernels_off_names_kernels_and_refuses_unknown_ones(monkeypatch):
    monkeypatch.delenv("BEVFORGE_KERNELS_OFF", raising=False)
    assert kernels_off() == ()
    monkeypatch.setenv("BEVFORGE_KERNELS_OFF", " msda-cameras, DCN ,")
    assert kernels_off() == ("msda-cameras", "dcn")
    monkeypatch.setenv("BEVFORGE_KERNELS_OFF", "msda,cameras")
    with pytest.raises(
        ValueError, match=r"unknown kernel\(s\) \['cameras'\]; use msda, msda-offsets, msda-cameras"
    ):
        kernels_off()
    with pytest.raises(ValueError, match="is not one of"):
        dispatch.LazyOp("bevforge.ops.msda.op", "msda_op", "cameras")


def test_a_kernel_switched_off_is_unavailable_and_forcing_it_says_why(monkeypatch):
    from bevforge.ops.msda import cameras

    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the kernels' device check passes for CPU tensors
    monkeypatch.delenv("BEVFORGE_KERNELS", raising=False)
    monkeypatch.delenv("BEVFORGE_KERNELS_OFF", raising=False)
    op = cameras._CAMERAS_OP
    if op.get() is None:
        pytest.skip(f"triton cannot be imported here: {op.error}")
    assert cameras.cameras_kernel_runs(torch.zeros(1))  # the SCA's fuse_cameras="auto" takes it
    monkeypatch.setenv("BEVFORGE_KERNELS_OFF", "msda-cameras")
    assert op.get() is None and not cameras.cameras_kernel_runs(torch.zeros(1))
    assert select_kernel("auto", op, None, "Triton MSDA camera kernel") is None  # the reference runs
    with pytest.raises(RuntimeError, match="cannot run: switched off by BEVFORGE_KERNELS_OFF=msda-cameras"):
        select_kernel("triton", op, None, "Triton MSDA camera kernel")
    monkeypatch.setenv("BEVFORGE_KERNELS_OFF", "dcn")
    assert op.get() is not None  # only the named kernel


def test_every_kernel_op_has_a_name_the_doctor_knows():
    dispatch.prime_kernel_ops()
    assert {op.name for op in dispatch.LazyOp.instances} == set(KERNEL_NAMES)
