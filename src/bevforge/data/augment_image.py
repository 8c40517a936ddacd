"""Image-space augmentation per camera (BEVDet ``PrepareImageInputs``), folded into ``lidar2img``.

Shape letters: H/W image size (``Hs/Ws`` source, ``fH/fW`` the final ``input_hw``), N cameras.

Pixel coordinates are continuous with pixel ``(i, j)`` covering ``[j, j+1) x [i, i+1)`` (the convention of
``transforms.resize_lidar2img`` and of ``grid_sample(align_corners=False)``). One camera's augmentation
is a 2D affine ``out_from_raw [3, 3]`` on homogeneous pixels of the RAW image (size in the infos):

    resize by ``r`` -> crop (shift by ``-(crop_x, crop_y)``) -> horizontal flip (``u -> fW - u``)
    -> rotation by ``rot_deg`` about the centre of the crop (``PIL.Image.rotate`` sense: counter-clockwise
    on screen; matrix ``[[cos, sin], [-sin, cos]]`` in the y-down pixel frame)

Training (official ``sample_augmentation``): ``r = fW / W + U(resize_lim)``; the crop keeps the bottom
``(1 - U(crop_h_lim))`` of the resized height (``crop_y = int((1 - U(crop_h_lim)) * newH) - fH``), and
``crop_x = int(U(0, max(0, newW - fW)))``; flip with p = 0.5 when ``flip``; ``rot ~ U(rot_lim_deg)``.
Test: ``r = fW / W + resize_test``, ``crop_y`` with the mean of ``crop_h_lim``, ``crop_x`` centred, no
flip or rotation. The image is resampled ONCE (bilinear ``grid_sample`` from the source through the
inverse affine; outside the source is black, like PIL); the source is the JPEG decoded at the
smallest libjpeg scale ``m/8`` not below ``r`` with whole-pixel sizes (DCT scaling, no resampling; 1600x900:
m in 2, 4, 6, 8), so the warp shrinks by at most 1.5x unless the source is the pre-resized image cache.

``lidar2img`` (raw pixels) becomes ``lift_affine(out_from_raw) @ lidar2img``. lidar2img yields the
projective ``(u d, v d, d, 1)``, so the pixel translation must scale with the depth d: the lift puts
``tx`` in the depth column (``u' d = a (u d) + b (v d) + tx d``), not in the last one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from bevforge.config import ConfigError, DataConfig


@dataclass(frozen=True)
class ImageAugSpec:
    """How every camera image of a split becomes ``input_hw``; ``random`` only in training."""

    input_hw: tuple[int, ...]  # (fH, fW) pixels of the final image; () = the img_scale size (dataset fills)
    random: bool  # sample the ranges below (training with data.img_aug) or use the test values
    resize_lim: tuple[float, float] = (-0.06, 0.11)  # added to the base scale fW / W_raw
    crop_h_lim: tuple[float, float] = (0.0, 0.0)  # fraction of the resized height cut at the bottom
    rot_lim_deg: tuple[float, float] = (-5.4, 5.4)
    flip: bool = True
    resize_test: float = 0.0  # added to the base scale at test time

    @classmethod
    def from_config(cls, d: DataConfig, train: bool) -> ImageAugSpec | None:
        """``None`` (the img_scale + pad path) unless ``data.input_size`` or ``data.img_aug`` is set."""
        check_image_aug_config(d)
        if not d.input_size and not d.img_aug:
            return None
        return cls(
            input_hw=tuple(int(v) for v in d.input_size),
            random=bool(d.img_aug) and train,
            resize_lim=_pair(d.resize_lim),
            crop_h_lim=_pair(d.crop_h_lim),
            rot_lim_deg=_pair(d.rot_lim_deg),
            flip=bool(d.img_flip),
            resize_test=float(d.resize_test),
        )

    def check_source(self, raw_wh: tuple[int, int], where: str) -> None:
        """ConfigError when a resize range reaches a non-positive scale for a ``raw_wh`` image."""
        base = self.input_hw[1] / raw_wh[0]
        low = base + (self.resize_lim[0] if self.random else self.resize_test)
        if low <= 0:
            field = "data.resize_lim" if self.random else "data.resize_test"
            raise ConfigError(
                f"{field}: base scale {base:.4f} (input width {self.input_hw[1]} / {where} width "
                f"{raw_wh[0]}) + {low - base} is not positive; raise {field}"
            )


@dataclass(frozen=True)
class ImageAug:
    """One camera's sampled parameters (see the module docstring)."""

    resize: float
    crop_xy: tuple[int, int]  # top-left corner of the crop in the resized image, pixels (may be < 0)
    flip: bool
    rot_deg: float


def _pair(v: Sequence[float]) -> tuple[float, float]:
    return float(v[0]), float(v[1])


def check_image_aug_config(d: DataConfig) -> None:
    """Reject nonsense in the image-augmentation fields of ``DataConfig`` (ConfigError naming the field)."""
    if len(d.input_size) not in (0, 2) or any(int(s) <= 0 for s in d.input_size):
        raise ConfigError(
            f"data.input_size: expected () or two positive ints (H, W), e.g. (256, 704); got {d.input_size}"
        )
    for name in ("resize_lim", "crop_h_lim", "rot_lim_deg"):
        v = getattr(d, name)
        if len(v) != 2 or not all(math.isfinite(float(x)) for x in v) or float(v[0]) > float(v[1]):
            raise ConfigError(f"data.{name}: expected (low, high) with low <= high; got {v}")
    if not 0.0 <= d.crop_h_lim[0] <= d.crop_h_lim[1] < 1.0:
        raise ConfigError(f"data.crop_h_lim: fractions of the height in [0, 1); got {d.crop_h_lim}")


def sample_image_aug(
    raw_wh: tuple[int, int], spec: ImageAugSpec, rng: np.random.Generator | None
) -> ImageAug:
    """Parameters for one camera image of raw size ``(W, H)``; deterministic when ``rng`` is None or
    ``spec.random`` is False (the official test branch)."""
    fh, fw = spec.input_hw
    w, h = raw_wh
    rnd = rng is not None and spec.random
    resize = fw / w + (float(rng.uniform(*spec.resize_lim)) if rnd else spec.resize_test)
    new_w, new_h = int(w * resize), int(h * resize)
    cut = float(rng.uniform(*spec.crop_h_lim)) if rnd else float(np.mean(spec.crop_h_lim))
    crop_y = int((1 - cut) * new_h) - fh
    crop_x = int(rng.uniform(0, max(0, new_w - fw))) if rnd else int(max(0, new_w - fw) / 2)
    flip = bool(spec.flip and rng.integers(2)) if rnd else False
    rot = float(rng.uniform(*spec.rot_lim_deg)) if rnd else 0.0
    return ImageAug(resize=resize, crop_xy=(crop_x, crop_y), flip=flip, rot_deg=rot)


def image_aug_matrix(aug: ImageAug, input_hw: tuple[int, int]) -> np.ndarray:
    """``out_from_raw [3, 3]`` float64: raw-image pixels -> pixels of the ``input_hw`` image."""
    fh, fw = input_hw
    m = np.diag([aug.resize, aug.resize, 1.0])
    m[:2, 2] = -np.asarray(aug.crop_xy, dtype=np.float64)  # crop after resize
    if aug.flip:
        m = np.array([[-1.0, 0.0, fw], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ m
    if aug.rot_deg != 0.0:
        a = math.radians(aug.rot_deg)
        c, s = math.cos(a), math.sin(a)
        centre = np.array([fw / 2, fh / 2])
        rot = np.eye(3)
        rot[:2, :2] = [[c, s], [-s, c]]
        rot[:2, 2] = centre - rot[:2, :2] @ centre  # about the crop centre
        m = rot @ m
    return m


def lift_affine(out_from_raw: np.ndarray) -> np.ndarray:
    """``[3, 3]`` pixel affine -> ``[4, 4]`` to left-multiply a lidar2img (see the module docstring)."""
    m = np.eye(4)
    m[:2, :2] = out_from_raw[:2, :2]
    m[:2, 2] = out_from_raw[:2, 2]  # translation scales with depth: column of the depth coordinate
    return m


def decode_wh(raw_wh: tuple[int, int], resize: float) -> tuple[int, int]:
    """Size to decode the JPEG at: ``raw * m / 8`` for the smallest libjpeg scale m/8 >= ``resize`` that
    gives whole pixels on both axes (libjpeg rounds a fractional size up, and the partial last pixel would
    make ``decoded / raw`` differ from the true scale m/8: 0.5 px at the bottom of 1600x900 at 5/8)."""
    w, h = raw_wh
    exact = [m for m in range(1, 9) if (w * m) % 8 == 0 and (h * m) % 8 == 0]  # always holds 8
    m = next((m for m in exact if m >= resize * 8 - 1e-9), 8)
    return w * m // 8, h * m // 8


def warp_image(src: torch.Tensor, out_from_src: np.ndarray, out_hw: tuple[int, int]) -> torch.Tensor:
    """Resample ``src [3, Hs, Ws]`` (any dtype, values kept) to ``[3, fH, fW]`` float32 through the affine
    ``out_from_src [3, 3]`` (bilinear, zeros outside the source).

    Only the source window the output can reach is converted to float (the crop usually drops a third of
    a decoded camera image); the sampling grid is built separably (``x = a u + b v + c``)."""
    assert src.dim() == 3 and src.shape[0] == 3, src.shape
    fh, fw = out_hw
    hs, ws = src.shape[-2:]
    src_from_out = np.linalg.inv(out_from_src)  # [3, 3]
    corners = src_from_out @ np.array([[0, fw, 0, fw], [0, 0, fh, fh], [1, 1, 1, 1]], dtype=np.float64)
    x0 = min(max(int(math.floor(corners[0].min())) - 1, 0), ws - 1)
    y0 = min(max(int(math.floor(corners[1].min())) - 1, 0), hs - 1)
    x1 = max(min(int(math.ceil(corners[0].max())) + 1, ws), x0 + 1)
    y1 = max(min(int(math.ceil(corners[1].max())) + 1, hs), y0 + 1)
    window = src[:, y0:y1, x0:x1].float()  # [3, h, w] the reachable part (pixel (y0, x0) -> (0, 0))
    h, w = window.shape[-2:]
    # normalised window coordinates (align_corners=False): n = 2 (p - origin) / size - 1
    to_norm = np.array([[2.0 / w, 0.0, -2.0 * x0 / w - 1.0], [0.0, 2.0 / h, -2.0 * y0 / h - 1.0], [0, 0, 1]])
    coef = torch.from_numpy(to_norm @ src_from_out).float()  # [3, 3]
    u = torch.arange(fw, dtype=torch.float32) + 0.5  # [fW] pixel centres
    v = torch.arange(fh, dtype=torch.float32) + 0.5  # [fH]
    gx = coef[0, 0] * u[None, :] + (coef[0, 1] * v + coef[0, 2])[:, None]  # [fH, fW]
    gy = coef[1, 0] * u[None, :] + (coef[1, 1] * v + coef[1, 2])[:, None]  # [fH, fW]
    grid = torch.stack([gx, gy], dim=-1)  # [fH, fW, 2]
    out = F.grid_sample(window[None], grid[None], mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[0]  # [3, fH, fW]


def source_scale(src_wh: tuple[int, int], raw_wh: tuple[int, int]) -> np.ndarray:
    """``[3, 3]`` raw pixels -> pixels of a decoded/cached source of size ``src_wh``."""
    return np.diag([src_wh[0] / raw_wh[0], src_wh[1] / raw_wh[1], 1.0])


def eval_input_geometry(d: DataConfig, raw_wh: tuple[int, int]) -> tuple[tuple[int, int], np.ndarray]:
    """What evaluation makes of a ``raw_wh = (W, H)`` camera image, for code that builds inputs without
    the dataset (export, benchmarks): ``((H, W) of the un-padded input, [4, 4] float64 post)`` with
    ``post @ lidar2img_raw`` = the input's lidar2img. ``data.input_size`` / ``data.img_aug`` set: the
    deterministic resize + crop; otherwise the ``data.img_scale`` resize (``image_io.target_size``)."""
    from bevforge.data.image_io import target_size

    w, h = target_size(int(raw_wh[0]), int(raw_wh[1]), float(d.img_scale))
    spec = ImageAugSpec.from_config(d, train=False)
    if spec is None:
        return (h, w), np.diag([w / raw_wh[0], h / raw_wh[1], 1.0, 1.0])
    hw = (int(spec.input_hw[0]), int(spec.input_hw[1])) if spec.input_hw else (h, w)
    aug = sample_image_aug((int(raw_wh[0]), int(raw_wh[1])), replace(spec, input_hw=hw), None)
    return hw, lift_affine(image_aug_matrix(aug, hw))
