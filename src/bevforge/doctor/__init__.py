"""`bevforge doctor`: is this machine (and optionally a recipe's data) ready to train and evaluate?

Every check returns a :class:`Check` with a status ``ok`` / ``warn`` / ``fail`` and, when it is not
``ok``, the fix in words. The machine is *usable* when no check fails; a CPU-only machine is usable
(warned, not failed) because every recipe runs on a CPU, only slowly.

Library only: :func:`run_checks` returns a :class:`DoctorReport`; ``cli/doctor.py`` prints it.

Layout: ``report`` (statuses, :class:`Check`, :class:`DoctorReport`), ``env`` (versions, CUDA, GPUs,
NVML), ``smoke`` (matmul and all-reduce smoke tests), ``kernels`` (every Triton kernel against its reference,
in a child process), ``data`` (recipe, data root, infos, checkpoints).
"""

from __future__ import annotations

from bevforge.doctor.data import _check_config
from bevforge.doctor.env import (
    CUDA_INSTALL_HINT,
    _check_cpu_threads,
    _check_cuda,
    _check_gpus,
    _check_nuscenes,
    _check_nvml,
    _check_python,
    _check_torch,
    _check_triton,
)
from bevforge.doctor.kernels import KERNELS_TIMEOUT_S, _check_kernels
from bevforge.doctor.report import FAIL, OK, WARN, Check, DoctorReport, GpuInfo
from bevforge.doctor.smoke import (
    MATMUL_SIZE,
    NCCL_TIMEOUT_S,
    _check_matmul,
    _check_nccl_allreduce,
    allreduce_smoke,
    matmul_smoke,
)

__all__ = [
    "CUDA_INSTALL_HINT",
    "FAIL",
    "MATMUL_SIZE",
    "NCCL_TIMEOUT_S",
    "OK",
    "WARN",
    "Check",
    "DoctorReport",
    "GpuInfo",
    "KERNELS_TIMEOUT_S",
    "allreduce_smoke",
    "matmul_smoke",
    "run_checks",
]


def run_checks(
    config: str | None = None,
    nccl: bool = True,
    overrides: list[str] | None = None,
    kernels: bool = True,
) -> DoctorReport:
    """Run every check; ``config`` (recipe name or path, with ``overrides``) adds the data checks;
    ``kernels``: the Triton kernels' smoke test against their references (a GPU, or TRITON_INTERPRET=1)."""
    report = DoctorReport()
    keys = ("os", "python", "torch", "torchvision", "cuda", "cudnn", "nccl", "triton", "nuscenes-devkit")
    report.versions = dict.fromkeys(keys)
    _check_python(report)
    _check_torch(report)
    _check_cpu_threads(report)
    _check_cuda(report)
    _check_gpus(report)
    _check_nvml(report)
    _check_triton(report)
    _check_matmul(report)
    if nccl:
        _check_nccl_allreduce(report)
    if kernels:
        _check_kernels(report)
    _check_nuscenes(report)
    if config:
        _check_config(report, config, overrides)
    return report
