"""The doctor's kernel check: each kernel against its reference (fake kernels here; the real ones in a
child process under the Triton interpreter), and a child that crashes or hangs reported, not raised."""

import subprocess

import pytest
import torch

from bevforge.doctor import kernels as doctor_kernels
from bevforge.doctor.kernel_smoke import SMOKES, Smoke, main, relative_error, run_smoke
from bevforge.doctor.report import FAIL, OK, WARN, DoctorReport, GpuInfo
from bevforge.ops.dispatch import kernel_choice


def _smoke(kernel, dtypes=(torch.float32, torch.bfloat16)) -> Smoke:
    """A fake kernel: ``kernel(x)`` under BEVFORGE_KERNELS=triton, ``2 x`` under reference."""

    def make(device, dtype):
        x = torch.linspace(-1, 1, 12).view(3, 4).to(device, dtype)

        def fn(x):
            return kernel(x) if kernel_choice() == "triton" else 2 * x

        return fn, [x], [True]

    return Smoke("fake", make, dtypes)


def test_a_kernel_that_matches_passes_in_every_dtype():
    r = run_smoke(_smoke(lambda x: 2 * x), torch.device("cpu"))
    assert r["status"] == "ok" and "fp32" in r["detail"] and "bf16" in r["detail"], r


@pytest.mark.parametrize(
    ("kernel", "expect"),
    [
        (lambda x: 2.1 * x, "fp32: wrong numbers: output error 5.0e-02"),
        (lambda x: 2 * x + 0.5 * (x - x.detach()), "gradient error 2.5e-01"),  # forward right, backward not
        (lambda x: 2 * x / (x - x), "output error inf"),  # NaNs
        (lambda x: x[:2] * 2, "output error inf"),  # the wrong shape
    ],
)
def test_wrong_numbers_fail_and_say_which(kernel, expect):
    r = run_smoke(_smoke(kernel), torch.device("cpu"))
    assert r["status"] == "fail" and expect in r["detail"], r


def test_bf16_tolerance_is_bf16s_own():
    # bf16 rounding of the inputs (~4e-3) passes in bf16; the same error in fp32 fails
    def rounded(x):
        return 2 * x.to(torch.bfloat16).to(x.dtype) * (1 + 4e-3)

    assert run_smoke(_smoke(rounded, (torch.bfloat16,)), torch.device("cpu"))["status"] == "ok"
    assert run_smoke(_smoke(rounded, (torch.float32,)), torch.device("cpu"))["status"] == "fail"


def test_a_kernel_that_raises_fails_and_one_that_cannot_run_here_is_skipped():
    def broken(x):
        raise ValueError("PTX assembly aborted")

    def ineligible(x):
        raise RuntimeError(
            "BEVFORGE_KERNELS=triton but the Triton MSDA kernel cannot run: triton could not be imported "
            "(x). Unset BEVFORGE_KERNELS"
        )

    r = run_smoke(_smoke(broken), torch.device("cpu"))
    assert r["status"] == "fail" and r["detail"] == "fp32: ValueError: PTX assembly aborted", r
    r = run_smoke(_smoke(ineligible), torch.device("cpu"))
    assert r["status"] == "skip" and r["detail"].startswith("triton could not be imported"), r


def test_relative_error():
    want = torch.tensor([1.0, -4.0])
    assert relative_error(want + torch.tensor([0.0, 0.4]), want) == pytest.approx(0.1)
    assert relative_error(torch.tensor([1.0, float("nan")]), want) == float("inf")
    assert relative_error(torch.zeros(0), torch.zeros(0)) == 0.0


def test_no_gpu_and_no_interpreter_is_one_ok_line(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    report = DoctorReport()
    doctor_kernels._check_kernels(report)
    assert [(c.name, c.status) for c in report.checks] == [("kernels", OK)]


def _gpu_report() -> DoctorReport:
    return DoctorReport(gpus=[GpuInfo(0, "fake GPU", "9.0", 80.0, 79.0, True)])


def _fake_child(monkeypatch, stdout, returncode=0, stderr="", timeout=False):
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        if timeout:
            raise subprocess.TimeoutExpired(cmd, kwargs["timeout"], output=stdout.encode())
        return subprocess.CompletedProcess(cmd, returncode, stdout, stderr)

    monkeypatch.setattr(doctor_kernels.subprocess, "run", fake_run)
    return calls


def test_a_child_that_crashes_midway_keeps_the_results_so_far(monkeypatch):
    lines = '{"name": "msda", "status": "ok", "detail": "fine"}\nsome library print\n1\n[2]\n'
    calls = _fake_child(monkeypatch, lines, returncode=-11, stderr="Segmentation fault\n")
    report = _gpu_report()
    doctor_kernels._check_kernels(report)
    assert calls[0][-2:] == ["--device", "cuda:0"]
    (ok, crash) = report.checks
    assert (ok.name, ok.status) == ("kernel msda", OK)
    assert (
        crash.status == FAIL
        and "stopped in kernel msda-offsets (exit -11): Segmentation fault" in crash.detail
    )
    assert crash.fix.startswith("BEVFORGE_KERNELS_OFF=msda-offsets runs this kernel's pure-PyTorch reference")


def test_a_hanging_child_is_reported_and_a_skip_is_a_warning(monkeypatch):
    lines = '{"name": "dcn", "status": "skip", "detail": "triton could not be imported"}\n'
    _fake_child(monkeypatch, lines, timeout=True)
    report = _gpu_report()
    doctor_kernels._check_kernels(report, timeout_s=5)
    (skip, hang) = report.checks
    assert skip.status == WARN and "pip install triton" in skip.fix
    assert (
        hang.status == FAIL
        and "stopped in kernel bev-pool (timed out): did not finish within 5 s" in hang.detail
    )


def test_a_failing_kernel_fails_the_doctor(monkeypatch):
    lines = '{"name": "msda-cameras", "status": "fail", "detail": "bf16: wrong numbers"}\n'
    _fake_child(monkeypatch, lines)
    report = _gpu_report()
    doctor_kernels._check_kernels(report)
    assert [(c.name, c.status) for c in report.checks] == [("kernel msda-cameras", FAIL)]
    assert "BEVFORGE_KERNELS_OFF=msda-cameras" in report.checks[0].fix and report.exit_code() != 0


def test_the_real_kernels_under_the_interpreter_in_a_child(monkeypatch):
    # the two quick ones (every kernel: `python -m bevforge.doctor.kernel_smoke` with TRITON_INTERPRET=1)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("BEVFORGE_KERNELS", raising=False)
    report = DoctorReport()
    doctor_kernels._check_kernels(report, only="bev-pool,finish-images")
    assert [(c.name, c.status) for c in report.checks] == [
        ("kernel bev-pool", OK),
        ("kernel finish-images", OK),
    ], report.checks
    # a kernel the user switched off is not checked, and not a warning: its reference runs
    monkeypatch.setenv("BEVFORGE_KERNELS_OFF", "bev-pool")
    report = DoctorReport()
    doctor_kernels._check_kernels(report, only="bev-pool")
    (check,) = report.checks
    assert check.status == OK and "switched off by BEVFORGE_KERNELS_OFF=bev-pool" in check.detail, check


def test_the_child_refuses_unknown_kernel_names(capsys):
    assert main(["--device", "cpu", "--only", "msda,nope"]) == 2
    assert "nope" in capsys.readouterr().err
    assert len({s.name for s in SMOKES}) == len(SMOKES) == 6


def test_a_kernel_switched_off_is_not_run(monkeypatch):
    # its dispatch may take another kernel (msda-offsets off: the locations path's msda kernel), so the
    # check would pass without testing it
    def make(device, dtype):
        raise AssertionError("a switched-off kernel's case is not built")

    monkeypatch.setenv("BEVFORGE_KERNELS_OFF", "msda-offsets")
    r = run_smoke(Smoke("msda-offsets", make), torch.device("cpu"))
    assert r == {
        "name": "msda-offsets",
        "status": "skip",
        "detail": "switched off by BEVFORGE_KERNELS_OFF=msda-offsets",
    }
