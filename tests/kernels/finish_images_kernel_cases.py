"""Image finishing kernel cases (``ops/images/triton_finish.py``) against the torch path of
``data/device_images.finish_images`` (its reference). Run on CPU under TRITON_INTERPRET=1, or
``--device cuda``; ``tests/kernels/test_finish_images_kernel.py`` runs them both ways.

Tolerance: 6e-3 of a pixel value (1e-4 after the ImageNet normalisation, std ~58; the mean-only recipes'
std is 1, their outputs pixel-sized: the H200 showed 2.4e-4 there, ~16 fp32 ulps of a value ~200 after the
HSV round trip); the HSV floor-modulo is ``a - floor(a / b) * b`` in the kernel and from ``fmod`` in torch.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kernel_harness import run_cases  # noqa: E402

from bevforge.config import DataConfig  # noqa: E402
from bevforge.data.device_images import finish_images  # noqa: E402
from bevforge.data.transforms import draw_photometric  # noqa: E402
from bevforge.ops.dispatch import kernels  # noqa: E402
from bevforge.structures.batch import Batch  # noqa: E402


def make_batch(device, B=2, T=2, N=3, H=11, W=13, valid_hw=(9, 10), photometric=True, padding_frame=False):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (B, T, N, 3, H, W), generator=g, dtype=torch.uint8)
    images[..., 0, :, 0, 0] = 200  # grey pixels (S = 0) and ties of the maximum
    images[..., 0, :2, 0, 1] = 255
    images[..., valid_hw[0] :, :] = 0
    images[..., : valid_hw[0], valid_hw[1] :] = 0
    params = None
    if photometric:
        rng = np.random.default_rng(3)
        draws = np.stack([draw_photometric(rng) for _ in range(B * T * N)])  # [B*T*N, 6]
        params = torch.from_numpy(draws).view(B, T, N, 6).to(device)
    frame_valid = torch.ones(B, T, dtype=torch.bool)
    if padding_frame:
        frame_valid[0, 0] = False
        images[0, 0] = 0
    zeros = torch.zeros(B, T, 4, 4, device=device)
    return Batch(
        images=images.to(device), lidar2img=torch.zeros(B, T, N, 4, 4, device=device),
        can_bus=torch.zeros(B, T, 18, device=device), ego2global=zeros, lidar2ego=zeros,
        frame_valid=frame_valid, scene_tokens=[["s"] * T] * B, sample_tokens=["t"] * B,
        timestamps=torch.zeros(B, T, dtype=torch.int64), img_hw=valid_hw, gt_boxes=[], gt_labels=[],
        photometric=params,
    )  # fmt: skip


def _both(batch, data):
    with kernels("reference"):
        want = finish_images(batch, data).images
    with kernels("triton"):
        got = finish_images(batch, data).images
    return got, want


PIXEL_TOL = 6e-3  # in pixel values (0..255), before the division by the std


def _check(batch, data, label):
    got, want = _both(batch, data)
    assert got.dtype == torch.float32 and got.shape == want.shape, (got.dtype, got.shape)
    err = (got - want).abs().max().item()
    tol = PIXEL_TOL / min(data.img_std)  # ImageNet std ~58: 1e-4; mean only: 6e-3
    assert err <= tol, f"{label}: max |kernel - torch path| {err:.3g} > {tol:.3g}"


def check_photometric_rgb(device: str) -> None:
    _check(make_batch(device), DataConfig(), "photometric, RGB ImageNet normalisation")


def check_bgr_mean_only(device: str) -> None:
    data = DataConfig(to_rgb=False, img_mean=(103.53, 116.28, 123.675), img_std=(1.0, 1.0, 1.0))
    _check(make_batch(device), data, "BGR, mean only")


def check_no_photometric_padding_frame(device: str) -> None:
    batch = make_batch(device, photometric=False, padding_frame=True)
    got, want = _both(batch, DataConfig())
    assert torch.equal(got[0, 0], torch.zeros_like(got[0, 0])), "a padding frame is a zero image"
    _check(batch, DataConfig(), "no photometric, a padding frame")


def check_every_step_fires(device: str) -> None:
    """One image per combination of the draw's steps on and off, each against the torch path."""
    batch = make_batch(device, B=1, T=4, N=8, H=6, W=7, valid_hw=(6, 7))
    combos = torch.tensor([[b, c1, s, hu, c2] for b in (0, 1) for c1 in (0, 1) for s in (0, 1)
                           for hu in (0, 1) for c2 in (0, 1)])  # fmt: skip  # [32, 5]
    p = torch.tensor([[20.0, 1.3, 0.7, -12.0, 1.0, 0.8]]).repeat(32, 1)  # [32, 6] every step on
    off = torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0, 1.0])
    for col, step in enumerate((0, 1, 2, 3, 5)):
        p[:, step] = torch.where(combos[:, col].bool(), p[:, step], off[step])
        if step == 3:
            p[:, 4] = combos[:, col].float()
    _check(replace(batch, photometric=p.view(1, 4, 8, 6).to(device)), DataConfig(), "every step on/off")


CASES = {
    "photometric_rgb": check_photometric_rgb,
    "bgr_mean_only": check_bgr_mean_only,
    "no_photometric_padding_frame": check_no_photometric_padding_frame,
    "every_step_fires": check_every_step_fires,
}

if __name__ == "__main__":
    sys.exit(run_cases(CASES, sys.argv[1:]))
