"""Environment checks: Python, torch/torchvision, CUDA/cuDNN/NCCL versions, Triton, the devkit, GPUs, NVML."""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import os
import platform
import sys

import torch

from bevforge.doctor.report import FAIL, OK, WARN, Check, DoctorReport, GpuInfo

CUDA_INSTALL_HINT = (
    "install a CUDA build of torch matching your driver, e.g. "
    "pip install torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cu128 "
    "(see https://pytorch.org/get-started/locally/)"
)


def cpu_thread_advice(
    load: float | None = None, threads: int | None = None, cores: int | None = None
) -> str | None:
    """Advice when this process's OpenMP threads plus the machine's load oversubscribe its cores.

    OpenMP threads spin while they wait: on a 2-core machine with other jobs running, a debug training
    step took 12.8 s with 2 threads and 2.2 s with ``OMP_NUM_THREADS=1`` (docs/LEARNING.md). ``None``
    when there is nothing to say (``OMP_NUM_THREADS`` set, one thread, or an idle enough machine).
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return None
    threads = torch.get_num_threads() if threads is None else threads
    if cores is None:
        from bevforge.data.nuscenes.decode_pool import usable_cores

        cores = usable_cores()
    if load is None:
        try:
            load = os.getloadavg()[0]
        except OSError:  # not available on this platform
            return None
    if threads <= 1 or load + threads <= 1.5 * cores:
        return None
    return (
        f"CPU load {load:.1f} on {cores} core(s) plus {threads} torch threads per process oversubscribes "
        f"the CPU; OpenMP threads spin while they wait (a CPU training step was 6x slower): "
        f"export OMP_NUM_THREADS=1 (or fewer threads than idle cores)"
    )


def _check_cpu_threads(report: DoctorReport) -> None:
    advice = cpu_thread_advice()
    threads = torch.get_num_threads()
    if advice is None:
        report.checks.append(Check("cpu threads", OK, f"{threads} torch thread(s)"))
    else:
        detail, fix = advice.rsplit(": ", 1)
        report.checks.append(Check("cpu threads", WARN, detail, fix))


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _check_python(report: DoctorReport) -> None:
    v = sys.version_info
    report.versions["python"] = platform.python_version()
    report.versions["os"] = platform.platform()
    report.checks.append(Check("os", OK, f"{platform.platform()} ({platform.machine()})"))
    if v < (3, 10):
        report.checks.append(
            Check(
                "python", FAIL, platform.python_version(), "bevforge needs Python >= 3.10; use a newer venv"
            )
        )
    else:
        report.checks.append(Check("python", OK, f"{platform.python_version()} ({sys.executable})"))


def _check_torch(report: DoctorReport) -> None:
    report.versions["torch"] = torch.__version__
    report.checks.append(Check("torch", OK, torch.__version__))
    try:
        import torchvision

        report.versions["torchvision"] = torchvision.__version__
        report.checks.append(Check("torchvision", OK, torchvision.__version__))
    except Exception as e:  # a torch/torchvision mismatch fails at import (e.g. missing C ops)
        report.versions["torchvision"] = None
        report.checks.append(
            Check(
                "torchvision",
                FAIL,
                f"import failed: {e}",
                "install the torchvision matching torch: "
                "pip install torchvision==0.29.1 (same index as torch)",
            )
        )


def _check_cuda(report: DoctorReport) -> None:
    cuda_build = torch.version.cuda
    report.versions["cuda"] = cuda_build
    if cuda_build is None:
        report.checks.append(
            Check(
                "cuda", WARN, "CPU only: torch is a CPU build (no CUDA)", f"to use GPUs, {CUDA_INSTALL_HINT}"
            )
        )
        return
    if not torch.cuda.is_available():
        report.checks.append(
            Check(
                "cuda",
                WARN,
                f"CPU only: torch is built with CUDA {cuda_build} but no GPU is visible",
                "check `nvidia-smi`, the NVIDIA driver, and CUDA_VISIBLE_DEVICES",
            )
        )
        return
    report.checks.append(Check("cuda", OK, f"CUDA {cuda_build}, {torch.cuda.device_count()} GPU(s) visible"))
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    report.versions["cudnn"] = str(cudnn) if cudnn is not None else None
    if cudnn is None:
        report.checks.append(
            Check("cudnn", WARN, "cuDNN not available", f"convolutions will be slow; {CUDA_INSTALL_HINT}")
        )
    else:
        report.checks.append(Check("cudnn", OK, str(cudnn)))
    try:
        nccl = importlib.import_module("torch.cuda.nccl").version()
        nccl_s = ".".join(str(x) for x in nccl) if isinstance(nccl, tuple) else str(nccl)
        report.versions["nccl"] = nccl_s
        report.checks.append(Check("nccl", OK, nccl_s))
    except Exception as e:
        report.versions["nccl"] = None
        report.checks.append(
            Check(
                "nccl", WARN, f"NCCL not available: {e}", "multi-GPU training needs a torch build with NCCL"
            )
        )


def _check_triton(report: DoctorReport) -> None:
    try:
        triton = importlib.import_module("triton")
        report.versions["triton"] = getattr(triton, "__version__", "unknown")
        report.checks.append(Check("triton", OK, report.versions["triton"] or "unknown"))
    except Exception as e:
        report.versions["triton"] = None
        status = OK if report.cpu_only else WARN
        report.checks.append(
            Check(
                "triton",
                status,
                f"not importable ({type(e).__name__}); kernels use the pure-PyTorch reference",
                ""
                if status == OK
                else "pip install triton (the version matching torch) for the fast kernels",
            )
        )


def _check_nuscenes(report: DoctorReport) -> None:
    try:
        importlib.import_module("nuscenes")
        version = _dist_version("nuscenes-devkit")
        report.versions["nuscenes-devkit"] = version
        report.checks.append(Check("nuscenes-devkit", OK, version or "importable"))
    except Exception as e:
        report.versions["nuscenes-devkit"] = None
        report.checks.append(
            Check(
                "nuscenes-devkit",
                FAIL,
                f"import failed: {type(e).__name__}: {e}",
                "pip install nuscenes-devkit==1.2.0 (needed by prepare and evaluation)",
            )
        )


def _check_gpus(report: DoctorReport) -> None:
    if not torch.cuda.is_available():
        return
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        try:
            free_b, _ = torch.cuda.mem_get_info(i)
            free_gib: float | None = round(free_b / 2**30, 2)
        except Exception:
            free_gib = None
        with torch.cuda.device(i):
            bf16 = bool(torch.cuda.is_bf16_supported())
        gpu = GpuInfo(
            index=i,
            name=props.name,
            compute_capability=f"{props.major}.{props.minor}",
            total_memory_gib=round(props.total_memory / 2**30, 2),
            free_memory_gib=free_gib,
            bf16=bf16,
        )
        report.gpus.append(gpu)
        detail = (
            f"{gpu.name}, sm {gpu.compute_capability}, {gpu.total_memory_gib} GiB total, "
            f"{gpu.free_memory_gib} GiB free, bf16 {'yes' if bf16 else 'no'}"
        )
        fix = "" if bf16 else "bf16 unsupported: train with --set train.amp=fp16 (or off)"
        report.checks.append(Check(f"gpu{i}", OK if bf16 else WARN, detail, fix))


def _check_nvml(report: DoctorReport) -> None:
    try:
        import pynvml
    except Exception:
        if report.cpu_only:
            report.checks.append(Check("nvml", OK, "not installed (no GPU, not needed)"))
        else:
            report.checks.append(
                Check(
                    "nvml",
                    WARN,
                    "pynvml not importable: no driver/utilisation info",
                    "pip install nvidia-ml-py",
                )
            )
        return
    try:
        pynvml.nvmlInit()
    except Exception as e:
        status = OK if report.cpu_only else WARN
        fix = (
            ""
            if report.cpu_only
            else "the NVIDIA driver's libnvidia-ml.so is not loadable; check `nvidia-smi`"
        )
        report.checks.append(Check("nvml", status, f"NVML not available ({type(e).__name__})", fix))
        return
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        driver = driver.decode() if isinstance(driver, bytes) else str(driver)
        report.driver = driver
        names = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(h)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            name = name.decode() if isinstance(name, bytes) else str(name)
            names.append(f"{name} ({mem.free / 2**30:.1f}/{mem.total / 2**30:.1f} GiB free)")
        report.checks.append(Check("nvml", OK, f"driver {driver}; " + "; ".join(names)))
    except Exception as e:
        report.checks.append(Check("nvml", WARN, f"NVML query failed: {e}", "check `nvidia-smi`"))
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()
