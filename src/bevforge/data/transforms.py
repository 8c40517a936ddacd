"""Image + camera + box transforms, applied together so the geometry stays consistent.

Shape letters: N cameras, H/W image size, M boxes. Images are float32 ``[3, H, W]`` in [0, 255] (RGB)
until :func:`normalize`; ``lidar2img`` is ``[N, 4, 4]`` mapping lidar points to pixels.

Pipeline per frame (official BEVFormer order with the resize folded into decoding): decode+resize
(``image_io``) -> photometric distortion (train) -> normalise (mean/std, channel order) -> pad to the
divisor (zeros, bottom/right). ``lidar2img`` gets ``diag(sx, sy, 1, 1) @ lidar2img`` for the resize;
padding does not move pixels. With ``data.input_size`` / ``data.img_aug`` the dataset replaces the
decode+resize step by ``augment_image`` (resize/crop/flip/rotate, one warp); BEV-space augmentation is
``augment_bev``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F


def resize_lidar2img(lidar2img: torch.Tensor, sx: float, sy: float) -> torch.Tensor:
    """``[..., 4, 4]`` lidar2img of the raw image -> that of the image resized by (sx, sy)."""
    scale = torch.eye(4, dtype=lidar2img.dtype)
    scale[0, 0], scale[1, 1] = sx, sy
    return scale @ lidar2img  # [..., 4, 4]


# ------------------------------------------------------------------------------ photometric


def rgb_to_hsv(img: torch.Tensor) -> torch.Tensor:
    """[3, H, W] RGB in [0, 1] -> HSV with H in degrees [0, 360), S, V in [0, 1]."""
    r, g, b = img.unbind(0)
    maxc, argmax = img.max(0)
    minc = img.amin(0)
    delta = maxc - minc
    inv = 1.0 / delta.clamp_min(1e-12)
    h = torch.stack([((g - b) * inv) % 6, (b - r) * inv + 2, (r - g) * inv + 4])  # [3, H, W] per argmax
    h = h.gather(0, argmax[None])[0] * 60.0
    h = torch.where(delta > 0, h, torch.zeros_like(h))
    s = delta / maxc.clamp_min(1e-12)
    return torch.stack([h, s, maxc])  # [3, H, W]


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv` (channel n: ``v - v*s*clamp(min(k, 4-k), 0, 1)``, k = (n + h/60) % 6)."""
    h, s, v = hsv.unbind(0)
    n = torch.tensor([5.0, 3.0, 1.0], dtype=hsv.dtype).view(3, 1, 1)
    k = (n + h[None] / 60.0) % 6  # [3, H, W]
    return v[None] - (v * s)[None] * torch.minimum(k, 4 - k).clamp(0, 1)  # [3, H, W]


def adjust_saturation(img: torch.Tensor, alpha: float) -> torch.Tensor:
    """HSV ``S *= alpha`` (clamped to 1) without the HSV round trip; ``[3, H, W]`` any scale.

    With hue and V fixed, each channel is ``c = V - V*S*f_c``, so scaling S gives
    ``c' = V - (V - c) * min(alpha, 1/S)``.
    """
    v = img.amax(0, keepdim=True)  # [1, H, W]
    span = (v - img.amin(0, keepdim=True)).clamp_min(1e-12)
    return v - (v - img) * torch.minimum(torch.full_like(v, alpha), v / span)


def photometric_distortion(
    img: torch.Tensor,
    rng: np.random.Generator,
    brightness_delta: float = 32.0,
    contrast_range: tuple[float, float] = (0.5, 1.5),
    saturation_range: tuple[float, float] = (0.5, 1.5),
    hue_delta: float = 18.0,
    use_cv2: bool = True,
) -> torch.Tensor:
    """mmdet3d ``PhotoMetricDistortionMultiViewImage`` on one ``[3, H, W]`` float image in [0, 255].

    Each step fires with probability 0.5: brightness (+U(-32, 32)), contrast (x U(0.5, 1.5), before or
    after the HSV steps), saturation (S x U(0.5, 1.5)), hue (H + U(-18, 18) degrees). The result is
    clamped to [0, 255] (the official float pipeline does not clamp; clamping keeps HSV well defined).
    The HSV steps use OpenCV (as mmcv does; a nuscenes-devkit dependency) when ``use_cv2`` and it
    imports, else the pure-torch twins :func:`adjust_saturation` / :func:`rgb_to_hsv`.
    The official random channel swap is not applied.
    """
    assert img.dim() == 3 and img.shape[0] == 3, img.shape
    img = img.clone()
    if rng.integers(2):
        img += float(rng.uniform(-brightness_delta, brightness_delta))
    contrast_first = bool(rng.integers(2))
    if contrast_first and rng.integers(2):
        img *= float(rng.uniform(*contrast_range))
    img = img.clamp_(0, 255)
    sat = float(rng.uniform(*saturation_range)) if rng.integers(2) else None
    hue = float(rng.uniform(-hue_delta, hue_delta)) if rng.integers(2) else None
    cv2 = _cv2() if use_cv2 else None
    if cv2 is not None and (sat is not None or hue is not None):
        hwc = np.ascontiguousarray(img.permute(1, 2, 0).numpy(), dtype=np.float32)  # [H, W, 3]
        hsv = cv2.cvtColor(hwc / 255.0, cv2.COLOR_RGB2HSV)  # H in degrees, S/V in [0, 1]
        if sat is not None:
            hsv[..., 1] = np.clip(hsv[..., 1] * sat, 0.0, 1.0)
        if hue is not None:
            hsv[..., 0] = (hsv[..., 0] + hue) % 360.0
        img = torch.from_numpy(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255.0).permute(2, 0, 1)  # [3, H, W]
    else:
        if sat is not None:
            img = adjust_saturation(img, sat)
        if hue is not None:
            hsv = rgb_to_hsv(img / 255.0)  # [3, H, W]
            hsv[0] = (hsv[0] + hue) % 360.0
            img = hsv_to_rgb(hsv) * 255.0
    if not contrast_first and rng.integers(2):
        img *= float(rng.uniform(*contrast_range))
    return img.clamp(0, 255)


def _cv2():  # -> the cv2 module or None
    try:
        import cv2

        cv2.setNumThreads(1)  # DataLoader workers are the parallelism
        return cv2
    except ImportError:
        return None


# ------------------------------------------------------------------------------ normalise, pad


def normalize(
    img: torch.Tensor, mean: Sequence[float], std: Sequence[float], to_rgb: bool = True
) -> torch.Tensor:
    """[..., 3, H, W] RGB float in [0, 255] -> (x - mean) / std in RGB (``to_rgb``) or BGR order."""
    if not to_rgb:
        img = img.flip(-3)  # RGB -> BGR (official caffe-style configs)
    m = torch.tensor(mean, dtype=img.dtype).view(3, 1, 1)
    s = torch.tensor(std, dtype=img.dtype).view(3, 1, 1)
    return (img - m) / s


def pad_to_divisor(img: torch.Tensor, divisor: int) -> torch.Tensor:
    """Zero-pad ``[..., H, W]`` at the bottom/right to multiples of ``divisor`` (after normalisation)."""
    if divisor <= 1:
        return img
    h, w = img.shape[-2:]
    ph, pw = (-h) % divisor, (-w) % divisor
    return F.pad(img, (0, pw, 0, ph)) if (ph or pw) else img


def padded_size(h: int, w: int, divisor: int) -> tuple[int, int]:
    if divisor <= 1:
        return h, w
    return h + (-h) % divisor, w + (-w) % divisor


# ------------------------------------------------------------------------------ ground truth


def filter_gt(
    boxes: np.ndarray,
    names: Sequence[str],
    valid: Sequence[bool],
    classes: Sequence[str],
    point_cloud_range: Sequence[float],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep valid boxes of a detection class whose centre lies inside the BEV range.

    ``boxes [M, 9]`` (ours). The range test is strict on x/y like mmdet3d's ``ObjectRangeFilter``
    (``in_range_bev``); labels are indices into ``classes``. Returns ``(boxes [K, 9] float32,
    labels [K] int64)``.
    """
    labels = np.array([classes.index(n) if n in classes else -1 for n in names], dtype=np.int64)
    return select_gt(boxes, labels, valid, point_cloud_range)


def select_gt(
    boxes: np.ndarray, labels: np.ndarray, valid: np.ndarray, point_cloud_range: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`filter_gt` with labels already mapped (``-1`` = not a detection class)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 9)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    x0, y0, _, x1, y1, _ = point_cloud_range
    keep = (labels >= 0) & np.asarray(valid, dtype=bool).reshape(-1)
    keep &= (b[:, 0] > x0) & (b[:, 0] < x1) & (b[:, 1] > y0) & (b[:, 1] < y1)
    return torch.from_numpy(b[keep]).float(), torch.from_numpy(labels[keep])
