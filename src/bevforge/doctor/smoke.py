"""Device smoke tests: a small matmul on every device, a 2-process all-reduce (NCCL on 2+ GPUs)."""

from __future__ import annotations

import datetime
import socket

import torch

from bevforge.doctor.report import FAIL, OK, Check, DoctorReport

MATMUL_SIZE = 64
NCCL_TIMEOUT_S = 60.0


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


def free_port() -> int:
    """A TCP port on the loopback free right now (for a rendezvous; the tests' torchrun launches too)."""
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

    port = free_port()
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
