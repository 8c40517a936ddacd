"""Triton kernel: a uint8 image batch finished in one pass (photometric distortion, BGR, normalise, zero pad).

Shape letters: M images, H/W padded image size, h/w the valid (un-padded) region.

The reference is :func:`bevforge.data.device_images.finish_images`' torch path
(:func:`bevforge.data.transforms.apply_photometric`, then ``(x - mean) / std`` and the zeroing): some fifty
elementwise passes over a float copy of the batch (the HSV round trip is computed for every image and
selected). Every step is per pixel, so one program here reads a block of pixels of one image (its three
channels, uint8), applies that image's draw in fp32 registers and writes the normalised fp32 pixels once:
one uint8 read and one fp32 write per value. Same formulas as the reference; the floor-modulo of the hue is
``a - floor(a / b) * b`` (torch computes it from ``fmod``), so values agree to fp32 rounding (tests:
1e-4 after normalisation). Forward only (images carry no gradient).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from bevforge.ops.dispatch import launch

BLOCK = 1024


@triton.jit
def _floor_mod(a, b):
    return a - tl.floor(a / b) * b


@triton.jit
def _clamp255(x):
    return tl.minimum(tl.maximum(x, 0.0), 255.0)


@triton.jit
def _hsv_channel(n, hh, v, vs):
    """One RGB channel in [0, 255] of HSV (``hh`` degrees, ``v``, ``vs = v * s``), channel offset ``n`` (5 R,
    3 G, 1 B): ``v - v*s*clamp(min(k, 4 - k), 0, 1) with k = (n + h/60) % 6`` (data/transforms.hsv_to_rgb)."""
    k = _floor_mod(n + hh / 60.0, 6.0)
    return (v - vs * tl.minimum(tl.maximum(tl.minimum(k, 4.0 - k), 0.0), 1.0)) * 255.0


@triton.jit
def _finish_kernel(
    img_ptr, params_ptr, keep_ptr, out_ptr,
    HW, W, h_valid, w_valid,
    mean0, mean1, mean2, std0, std1, std2,
    HAS_PHOTO: tl.constexpr, HAS_KEEP: tl.constexpr, BGR: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    """Grid ``(M, cdiv(H * W, BLOCK))``: image m, a block of its flat pixels."""
    m = tl.program_id(0)
    pix = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)  # [BLOCK] flat pixel
    inb = pix < HW
    valid = inb & (pix // W < h_valid) & (pix % W < w_valid)
    if HAS_KEEP:
        valid = valid & (tl.load(keep_ptr + m) != 0)
    src = img_ptr + m * 3 * HW + pix
    r = tl.load(src, mask=inb, other=0).to(tl.float32)
    g = tl.load(src + HW, mask=inb, other=0).to(tl.float32)
    b = tl.load(src + 2 * HW, mask=inb, other=0).to(tl.float32)
    if HAS_PHOTO:
        p = params_ptr + m * 6
        brightness, contrast_before = tl.load(p), tl.load(p + 1)
        sat, hue, hue_on, contrast_after = tl.load(p + 2), tl.load(p + 3), tl.load(p + 4), tl.load(p + 5)
        r = _clamp255((r + brightness) * contrast_before)
        g = _clamp255((g + brightness) * contrast_before)
        b = _clamp255((b + brightness) * contrast_before)
        # saturation: c' = V - (V - c) * min(alpha, V / span) (data/transforms.adjust_saturation)
        v = tl.maximum(tl.maximum(r, g), b)
        span = tl.maximum(v - tl.minimum(tl.minimum(r, g), b), 1e-12)
        f = tl.minimum(sat, v / span)
        sat_on = sat > 0
        r = tl.where(sat_on, v - (v - r) * f, r)
        g = tl.where(sat_on, v - (v - g) * f, g)
        b = tl.where(sat_on, v - (v - b) * f, b)
        # hue: RGB -> HSV (data/transforms.rgb_to_hsv), H += hue, HSV -> RGB (hsv_to_rgb)
        rn, gn, bn = r / 255.0, g / 255.0, b / 255.0
        maxc = tl.maximum(tl.maximum(rn, gn), bn)
        delta = maxc - tl.minimum(tl.minimum(rn, gn), bn)
        inv = 1.0 / tl.maximum(delta, 1e-12)
        h_r = _floor_mod((gn - bn) * inv, 6.0)
        h_g = (bn - rn) * inv + 2.0
        h_b = (rn - gn) * inv + 4.0
        hh = tl.where(maxc == rn, h_r, tl.where(maxc == gn, h_g, h_b)) * 60.0  # first maximum, as torch.max
        hh = tl.where(delta > 0, hh, 0.0)
        s = delta / tl.maximum(maxc, 1e-12)
        hh = _floor_mod(hh + hue, 360.0)
        vs = maxc * s
        hue_r, hue_g, hue_b = (
            _hsv_channel(5.0, hh, maxc, vs),
            _hsv_channel(3.0, hh, maxc, vs),
            _hsv_channel(1.0, hh, maxc, vs),
        )
        r = tl.where(hue_on > 0, hue_r, r)
        g = tl.where(hue_on > 0, hue_g, g)
        b = tl.where(hue_on > 0, hue_b, b)
        r, g, b = _clamp255(r * contrast_after), _clamp255(g * contrast_after), _clamp255(b * contrast_after)
    if BGR:
        c0, c2 = b, r
    else:
        c0, c2 = r, b
    dst = out_ptr + m * 3 * HW + pix
    tl.store(dst, tl.where(valid, (c0 - mean0) / std0, 0.0), mask=inb)
    tl.store(dst + HW, tl.where(valid, (g - mean1) / std1, 0.0), mask=inb)
    tl.store(dst + 2 * HW, tl.where(valid, (c2 - mean2) / std2, 0.0), mask=inb)


def finish_images_kernel(
    images: torch.Tensor,
    params: torch.Tensor | None,
    keep: torch.Tensor | None,
    valid_hw: tuple[int, int],
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    bgr: bool,
) -> torch.Tensor:
    """``images [M, 3, H, W]`` uint8 (contiguous), ``params [M, 6]`` fp32 photometric draws or None,
    ``keep [M]`` bool (False: a zero image) or None -> ``[M, 3, H, W]`` fp32 normalised, zero outside
    ``valid_hw``; the channels in BGR order when ``bgr`` (``mean``/``std`` in the output order)."""
    assert images.dtype == torch.uint8 and images.dim() == 4 and images.shape[1] == 3, images.shape
    images = images.contiguous()
    M, _, H, W = images.shape
    out = torch.empty(images.shape, dtype=torch.float32, device=images.device)
    p = params.to(torch.float32).contiguous() if params is not None else out  # never read without HAS_PHOTO
    k = keep.to(torch.uint8).contiguous() if keep is not None else images  # never read without HAS_KEEP
    grid = (M, triton.cdiv(H * W, BLOCK))
    launch("finish-images", _finish_kernel, grid,
        images, p, k, out,
        H * W, W, valid_hw[0], valid_hw[1],
        float(mean[0]), float(mean[1]), float(mean[2]), float(std[0]), float(std[1]), float(std[2]),
        HAS_PHOTO=params is not None, HAS_KEEP=keep is not None, BGR=bgr, BLOCK=BLOCK,
    )  # fmt: skip
    return out
