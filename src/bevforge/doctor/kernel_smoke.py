"""Kernel smoke test: every Triton kernel, forward and backward, against its pure-PyTorch reference.

Shape letters: B batch, N cameras, S value tokens, M heads, D channels per head, Q queries, L levels,
P points, Z pillar points; C channels, H/W pixels.

On a GPU the recipes take the Triton kernels by default (``BEVFORGE_KERNELS=auto``), compiled on first
use for this GPU, driver and Triton; a kernel that does not compile or computes wrong numbers here would
stop (or silently spoil) a training run. This runs each kernel's dispatch on small inputs at the recipes'
per-head sizes (D = 32 channels, 4 levels, 8 points) under ``BEVFORGE_KERNELS=triton`` and under
``reference``, in fp32 and bf16, and compares the outputs and the input gradients (error relative to the
reference's largest magnitude: fp32 1e-4 forward / 1e-3 gradients, bf16 3e-2 / 1e-1, against the fp32
reference on the same rounded inputs).

The doctor runs it in a child process (``python -m bevforge.doctor.kernel_smoke --device cuda:0``, see
``doctor/kernels.py``), so a kernel that faults or hangs cannot take the doctor with it; one JSON line per
kernel. On a CPU it runs under ``TRITON_INTERPRET=1`` only (the tests), else the kernels are never used
there.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from bevforge.ops.dispatch import KERNEL_NAMES, kernels, kernels_off

#: (forward, gradient) tolerances of the error relative to the reference's largest magnitude
TOLERANCES = {torch.float32: (1e-4, 1e-3), torch.bfloat16: (3e-2, 1e-1)}
DTYPES = (torch.float32, torch.bfloat16)
#: value levels of the MSDA cases (H, W): four levels as the base recipe's SCA, a 1x1 one included
LEVELS = ((6, 8), (3, 4), (2, 2), (1, 1))

# (function of the inputs, inputs); inputs that are floating-point and flagged get gradients
Case = tuple[Callable[..., torch.Tensor], list[torch.Tensor], list[bool]]


@dataclass(frozen=True)
class Smoke:
    name: str  # what the doctor's check is called ("kernel <name>")
    make: Callable[[torch.device, torch.dtype], Case]
    dtypes: tuple[torch.dtype, ...] = DTYPES


def _levels(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    from bevforge.ops.msda.shapes import level_start_index

    spatial = torch.tensor(LEVELS, dtype=torch.long, device=device)  # [L, 2]
    return spatial, level_start_index(spatial)


def _msda(device: torch.device, dtype: torch.dtype) -> Case:
    from bevforge.ops.msda import multi_scale_deformable_attention

    g = torch.Generator().manual_seed(0)
    B, M, D, Q, P, L = 1, 2, 32, 10, 8, len(LEVELS)
    S = sum(h * w for h, w in LEVELS)
    spatial, start = _levels(device)
    value = torch.randn(B, S, M, D, generator=g).to(device, dtype)
    # fp32 locations (some outside) and weights, as the layers hand them over under autocast
    locations = (torch.rand(B, Q, M, L, P, 2, generator=g) * 1.4 - 0.2).to(device)
    weights = torch.rand(B, Q, M, L, P, generator=g).to(device)

    def fn(value, locations, weights):
        return multi_scale_deformable_attention(value, spatial, start, locations, weights)

    return fn, [value, locations, weights], [True, True, True]


def _msda_offsets(device: torch.device, dtype: torch.dtype) -> Case:
    from bevforge.ops.msda import msda_from_offsets

    g = torch.Generator().manual_seed(1)
    B, M, D, Q, P, Z, L = 1, 2, 32, 10, 8, 4, len(LEVELS)
    S = sum(h * w for h, w in LEVELS)
    spatial, start = _levels(device)
    value = torch.randn(B, S, M, D, generator=g).to(device, dtype)
    reference = torch.rand(B, Q, 1, Z, 2, generator=g).to(device)  # fp32, no gradient (the SCA's/TSA's)
    offsets = (torch.randn(B, Q, M, L, P, 2, generator=g) * 2).to(device, dtype)  # cells of each level
    weights = torch.rand(B, Q, M, L, P, generator=g).to(device)  # fp32 (autocast leaves the softmax so)

    def fn(value, reference, offsets, weights):
        return msda_from_offsets(value, spatial, start, reference, offsets, weights)

    return fn, [value, reference, offsets, weights], [True, False, True, True]


def _msda_cameras(device: torch.device, dtype: torch.dtype) -> Case:
    from bevforge.ops.msda.cameras import msda_cameras

    g = torch.Generator().manual_seed(2)
    B, N, M, D, P, Z, L = 1, 6, 2, 32, 8, 4, len(LEVELS)
    grid_h, grid_w = 3, 4
    Q = grid_h * grid_w
    S = sum(h * w for h, w in LEVELS)
    spatial, start = _levels(device)
    value = torch.randn(B, N, S, M, D, generator=g).to(device, dtype)
    reference = torch.rand(B, N, Q, Z, 2, generator=g) * 1.2 - 0.1
    hit = torch.rand(B, N, Q, generator=g) > 0.5
    hit[0, :, 0] = False  # a query no camera sees
    reference[~hit] = 1e4  # what a miss may project to: never read
    offsets = (torch.randn(B, Q, M, L, P, 2, generator=g) * 2).to(device, dtype)
    weights = torch.rand(B, Q, M, L, P, generator=g).to(device)
    reference, hit = reference.to(device), hit.to(device)

    def fn(value, offsets, weights):
        return msda_cameras(value, spatial, start, reference, hit, offsets, weights, grid_w)

    return fn, [value, offsets, weights], [True, True, True]


def _dcn(device: torch.device, dtype: torch.dtype) -> Case:
    from bevforge.ops.dcn import deform_conv2d_sampled

    g = torch.Generator().manual_seed(3)
    B, C, O, H, W, K = 1, 16, 16, 9, 11, 9  # a 3x3 DCNv2, stride 1, padding 1 (the backbone's)
    x = torch.randn(B, C, H, W, generator=g).to(device, dtype)
    offset = (torch.randn(B, 2 * K, H, W, generator=g) * 1.5).to(device, dtype)
    mask = torch.rand(B, K, H, W, generator=g).to(device, dtype)
    weight = (torch.randn(O, C, 3, 3, generator=g) * 0.1).to(device, dtype)
    bias = torch.randn(O, generator=g).to(device, dtype)

    def fn(x, offset, mask, weight, bias):
        return deform_conv2d_sampled(x, offset, weight, bias, padding=1, mask=mask)

    return fn, [x, offset, mask, weight, bias], [True] * 5


def _bev_pool(device: torch.device, dtype: torch.dtype) -> Case:
    from bevforge.ops.bev_pool import bev_pool, plan_bev_pool

    g = torch.Generator().manual_seed(4)
    B, N, D, fH, fW, C, H, W = 1, 2, 5, 3, 4, 32, 6, 7
    cells = torch.randint(-1, H * W, (B, N, D, fH, fW), generator=g)  # -1: outside the grid
    plan = plan_bev_pool(cells.to(device), H, W)
    depth = torch.rand(B, N, D, fH, fW, generator=g).softmax(2).to(device, dtype)
    context = torch.randn(B, N, fH, fW, C, generator=g).to(device, dtype)

    def fn(depth, context):
        return bev_pool(depth, context, plan)

    return fn, [depth, context], [True, True]


def _finish_images(device: torch.device, dtype: torch.dtype) -> Case:
    from bevforge.config import DataConfig
    from bevforge.data.device_images import finish_images
    from bevforge.structures.batch import Batch

    g = torch.Generator().manual_seed(5)
    B, T, N, H, W = 1, 2, 2, 11, 13
    images = torch.randint(0, 256, (B, T, N, 3, H, W), generator=g, dtype=torch.uint8).to(device)
    photometric = torch.tensor([1.0, 10.0, 1.1, 0.9, 5.0, 0.0]).repeat(B, T, N, 1).to(device)  # [B, T, N, 6]
    zeros = torch.zeros(B, T, 4, 4, device=device)

    def fn(images):
        batch = Batch(
            images=images, lidar2img=torch.zeros(B, T, N, 4, 4, device=device),
            can_bus=torch.zeros(B, T, 18, device=device), ego2global=zeros, lidar2ego=zeros,
            frame_valid=torch.ones(B, T, dtype=torch.bool), scene_tokens=[["s"] * T] * B,
            sample_tokens=["t"] * B, timestamps=torch.zeros(B, T, dtype=torch.int64), img_hw=(H - 2, W - 3),
            gt_boxes=[], gt_labels=[], photometric=photometric,
        )  # fmt: skip
        return finish_images(batch, DataConfig()).images

    return fn, [images], [False]


SMOKES = (
    Smoke("msda", _msda),
    Smoke("msda-offsets", _msda_offsets),
    Smoke("msda-cameras", _msda_cameras),
    Smoke("dcn", _dcn),
    Smoke("bev-pool", _bev_pool),
    Smoke("finish-images", _finish_images, dtypes=(torch.float32,)),  # uint8 in, fp32 out
)


def _run(fn: Callable[..., torch.Tensor], inputs: list[torch.Tensor], grads: list[bool], choice: str):
    """``fn`` under ``BEVFORGE_KERNELS=choice``: (output, gradients of the flagged inputs) for a fixed
    random output gradient."""
    leaves = [t.detach().clone().requires_grad_(flag) for t, flag in zip(inputs, grads)]
    with kernels(choice):
        out = fn(*leaves)
        wanted = [t for t in leaves if t.requires_grad]
        if not wanted:
            return out.detach(), []
        g = torch.Generator().manual_seed(7)
        grad_out = torch.randn(out.shape, generator=g).to(out.device, out.dtype)
        return out.detach(), list(torch.autograd.grad(out, wanted, grad_out))


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """``max |got - want| / max |want|`` in fp64 (inf where the kernel gave a NaN or an inf)."""
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    if got.shape != want.shape or not bool(torch.isfinite(got).all()):
        return float("inf")
    if want.numel() == 0:
        return 0.0
    return float((got - want).abs().max()) / max(float(want.abs().max()), 1e-12)


def run_smoke(smoke: Smoke, device: torch.device) -> dict:
    """One kernel in every dtype: ``{"name", "status": ok|fail|skip, "detail"}`` (never raises)."""
    if smoke.name in kernels_off():  # its reference runs: nothing to check (its dispatch may go elsewhere)
        detail = f"switched off by BEVFORGE_KERNELS_OFF={os.environ.get('BEVFORGE_KERNELS_OFF')}"
        return {"name": smoke.name, "status": "skip", "detail": detail}
    t0 = time.perf_counter()
    parts = []
    for dtype in smoke.dtypes:
        label = str(dtype).removeprefix("torch.").replace("float32", "fp32").replace("bfloat16", "bf16")
        try:
            fn, inputs, grads = smoke.make(device, dtype)
            out, grad = _run(fn, inputs, grads, "triton")
            fp32 = [t.float() if t.is_floating_point() else t for t in inputs]
            ref_out, ref_grad = _run(fn, fp32, grads, "reference")
        except RuntimeError as e:
            if "BEVFORGE_KERNELS=triton but" in str(e):  # not eligible here (no Triton, a dtype): why
                return {"name": smoke.name, "status": "skip", "detail": str(e).split(": ", 1)[-1]}
            return {"name": smoke.name, "status": "fail", "detail": f"{label}: {type(e).__name__}: {e}"}
        except Exception as e:  # a compile error, a launch failure: the kernel cannot run here
            return {"name": smoke.name, "status": "fail", "detail": f"{label}: {type(e).__name__}: {e}"}
        tol_out, tol_grad = TOLERANCES[dtype]
        err_out = relative_error(out, ref_out)
        err_grad = max((relative_error(a, b) for a, b in zip(grad, ref_grad)), default=0.0)
        if err_out > tol_out or err_grad > tol_grad:
            return {
                "name": smoke.name,
                "status": "fail",
                "detail": f"{label}: wrong numbers: output error {err_out:.1e} (tolerance {tol_out:.0e}), "
                f"gradient error {err_grad:.1e} (tolerance {tol_grad:.0e}) against the reference",
            }
        parts.append(
            f"{label} {err_out:.0e}/{err_grad:.0e}" if grads and any(grads) else f"{label} {err_out:.0e}"
        )
    detail = (
        f"error vs reference (out/grad) {', '.join(parts)}; {time.perf_counter() - t0:.1f} s with compiles"
    )
    return {"name": smoke.name, "status": "ok", "detail": detail}


assert tuple(s.name for s in SMOKES) == KERNEL_NAMES, "one smoke per kernel, in the names' order"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda:0" if torch.cuda.is_available() else "cpu")
    p.add_argument("--only", default="", help="comma-separated kernel names (default: all)")
    args = p.parse_args(argv)
    names = [n for n in args.only.split(",") if n]
    unknown = sorted(set(names) - {s.name for s in SMOKES})
    if unknown:
        print(f"error: unknown kernel(s) {unknown}; choose from {[s.name for s in SMOKES]}", file=sys.stderr)
        return 2
    device = torch.device(args.device)
    for smoke in SMOKES:
        if not names or smoke.name in names:
            print(json.dumps(run_smoke(smoke, device)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
