"""DCNv2 columns kernel: dispatch rules on CPU, Triton parity (CPU interpreter; CUDA if present)."""

from __future__ import annotations

import pytest
import torch
from kernel_harness import case_file_tests, load_cases

from bevforge.ops.dcn import sampled as dcn


def _cases():
    return load_cases("dcn_kernel_cases")


def test_columns_auto_on_cpu_is_the_sampled_path(monkeypatch):
    monkeypatch.delenv("BEVFORGE_KERNELS", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x, offset, mask, geo = _cases().make_inputs("cpu")
    assert "needs CUDA" in dcn.columns_ineligible_reason(x, offset, mask, torch.float32, 9)
    got = dcn._forward_columns(x, offset, mask, geo, 1, torch.float32)
    torch.testing.assert_close(got, _cases().oracle_columns(x, offset, mask, geo), atol=0, rtol=0)


def test_columns_forced_triton_on_cpu_says_why(monkeypatch):
    monkeypatch.setenv("BEVFORGE_KERNELS", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x, offset, mask, _ = _cases().make_inputs("cpu")
    weight = torch.randn(4, x.shape[1], 3, 3)
    with pytest.raises(RuntimeError, match="BEVFORGE_KERNELS=triton.*DCN columns.*cpu"):
        dcn.deform_conv2d_sampled(x, offset, weight, padding=1, mask=mask)


def test_columns_not_used_for_unsupported_dtypes(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x, offset, mask, _ = _cases().make_inputs("cpu", dtype=torch.float64)
    assert "dtypes" in dcn.columns_ineligible_reason(x, offset, mask, torch.float64, 9)


test_triton_columns_under_interpreter, test_triton_columns_cuda = case_file_tests("dcn_kernel_cases")


@pytest.mark.parametrize("channels_last", [False, True])
def test_dcn_bench_runs_every_variant_under_interpreter(channels_last, tmp_path):
    """``python -m bevforge.ops.dcn.bench`` (the GPU check's DCN step) on a tiny layer under the Triton
    interpreter: all four variants run, forward + backward and forward alone, and agree with torchvision;
    ``--channels-last`` (the pixel-major columns) with its own sweep."""
    import os
    import subprocess
    import sys

    from kernel_harness import REPO

    from bevforge.ops.dcn.bench import SWEEP

    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1")
    env.pop("BEVFORGE_KERNELS", None)
    args = ["--batch", "1", "--channels", "4", "--hw", "5", "6", "--iters", "1", "--warmup", "0", "--sweep"]
    args += (["--channels-last"] if channels_last else []) + ["--out", str(tmp_path / "kernel.md")]
    proc = subprocess.run([sys.executable, "-m", "bevforge.ops.dcn.bench", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split() for line in proc.stdout.splitlines() if "max |out - torchvision|" in line]
    variants = ["torchvision", "sampled-grid", "triton-fwd", "triton-fwd+bwd"] + (
        [] if channels_last else ["triton-pm"]
    )
    assert [r[0] for r in rows] == variants * 2, rows
    assert all(float(r[-1]) < 1e-4 for r in rows), proc.stdout
    # --sweep: every launch configuration of both kernels, each agreeing with the default's results
    swept = [line.split() for line in proc.stdout.splitlines() if "max |diff|" in line]
    assert len(swept) == 2 * len(SWEEP[channels_last]), proc.stdout
    assert ("channels-last" in proc.stdout) == channels_last, proc.stdout
    assert "offset conv 3x3 4 -> 27 channels" in proc.stdout, proc.stdout
    # --out: the printed table (sweep included) appended as a results section with device and commit
    section = (tmp_path / "kernel.md").read_text()
    assert "## DCNv2 op, " in section and "- commit: " in section and "triton-fwd+bwd" in section, section
    assert section.count("max |diff|") == 2 * len(SWEEP[channels_last]), section
    assert all(float(r[-1]) < 1e-5 for r in swept), proc.stdout


def test_bench_kernel_cli_runs_the_dcn_shapes(tmp_path):
    """``bevforge bench kernel --shape dcn-tiny`` runs the DCNv2 op bench (CPU: torchvision and the sampled
    path) and appends its section to the results file."""
    from bevforge.cli.main import main

    out = tmp_path / "kernel.md"
    argv = ["bench", "kernel", "--shape", "dcn-tiny", "--device", "cpu", "--iters", "1", "--warmup", "0"]
    assert main([*argv, "--out", str(out)]) == 0
    text = out.read_text()
    assert "## DCNv2 op, NCHW" in text and "sampled-grid" in text and "offset conv" in text, text
