"""Image finishing kernel: dispatch rules on CPU, Triton parity (CPU interpreter; CUDA if present)."""

from __future__ import annotations

import pytest
import torch
from kernel_harness import case_file_tests, load_cases

from bevforge.config import DataConfig
from bevforge.data.device_images import finish_images


def test_auto_on_cpu_takes_the_torch_path(monkeypatch):
    monkeypatch.delenv("BEVFORGE_KERNELS", raising=False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    batch = load_cases("finish_images_kernel_cases").make_batch("cpu")
    out = finish_images(batch, DataConfig())
    assert out.images.dtype == torch.float32 and out.photometric is None


def test_forced_triton_on_cpu_says_why(monkeypatch):
    monkeypatch.setenv("BEVFORGE_KERNELS", "triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    batch = load_cases("finish_images_kernel_cases").make_batch("cpu")
    with pytest.raises(RuntimeError, match="BEVFORGE_KERNELS=triton.*image finishing.*cpu"):
        finish_images(batch, DataConfig())


test_finish_images_under_interpreter, test_finish_images_cuda = case_file_tests("finish_images_kernel_cases")
