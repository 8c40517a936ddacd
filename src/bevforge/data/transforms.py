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

from bevforge.ops.constants import device_constant


def resize_lidar2img(lidar2img: torch.Tensor, sx: float, sy: float) -> torch.Tensor:
    """``[..., 4, 4]`` lidar2img of the raw image -> that of the image resized by (sx, sy)."""
    scale = torch.eye(4, dtype=lidar2img.dtype)
    scale[0, 0], scale[1, 1] = sx, sy
    return scale @ lidar2img  # [..., 4, 4]


# ------------------------------------------------------------------------------ photometric


def rgb_to_hsv(img: torch.Tensor) -> torch.Tensor:
    """``[..., 3, H, W]`` RGB in [0, 1] -> HSV with H in degrees [0, 360), S, V in [0, 1]."""
    r, g, b = img.unbind(-3)
    maxc, argmax = img.max(-3)
    minc = img.amin(-3)
    delta = maxc - minc
    inv = 1.0 / delta.clamp_min(1e-12)
    h = torch.stack([((g - b) * inv) % 6, (b - r) * inv + 2, (r - g) * inv + 4], dim=-3)  # per argmax
    h = h.gather(-3, argmax.unsqueeze(-3)).squeeze(-3) * 60.0
    h = torch.where(delta > 0, h, torch.zeros_like(h))
    s = delta / maxc.clamp_min(1e-12)
    return torch.stack([h, s, maxc], dim=-3)  # [..., 3, H, W]


def hsv_to_rgb(hsv: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hsv` (channel n: ``v - v*s*clamp(min(k, 4-k), 0, 1)``, k = (n + h/60) % 6)."""
    h, s, v = (c.unsqueeze(-3) for c in hsv.unbind(-3))  # [..., 1, H, W] each
    n = device_constant((5.0, 3.0, 1.0), hsv.dtype, hsv.device).view(3, 1, 1)  # [3, 1, 1]
    k = (n + h / 60.0) % 6  # [..., 3, H, W]
    return v - (v * s) * torch.minimum(k, 4 - k).clamp(0, 1)  # [..., 3, H, W]


def adjust_saturation(img: torch.Tensor, alpha: float | torch.Tensor) -> torch.Tensor:
    """HSV ``S *= alpha`` (clamped to 1) without the HSV round trip; ``[..., 3, H, W]`` any scale
    (``alpha`` a float or a tensor broadcasting against ``[..., 1, H, W]``).

    With hue and V fixed, each channel is ``c = V - V*S*f_c``, so scaling S gives
    ``c' = V - (V - c) * min(alpha, 1/S)``.
    """
    v = img.amax(-3, keepdim=True)  # [..., 1, H, W]
    span = (v - img.amin(-3, keepdim=True)).clamp_min(1e-12)
    alpha_t = alpha.expand_as(v) if isinstance(alpha, torch.Tensor) else torch.full_like(v, alpha)
    return v - (v - img) * torch.minimum(alpha_t, v / span)


#: what one photometric draw holds (:func:`draw_photometric`), in this order; the "off" value of each
#: step leaves the image bit-for-bit unchanged (+0, x1) or is a flag
PHOTOMETRIC_PARAMS = ("brightness", "contrast_before", "saturation", "hue_deg", "hue_on", "contrast_after")
#: the draw of an image without photometric distortion
PHOTOMETRIC_IDENTITY = (0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def draw_photometric(
    rng: np.random.Generator,
    brightness_delta: float = 32.0,
    contrast_range: tuple[float, float] = (0.5, 1.5),
    saturation_range: tuple[float, float] = (0.5, 1.5),
    hue_delta: float = 18.0,
) -> np.ndarray:
    """One image's random photometric distortion (mmdet3d ``PhotoMetricDistortionMultiViewImage``) as
    ``[6]`` float32 :data:`PHOTOMETRIC_PARAMS`: brightness ``+U(-32, 32)`` (0 = off), contrast ``x U(0.5,
    1.5)`` before or after the HSV steps (1 = off), saturation ``S x U(0.5, 1.5)`` (0 = off), hue ``+ U(-18,
    18)`` degrees with its on flag. Each step fires with probability 0.5; the draws are those of
    :func:`photometric_distortion` (the same ``rng`` calls in the same order)."""
    p = np.array(PHOTOMETRIC_IDENTITY, dtype=np.float32)
    if rng.integers(2):
        p[0] = rng.uniform(-brightness_delta, brightness_delta)
    contrast_first = bool(rng.integers(2))
    if contrast_first and rng.integers(2):
        p[1] = rng.uniform(*contrast_range)
    if rng.integers(2):
        p[2] = rng.uniform(*saturation_range)
    if rng.integers(2):
        p[3], p[4] = rng.uniform(-hue_delta, hue_delta), 1.0
    if not contrast_first and rng.integers(2):
        p[5] = rng.uniform(*contrast_range)
    return p


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

    The random draw is :func:`draw_photometric`'s. The result is clamped to [0, 255] (the official float
    pipeline does not clamp; clamping keeps HSV well defined). The HSV steps use OpenCV (as mmcv does; a
    nuscenes-devkit dependency) when ``use_cv2`` and it imports, else the pure-torch twins
    :func:`adjust_saturation` / :func:`rgb_to_hsv` (those of :func:`apply_photometric`, the batched
    on-device version). The official random channel swap is not applied.
    """
    assert img.dim() == 3 and img.shape[0] == 3, img.shape
    brightness, contrast_before, sat, hue, hue_on, contrast_after = (
        float(v) for v in draw_photometric(rng, brightness_delta, contrast_range, saturation_range, hue_delta)
    )
    img = img.clone()
    if brightness != 0.0:
        img += brightness
    if contrast_before != 1.0:
        img *= contrast_before
    img = img.clamp_(0, 255)
    cv2 = _cv2() if use_cv2 else None
    if cv2 is not None and (sat > 0 or hue_on):
        hwc = np.ascontiguousarray(img.permute(1, 2, 0).numpy(), dtype=np.float32)  # [H, W, 3]
        hsv = cv2.cvtColor(hwc / 255.0, cv2.COLOR_RGB2HSV)  # H in degrees, S/V in [0, 1]
        if sat > 0:
            hsv[..., 1] = np.clip(hsv[..., 1] * sat, 0.0, 1.0)
        if hue_on:
            hsv[..., 0] = (hsv[..., 0] + hue) % 360.0
        img = torch.from_numpy(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255.0).permute(2, 0, 1)  # [3, H, W]
    else:
        if sat > 0:
            img = adjust_saturation(img, sat)
        if hue_on:
            img = _shift_hue(img, hue)
    if contrast_after != 1.0:
        img *= contrast_after
    return img.clamp(0, 255)


def _shift_hue(img: torch.Tensor, hue_deg: float | torch.Tensor) -> torch.Tensor:
    """``[..., 3, H, W]`` in [0, 255], hue rotated by ``hue_deg`` (float, or a tensor broadcasting against
    ``[..., H, W]``)."""
    h, s, v = rgb_to_hsv(img / 255.0).unbind(-3)  # [..., H, W] each
    return hsv_to_rgb(torch.stack(((h + hue_deg) % 360.0, s, v), dim=-3)) * 255.0


def apply_photometric(img: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """Batched :func:`photometric_distortion` (its pure-torch steps) on any device, no host sync:
    ``img [M, 3, H, W]`` float in [0, 255], ``params [M, 6]`` (:func:`draw_photometric` rows) ->
    ``[M, 3, H, W]``. A step that is off leaves its image bit-for-bit as the single-image function does
    (+0, x1; the HSV steps are computed for every image and selected per image)."""
    assert img.dim() == 4 and img.shape[1] == 3, img.shape
    assert params.shape == (img.shape[0], len(PHOTOMETRIC_PARAMS)), (img.shape, params.shape)
    p = params.to(img.dtype)[:, :, None, None, None].unbind(1)  # 6 x [M, 1, 1, 1]
    brightness, contrast_before, sat, hue, hue_on, contrast_after = p
    img = ((img + brightness) * contrast_before).clamp(0, 255)
    img = torch.where(sat > 0, adjust_saturation(img, sat), img)
    img = torch.where(hue_on > 0, _shift_hue(img, hue[:, 0]), img)
    return (img * contrast_after).clamp(0, 255)


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
    """[..., 3, H, W] RGB float in [0, 255] -> (x - mean) / std in RGB (``to_rgb``) or BGR order, on
    ``img``'s device (``mean``/``std`` in the output channel order)."""
    if not to_rgb:
        img = img.flip(-3)  # RGB -> BGR (official caffe-style configs)
    m = device_constant(tuple(mean), img.dtype, img.device).view(3, 1, 1)
    s = device_constant(tuple(std), img.dtype, img.device).view(3, 1, 1)
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
