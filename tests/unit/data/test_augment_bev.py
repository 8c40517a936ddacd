"""BEV augmentation (BDA): boxes, calibration and seg targets move together; flips are involutions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bevforge.config import ConfigError, DataConfig
from bevforge.data.augment_bev import BDA, BDASpec, bda_boxes, bda_calibration, bda_seg, sample_bda
from bevforge.structures.boxes import box_corners

PCR = (-4.0, -4.0, -5.0, 4.0, 4.0, 3.0)


def _boxes(m: int = 6, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    b = np.concatenate(
        [
            rng.uniform(-30, 30, (m, 2)),
            rng.uniform(-2, 1, (m, 1)),
            rng.uniform(0.5, 5, (m, 3)),
            rng.uniform(-math.pi, math.pi, (m, 1)),
            rng.uniform(-8, 8, (m, 2)),
        ],
        axis=1,
    )
    return b


def _same_corner_sets(a: torch.Tensor, b: torch.Tensor) -> bool:
    """[M, 8, 3] x2: every corner of a box has a twin in the other (flips reorder corners)."""
    d = (a[:, :, None, :] - b[:, None, :, :]).norm(dim=-1)  # [M, 8, 8]
    return bool((d.amin(-1) < 1e-6).all() and (d.amin(-2) < 1e-6).all())


@pytest.mark.parametrize(
    "bda",
    [
        BDA(rot_rad=0.7, scale=1.0),
        BDA(scale=1.05),
        BDA(flip_x=True),
        BDA(flip_y=True),
        BDA(rot_rad=-0.35, scale=0.95, flip_x=True, flip_y=True),
    ],
)
def test_corners_of_transformed_boxes_are_transformed_corners(bda):
    boxes = _boxes()
    m = torch.from_numpy(bda.matrix())  # [4, 4]
    corners = box_corners(torch.from_numpy(boxes))  # [M, 8, 3]
    moved = corners @ m[:3, :3].T + m[:3, 3]
    assert _same_corner_sets(box_corners(torch.from_numpy(bda_boxes(boxes, bda))), moved)
    # velocity: the displacement over 1 s of the centre moves like a point (frame scaled -> velocity scaled)
    out = bda_boxes(boxes, bda)
    step = np.concatenate([boxes[:, :2] + boxes[:, 7:9], boxes[:, 2:3]], axis=1) @ m[:3, :3].numpy().T
    assert np.allclose(out[:, :2] + out[:, 7:9], step[:, :2])


def test_yaw_conventions_and_flips_twice_are_identity():
    boxes = _boxes()
    yaw = boxes[:, 6]
    wrap = lambda a: (a + math.pi) % (2 * math.pi) - math.pi  # noqa: E731
    assert np.allclose(wrap(bda_boxes(boxes, BDA(flip_y=True))[:, 6] + yaw), 0.0, atol=1e-9)  # -yaw
    assert np.allclose(wrap(bda_boxes(boxes, BDA(flip_x=True))[:, 6] - (math.pi - yaw)), 0.0, atol=1e-9)
    assert np.allclose(wrap(bda_boxes(boxes, BDA(rot_rad=0.4))[:, 6] - (yaw + 0.4)), 0.0, atol=1e-9)
    for flip in (BDA(flip_x=True), BDA(flip_y=True), BDA(flip_x=True, flip_y=True)):
        twice = bda_boxes(bda_boxes(boxes, flip), flip)
        assert np.allclose(twice[:, :6], boxes[:, :6]) and np.allclose(twice[:, 7:], boxes[:, 7:])
        assert np.allclose(wrap(twice[:, 6] - yaw), 0.0, atol=1e-9)
        assert np.allclose(flip.matrix() @ flip.matrix(), np.eye(4))
    nan_vel = boxes.copy()
    nan_vel[0, 7:] = np.nan
    assert np.isnan(bda_boxes(nan_vel, BDA(rot_rad=0.3))[0, 7:]).all()  # unknown velocity stays unknown


def test_calibration_composed_with_inverse_bda_keeps_pixels_and_ego_points():
    torch.manual_seed(0)
    bda = BDA(rot_rad=0.3, scale=1.04, flip_x=True)
    lidar2img = torch.randn(2, 3, 4, 4, dtype=torch.float64)  # [T, N, 4, 4]
    lidar2img[..., 3, :] = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    lidar2ego = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)  # [T, 4, 4]
    lidar2ego[:, :3, 3] = torch.tensor([0.9, 0.0, 1.8], dtype=torch.float64)
    points = torch.cat(
        [torch.randn(5, 3, dtype=torch.float64) * 10, torch.ones(5, 1, dtype=torch.float64)], 1
    )
    moved = points @ torch.from_numpy(bda.matrix()).T  # [5, 4] augmented-frame points
    assert torch.allclose(points @ lidar2img.transpose(-1, -2), moved @ bda_calibration(lidar2img, bda).mT)
    assert torch.allclose(points @ lidar2ego.mT, moved @ bda_calibration(lidar2ego, bda).mT)
    f32 = bda_calibration(lidar2img.float(), bda)
    assert f32.dtype == torch.float32


def test_seg_targets_follow_the_boxes():
    seg = torch.zeros(2, 8, 8)  # [S, H, W], 1 m cells over [-4, 4]
    seg[0, 5, 6] = 1.0  # cell centre x = 2.5, y = 1.5
    seg[1, :, :2] = 1.0  # x < -2
    turned = bda_seg(seg, BDA(rot_rad=math.pi / 2), PCR)  # (x, y) -> (-y, x): (2.5, 1.5) -> (-1.5, 2.5)
    assert turned[0].nonzero().tolist() == [[6, 2]]
    assert turned[1, :2].sum() == 16 and turned[1].sum() == 16  # x < -2 -> y < -2 (rows 0, 1)
    for flip in (BDA(flip_x=True), BDA(flip_y=True)):
        assert torch.equal(bda_seg(bda_seg(seg, flip, PCR), flip, PCR), seg)
    assert bda_seg(seg, BDA(flip_x=True), PCR)[0].nonzero().tolist() == [[5, 1]]
    zoomed = bda_seg(seg, BDA(scale=0.5), PCR)  # cells that come from outside the grid stay empty
    assert zoomed[1, :, :].sum() > 0 and zoomed[1, :, :2].sum() == 0


def test_sampling_ranges_and_config():
    d = DataConfig()
    assert BDASpec.from_config(d, train=True) is None
    d.bev_aug = True
    assert BDASpec.from_config(d, train=False) is None  # evaluation: never
    spec = BDASpec.from_config(d, train=True)
    draws = [sample_bda(spec, np.random.default_rng(s)) for s in range(40)]
    assert all(abs(b.rot_rad) <= math.radians(22.5) and 0.95 <= b.scale <= 1.05 for b in draws)
    assert {b.flip_x for b in draws} == {True, False} and {b.flip_y for b in draws} == {True, False}
    for field, value in (
        ("bda_scale_lim", (0.0, 1.0)),
        ("bda_flip_ratio", 1.5),
        ("bda_rot_lim_deg", (5, -5)),
    ):
        bad = DataConfig(bev_aug=True)
        setattr(bad, field, value)
        with pytest.raises(ConfigError, match=f"data.{field}"):
            BDASpec.from_config(bad, train=True)
