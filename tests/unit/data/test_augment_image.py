"""Image-space augmentation: the warped image and the folded lidar2img agree (a dot lands where projected)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bevforge.config import ConfigError, DataConfig
from bevforge.data.augment_image import (
    ImageAug,
    ImageAugSpec,
    decode_wh,
    eval_input_geometry,
    image_aug_matrix,
    lift_affine,
    sample_image_aug,
    source_scale,
    warp_image,
)

RAW_WH = (160, 90)


def _lidar2img() -> np.ndarray:
    """A pinhole camera (f = 100 px, principal point at the raw image centre) looking along lidar +x."""
    k = np.eye(4)
    k[:3, :3] = [[100.0, 0.0, 80.0], [0.0, 100.0, 45.0], [0.0, 0.0, 1.0]]
    lidar2cam = np.eye(4)
    lidar2cam[:3, :3] = [[0.0, -1.0, 0.0], [0.0, 0.0, -1.0], [1.0, 0.0, 0.0]]  # cam z = lidar x
    lidar2cam[:3, 3] = [0.1, 0.2, -0.3]
    return k @ lidar2cam


def _project(lidar2img: np.ndarray, point: np.ndarray) -> np.ndarray:
    p = lidar2img @ np.append(point, 1.0)
    return p[:2] / p[2]


def _dot_image(top_left: tuple[int, int], size: int, wh: tuple[int, int]) -> torch.Tensor:
    """``[3, H, W]`` uint8: black, a white ``size`` x ``size`` dot from pixel ``top_left = (col, row)``."""
    img = torch.zeros(3, wh[1], wh[0], dtype=torch.uint8)
    img[:, top_left[1] : top_left[1] + size, top_left[0] : top_left[0] + size] = 255
    return img


def _centroid(img: torch.Tensor) -> np.ndarray:
    """Intensity centroid (u, v) in continuous pixel coordinates (pixel centres at +0.5)."""
    w = img[0].double()
    v, u = torch.meshgrid(torch.arange(w.shape[0]) + 0.5, torch.arange(w.shape[1]) + 0.5, indexing="ij")
    return np.array([(w * u).sum() / w.sum(), (w * v).sum() / w.sum()])


def test_dot_lands_where_the_augmented_lidar2img_projects():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    lidar2img = _lidar2img()
    pix = np.array([101.0, 61.0])  # centroid of the dots below (raw pixels)
    point = np.linalg.inv(lidar2img) @ np.array([pix[0] * 12.0, pix[1] * 12.0, 12.0, 1.0])  # at 12 m depth
    assert np.allclose(_project(lidar2img, point[:3]), pix)
    spec = ImageAugSpec(input_hw=(48, 96), random=True, rot_lim_deg=(-20.0, 20.0), flip=True)
    src_raw = _dot_image((99, 59), 4, RAW_WH)  # centroid (101, 61)
    src_half = _dot_image((48, 28), 5, (80, 45))  # a half-size decode: centroid (50.5, 30.5) -> raw (101, 61)
    seen_flip = seen_rot = False
    for _ in range(8):
        aug = sample_image_aug(RAW_WH, spec, rng)
        seen_flip |= aug.flip
        seen_rot |= abs(aug.rot_deg) > 5
        out_from_raw = image_aug_matrix(aug, spec.input_hw)
        expected = _project(lift_affine(out_from_raw) @ lidar2img, point[:3])
        # from the raw-size source and from a half-size source (DCT decode): one warp each
        for src, src_wh in ((src_raw, RAW_WH), (src_half, (80, 45))):
            out_from_src = out_from_raw @ np.linalg.inv(source_scale(src_wh, RAW_WH))
            warped = warp_image(src, out_from_src, spec.input_hw)
            assert warped.shape == (3, 48, 96)
            assert np.abs(_centroid(warped) - expected).max() < 0.25, (aug, _centroid(warped), expected)
    assert seen_flip and seen_rot


def test_flip_twice_is_identity_and_rotation_keeps_the_centre():
    torch.manual_seed(0)
    hw = (6, 10)
    flip = image_aug_matrix(ImageAug(resize=1.0, crop_xy=(0, 0), flip=True, rot_deg=0.0), hw)
    assert np.allclose(flip @ flip, np.eye(3))
    img = torch.randint(0, 256, (3, *hw), dtype=torch.uint8)
    assert torch.allclose(
        warp_image(img, flip, hw), img.flip(-1).float(), atol=1e-3
    )  # pixel centres map exactly
    assert torch.allclose(warp_image(warp_image(img, flip, hw), flip, hw), img.float(), atol=1e-3)
    rot = image_aug_matrix(ImageAug(resize=1.0, crop_xy=(0, 0), flip=False, rot_deg=33.0), hw)
    assert np.allclose(rot @ [5.0, 3.0, 1.0], [5.0, 3.0, 1.0])  # about the crop centre
    # PIL sense: counter-clockwise on screen -> a point right of the centre moves up (smaller v)
    assert (rot @ [8.0, 3.0, 1.0])[1] < 3.0


def test_test_branch_is_deterministic_and_bottom_anchored():
    spec = ImageAugSpec(input_hw=(256, 704), random=False)
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    a = sample_image_aug((1600, 900), spec, rng)
    assert rng.bit_generator.state == state  # no draws in the test branch
    assert a == sample_image_aug((1600, 900), spec, None)
    assert a.resize == pytest.approx(0.44) and not a.flip and a.rot_deg == 0.0
    assert a.crop_xy == (0, 396 - 256)  # bottom 256 rows of the 704x396 resized image
    train = ImageAugSpec(input_hw=(256, 704), random=True)
    draws = [sample_image_aug((1600, 900), train, np.random.default_rng(s)) for s in range(20)]
    assert all(0.38 - 1e-9 <= d.resize <= 0.55 + 1e-9 for d in draws)
    assert all(d.crop_xy[1] == int(900 * d.resize) - 256 for d in draws)  # crop_h_lim (0, 0): bottom
    assert len({d.flip for d in draws}) == 2 and len({d.crop_xy for d in draws}) > 1


def test_decode_size_is_the_smallest_libjpeg_scale_not_below_the_resize():
    assert decode_wh((1600, 900), 0.44) == (800, 450)  # 4/8
    assert decode_wh((1600, 900), 0.5) == (800, 450)
    assert decode_wh((1600, 900), 0.51) == (1200, 675)  # 6/8: 5/8 would be 562.5 rows
    assert decode_wh((1600, 900), 1.3) == (1600, 900)
    assert decode_wh((1600, 904), 0.1) == (200, 113)  # 1/8
    assert decode_wh((160, 90), 0.05) == (80, 45)  # 90 * m / 8 whole only for m = 4, 8


@pytest.mark.parametrize(
    "field,value,match",
    [
        ("input_size", (0, 704), "data.input_size"),
        ("input_size", (256,), "data.input_size"),
        ("resize_lim", (0.1, -0.1), "data.resize_lim"),
        ("crop_h_lim", (0.0, 1.0), "data.crop_h_lim"),
        ("rot_lim_deg", (5.0, -5.0), "data.rot_lim_deg"),
    ],
)
def test_nonsense_config_is_a_config_error(field, value, match):
    d = DataConfig()
    setattr(d, field, value)
    with pytest.raises(ConfigError, match=match):
        ImageAugSpec.from_config(d, train=True)


def test_config_defaults_mean_no_augmentation_and_resize_range_is_checked():
    d = DataConfig()
    assert ImageAugSpec.from_config(d, train=True) is None
    d.input_size, d.img_aug = (256, 704), True
    assert ImageAugSpec.from_config(d, train=False).random is False  # evaluation: test branch
    spec = ImageAugSpec.from_config(d, train=True)
    assert spec.random and spec.input_hw == (256, 704)
    spec.check_source((1600, 900), "x")
    d.resize_lim = (-0.5, 0.1)
    with pytest.raises(ConfigError, match="data.resize_lim"):
        ImageAugSpec.from_config(d, train=True).check_source((1600, 900), "infos camera image")


def test_eval_input_geometry_matches_both_paths():
    d = DataConfig()
    hw, post = eval_input_geometry(d, (1600, 900))
    assert hw == (450, 800) and np.allclose(post, np.diag([0.5, 0.5, 1.0, 1.0]))
    d.input_size = (256, 704)
    hw, post = eval_input_geometry(d, (1600, 900))
    aug = sample_image_aug((1600, 900), ImageAugSpec(input_hw=(256, 704), random=False), None)
    assert hw == (256, 704) and np.allclose(post, lift_affine(image_aug_matrix(aug, hw)))
    assert np.allclose(post @ [800.0, 900.0, 1.0, 1.0], [352.0, 256.0, 1.0, 1.0])  # bottom centre stays
