"""Transforms: HSV round trip, photometric ranges, resize of lidar2img, padding, GT filtering, decoding."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from bevforge.data.image_io import ImageDecodeError, MissingImageError, decode_jpeg_bytes, read_image
from bevforge.data.transforms import (
    adjust_saturation,
    filter_gt,
    hsv_to_rgb,
    normalize,
    pad_to_divisor,
    photometric_distortion,
    resize_lidar2img,
    rgb_to_hsv,
)


def test_hsv_round_trip_matches_colorsys():
    import colorsys

    torch.manual_seed(0)
    img = torch.rand(3, 5, 7, dtype=torch.float64)
    hsv = rgb_to_hsv(img)
    r, g, b = img[:, 2, 3].tolist()
    h, s, v = colorsys.rgb_to_hsv(r, g, b)
    assert hsv[:, 2, 3].tolist() == pytest.approx([h * 360, s, v], abs=1e-9)
    assert torch.allclose(hsv_to_rgb(hsv), img, atol=1e-9)


def test_photometric_keeps_range_and_changes_image():
    torch.manual_seed(0)
    img = torch.rand(3, 8, 8) * 255
    outs = [photometric_distortion(img, np.random.default_rng(s)) for s in range(8)]
    assert all(o.shape == img.shape and o.min() >= 0 and o.max() <= 255 for o in outs)
    assert any(not torch.allclose(o, img) for o in outs)


def test_normalize_bgr_and_pad():
    img = torch.zeros(3, 5, 6)
    img[0] = 255.0  # pure red
    rgb = normalize(img, (1.0, 2.0, 3.0), (1.0, 1.0, 1.0), to_rgb=True)
    bgr = normalize(img, (1.0, 2.0, 3.0), (1.0, 1.0, 1.0), to_rgb=False)
    assert rgb[0, 0, 0] == 254 and bgr[2, 0, 0] == 252 and bgr[0, 0, 0] == -1
    padded = pad_to_divisor(rgb, 4)
    assert (
        padded.shape == (3, 8, 8) and torch.equal(padded[:, :5, :6], rgb) and padded[:, 5:].abs().sum() == 0
    )


def test_resize_lidar2img_scales_pixels():
    torch.manual_seed(0)
    l2i = torch.eye(4, dtype=torch.float64)
    l2i[:3, :3] = (
        torch.tensor([[100.0, 0, 50], [0, 100, 30], [0, 0, 1]], dtype=torch.float64)
        @ torch.randn(3, 3).double()
    )
    p = torch.tensor([1.0, 2.0, 10.0, 1.0], dtype=torch.float64)
    raw = l2i @ p
    new = resize_lidar2img(l2i, 0.5, 0.25) @ p
    assert torch.allclose(new[0] / new[2], 0.5 * raw[0] / raw[2])
    assert torch.allclose(new[1] / new[2], 0.25 * raw[1] / raw[2])


def test_filter_gt_range_class_valid():
    boxes = np.zeros((4, 9))
    boxes[:, 3:6] = 1.0
    boxes[1, 0] = 60.0  # out of range
    names = ["car", "car", "animal", "pedestrian"]
    valid = [True, True, True, False]
    b, labels = filter_gt(boxes, names, valid, ("car", "pedestrian"), (-51.2, -51.2, -5, 51.2, 51.2, 3))
    assert b.shape == (1, 9) and labels.tolist() == [0]


def _jpeg(w: int, h: int) -> bytes:
    arr = np.zeros((h, w, 3), dtype=np.uint8)
    arr[:, : w // 2, 0] = 255  # left half red
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def test_decode_scale_on_decode_and_resize(tmp_path):
    data = _jpeg(64, 32)
    half = decode_jpeg_bytes(data, (32, 16))
    odd = decode_jpeg_bytes(data, (20, 11))
    assert half.shape == (16, 32, 3) and odd.shape == (11, 20, 3)
    assert half[8, 4, 0] > 200 and half[8, 28, 0] < 50  # left stays red, right stays black
    (tmp_path / "a.jpg").write_bytes(data)
    assert read_image(tmp_path / "a.jpg").shape == (32, 64, 3)


def test_decode_errors_name_the_file(tmp_path):
    with pytest.raises(MissingImageError, match="nope.jpg.*not found"):
        read_image(tmp_path / "nope.jpg")
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(ImageDecodeError, match="bad.jpg.*corrupt"):
        read_image(bad, (8, 8))


def test_adjust_saturation_matches_hsv():
    torch.manual_seed(0)
    img = torch.rand(3, 6, 5, dtype=torch.float64)
    for alpha in (0.5, 1.3, 4.0):
        hsv = rgb_to_hsv(img)
        hsv[1] = (hsv[1] * alpha).clamp(0, 1)
        assert torch.allclose(adjust_saturation(img, alpha), hsv_to_rgb(hsv), atol=1e-9)


def test_photometric_cv2_matches_torch_twin():
    torch.manual_seed(0)
    img = torch.rand(3, 9, 11) * 255
    for seed in range(12):
        a = photometric_distortion(img, np.random.default_rng(seed), use_cv2=True)
        b = photometric_distortion(img, np.random.default_rng(seed), use_cv2=False)
        assert torch.allclose(a.float(), b.float(), atol=0.05), seed
