"""`bevforge doctor`: is this machine (and optionally a recipe's data) ready to train and evaluate?

Every check returns a :class:`Check` with a status ``ok`` / ``warn`` / ``fail`` and, when it is not
``ok``, the fix in words. The machine is *usable* when no check fails; a CPU-only machine is usable
(warned, not failed) because every recipe runs on a CPU, only slowly.

Library only: :func:`run_checks` returns a :class:`DoctorReport`; ``cli/doctor.py`` prints it.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import importlib.metadata
import platform
import socket
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

OK, WARN, FAIL = "ok", "warn", "fail"
CUDA_INSTALL_HINT = (
    "install a CUDA build of torch matching your driver, e.g. "
    "pip install torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cu128 "
    "(see https://pytorch.org/get-started/locally/)"
)
MATMUL_SIZE = 64
NCCL_TIMEOUT_S = 60.0


@dataclass
class Check:
    name: str
    status: str  # ok | warn | fail
    detail: str
    fix: str = ""


@dataclass
class GpuInfo:
    index: int
    name: str
    compute_capability: str
    total_memory_gib: float
    free_memory_gib: float | None
    bf16: bool


@dataclass
class DoctorReport:
    checks: list[Check] = field(default_factory=list)
    gpus: list[GpuInfo] = field(default_factory=list)
    versions: dict[str, str | None] = field(default_factory=dict)
    driver: str | None = None

    @property
    def cpu_only(self) -> bool:
        return not self.gpus

    @property
    def usable(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    @property
    def summary(self) -> str:
        n_fail = sum(c.status == FAIL for c in self.checks)
        n_warn = sum(c.status == WARN for c in self.checks)
        where = "CPU only" if self.cpu_only else f"{len(self.gpus)} GPU(s): {self.gpus[0].name}"
        verdict = "usable" if self.usable else "NOT usable"
        return f"{where}; {verdict} ({n_fail} failed, {n_warn} warnings)"

    def exit_code(self) -> int:
        return 0 if self.usable else 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "usable": self.usable,
            "cpu_only": self.cpu_only,
            "summary": self.summary,
            "versions": dict(self.versions),
            "driver": self.driver,
            "gpus": [asdict(g) for g in self.gpus],
            "checks": [asdict(c) for c in self.checks],
        }


# ------------------------------------------------------------------ versions


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


# ------------------------------------------------------------------ devices


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


def matmul_smoke(device: str, size: int = MATMUL_SIZE) -> float:
    """Multiply two random [size, size] matrices on ``device``; return the max relative error vs fp64 CPU."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=g)
    b = torch.randn(size, size, generator=g)
    ref = a.double() @ b.double()
    out = (a.to(device) @ b.to(device)).cpu().double()
    return float(((out - ref).abs().max() / ref.abs().max()).item())


def _check_matmul(report: DoctorReport) -> None:
    devices = ["cpu"] + [f"cuda:{g.index}" for g in report.gpus]
    for dev in devices:
        try:
            err = matmul_smoke(dev)
        except Exception as e:
            report.checks.append(
                Check(
                    f"matmul {dev}",
                    FAIL,
                    f"{type(e).__name__}: {e}",
                    "the device cannot run a kernel: check the driver / CUDA build (see the cuda check)",
                )
            )
            continue
        # TF32 on Ampere+ gives ~1e-3 relative error; anything above 1e-2 is a broken device or build.
        status = OK if err < 1e-2 else FAIL
        fix = "" if status == OK else "wrong matmul results: check the driver, or disable TF32"
        report.checks.append(
            Check(f"matmul {dev}", status, f"{MATMUL_SIZE}x{MATMUL_SIZE} rel err {err:.1e}", fix)
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _allreduce_worker(rank: int, world_size: int, port: int, backend: str, timeout_s: float) -> None:
    import torch.distributed as dist

    dist.init_process_group(
        backend,
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    try:
        if backend == "nccl":
            torch.cuda.set_device(rank)
            t = torch.full((4,), float(rank + 1), device=f"cuda:{rank}")
        else:
            t = torch.full((4,), float(rank + 1))
        dist.all_reduce(t)
        expected = world_size * (world_size + 1) / 2
        if not torch.allclose(t.cpu(), torch.full((4,), expected)):
            raise RuntimeError(f"all_reduce gave {t.tolist()}, expected {expected}")
    finally:
        dist.destroy_process_group()


def allreduce_smoke(backend: str = "nccl", world_size: int = 2, timeout_s: float = NCCL_TIMEOUT_S) -> None:
    """Spawn ``world_size`` processes that all-reduce a tensor; raise on error or after ``timeout_s``."""
    import time

    import torch.multiprocessing as mp

    port = _free_port()
    ctx = mp.spawn(
        _allreduce_worker, args=(world_size, port, backend, timeout_s), nprocs=world_size, join=False
    )
    deadline = time.monotonic() + timeout_s + 30.0  # + process start-up (imports torch)
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            raise TimeoutError(f"{backend} all_reduce did not finish within {timeout_s + 30:.0f} s")


def _check_nccl_allreduce(report: DoctorReport) -> None:
    if len(report.gpus) < 2:
        return
    try:
        allreduce_smoke("nccl", 2)
        report.checks.append(Check("nccl all_reduce", OK, "2 processes on cuda:0, cuda:1"))
    except Exception as e:
        report.checks.append(
            Check(
                "nccl all_reduce",
                FAIL,
                f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}",
                "multi-GPU runs will hang: rerun with NCCL_DEBUG=INFO; try NCCL_P2P_DISABLE=1 or "
                "NCCL_IB_DISABLE=1; check that the GPUs see each other (`nvidia-smi topo -m`)",
            )
        )


# ------------------------------------------------------------------ recipe / data


def _check_config(report: DoctorReport, config: str, overrides: list[str] | None = None) -> None:
    from bevforge.config import ConfigError, load_config

    try:
        cfg = load_config(config, overrides)
    except ConfigError as e:
        report.checks.append(Check("config", FAIL, str(e), "pass a recipe name (see configs/) or a path"))
        return
    except Exception as e:  # the recipe file itself raised
        report.checks.append(
            Check(
                "config", FAIL, f"{config}: {type(e).__name__}: {e}", "fix the recipe file so config() runs"
            )
        )
        return
    report.checks.append(Check("config", OK, f"{config} ({cfg.name})"))

    root = Path(cfg.data.data_root)
    if root.is_dir():
        tables = root / cfg.data.version / "sample.json"
        ok = tables.is_file()
        report.checks.append(
            Check(
                "data root",
                OK if ok else WARN,
                f"{root.resolve()}" + ("" if ok else f" has no {cfg.data.version}/sample.json"),
                ""
                if ok
                else f"set data.version to the folder of nuScenes tables under {root} "
                "(needed by prepare and evaluation against the DB)",
            )
        )
    else:
        report.checks.append(
            Check(
                "data root",
                FAIL,
                f"data root {root} does not exist (cwd {Path.cwd()})",
                f"put the nuScenes-format dataset at {root}, or point to it with "
                "--set data.data_root=/path/to/nuscenes; "
                f"for a synthetic set run `bevforge synth --out {root}`",
            )
        )

    _check_infos(report, cfg)

    if cfg.load_from:
        p = Path(cfg.load_from)
        ok = p.is_file()
        report.checks.append(
            Check(
                "load_from",
                OK if ok else FAIL,
                f"{p} {'exists' if ok else 'does not exist'}",
                ""
                if ok
                else "download/convert the checkpoint there, or --set load_from= to start from scratch",
            )
        )

    pre = cfg.model.backbone.pretrained
    if pre == "torchvision":
        ckpt_dir = Path(torch.hub.get_dir()) / "checkpoints"
        found = sorted(ckpt_dir.glob(f"resnet{cfg.model.backbone.depth}-*.pth"))
        report.checks.append(
            Check(
                "backbone pretrained",
                OK if found else WARN,
                str(found[0]) if found else f"no resnet{cfg.model.backbone.depth}-*.pth in {ckpt_dir}",
                ""
                if found
                else f"place the torchvision ResNet-{cfg.model.backbone.depth} weights in {ckpt_dir}",
            )
        )
    elif pre:
        p = Path(pre)
        ok = p.is_file()
        report.checks.append(
            Check(
                "backbone pretrained",
                OK if ok else FAIL,
                f"{p} {'exists' if ok else 'does not exist'}",
                ""
                if ok
                else "put the backbone state dict there, or --set model.backbone.pretrained= (random)",
            )
        )


def _check_infos(report: DoctorReport, cfg: Any) -> None:
    """Each split's info file exists, loads (format, version) and its first sample's images exist."""
    fix = (
        f"run `bevforge prepare --data-root {cfg.data.data_root} --version {cfg.data.version} "
        f"--out {cfg.data.info_dir}`"
    )
    for split in dict.fromkeys((cfg.data.train_split, cfg.data.val_split)):
        info = Path(cfg.data.info_dir) / f"infos_{split}.json"
        name = f"infos {split}"
        if not info.is_file():
            report.checks.append(Check(name, FAIL, f"infos missing: {info}", fix))
            continue
        try:
            from bevforge.data.nuscenes.infos import load_infos

            samples = load_infos(info, expect_version=cfg.data.version).samples
        except ImportError:  # pragma: no cover - part of bevforge
            report.checks.append(Check(name, OK, f"{info} exists (not validated)"))
            continue
        except ValueError as e:  # InfoFormatError: names the file and the fix
            report.checks.append(Check(name, FAIL, str(e), fix))
            continue
        report.checks.append(Check(name, OK, f"{info} ({len(samples)} samples)"))
        if samples:
            missing = [
                c["path"]
                for c in samples[0]["cams"].values()
                if not (Path(cfg.data.data_root) / c["path"]).is_file()
            ]
            if missing:
                cached = bool(cfg.data.image_cache)  # the loader reads the cache, raw images are optional
                report.checks.append(
                    Check(
                        f"images {split}",
                        WARN if cached else FAIL,
                        f"{len(missing)} camera image(s) of the first sample missing under "
                        f"{cfg.data.data_root}, e.g. {missing[0]}",
                        "data.data_root must be the folder the infos were prepared from (or re-run prepare)",
                    )
                )


def run_checks(
    config: str | None = None, nccl: bool = True, overrides: list[str] | None = None
) -> DoctorReport:
    """Run every check; ``config`` (recipe name or path, with ``overrides``) adds the data checks."""
    report = DoctorReport()
    keys = ("os", "python", "torch", "torchvision", "cuda", "cudnn", "nccl", "triton", "nuscenes-devkit")
    report.versions = dict.fromkeys(keys)
    _check_python(report)
    _check_torch(report)
    _check_cuda(report)
    _check_gpus(report)
    _check_nvml(report)
    _check_triton(report)
    _check_matmul(report)
    if nccl:
        _check_nccl_allreduce(report)
    _check_nuscenes(report)
    if config:
        _check_config(report, config, overrides)
    return report
