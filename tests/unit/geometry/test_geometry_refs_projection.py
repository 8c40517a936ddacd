"""Reference points and their projection into cameras land where lidar2img says."""

from __future__ import annotations

import math

import pytest
import torch

from bevforge.geometry.projection import project_to_cameras
from bevforge.geometry.reference_points import (
    bev_reference_points_2d,
    denormalise_points,
    pillar_reference_points_3d,
)

PC_RANGE = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)


def camera_lidar2img(
    yaw_rad: float, focal: float, cx: float, cy: float, height_m: float = 0.0
) -> torch.Tensor:
    """[4, 4] pinhole camera at the lidar origin (+ height), looking along lidar +y rotated by yaw."""
    # camera axes in lidar coords: x right, y down, z forward
    fwd = torch.tensor([-math.sin(yaw_rad), math.cos(yaw_rad), 0.0], dtype=torch.float64)
    right = torch.tensor([math.cos(yaw_rad), math.sin(yaw_rad), 0.0], dtype=torch.float64)
    down = torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64)
    cam_from_lidar = torch.eye(4, dtype=torch.float64)
    cam_from_lidar[:3, :3] = torch.stack((right, down, fwd))
    cam_from_lidar[:3, 3] = -cam_from_lidar[:3, :3] @ torch.tensor([0.0, 0.0, height_m], dtype=torch.float64)
    intr = torch.eye(4, dtype=torch.float64)
    intr[0, 0] = intr[1, 1] = focal
    intr[0, 2], intr[1, 2] = cx, cy
    return (intr @ cam_from_lidar).float()


def test_reference_points_2d_cell_centres_row_major():
    ref = bev_reference_points_2d(3, 4)
    assert ref.shape == (12, 2)
    row, col = 2, 1
    x, y = ref[row * 4 + col]
    assert x.item() == pytest.approx((col + 0.5) / 4)
    assert y.item() == pytest.approx((row + 0.5) / 3)


def test_pillar_heights_match_official_linspace():
    ref = pillar_reference_points_3d(2, 2, 4, 8.0)
    assert ref.shape == (4, 4, 3)
    expected = torch.linspace(0.5, 7.5, 4) / 8.0
    torch.testing.assert_close(ref[:, 0, 2], expected)
    metres = denormalise_points(ref, PC_RANGE)
    assert metres[0, 0, 2].item() == pytest.approx(-5.0 + 0.5)
    assert metres[0, 0, 0].item() == pytest.approx(-51.2 + 0.5 * 102.4 / 2)


def test_projection_hits_expected_pixel_and_mask_per_sample():
    torch.manual_seed(0)
    bev_h = bev_w = 8
    img_hw = (60, 100)
    ref = pillar_reference_points_3d(bev_h, bev_w, 4, 8.0)  # [Z, Q, 3]
    front = camera_lidar2img(0.0, 50.0, 50.0, 30.0, height_m=1.0)
    back = camera_lidar2img(math.pi, 50.0, 50.0, 30.0, height_m=1.0)
    # sample 0: cams (front, back); sample 1: cams (back, front) -> masks must swap per sample
    lidar2img = torch.stack((torch.stack((front, back)), torch.stack((back, front))))  # [2, 2, 4, 4]
    ref_cam, hit = project_to_cameras(ref, PC_RANGE, lidar2img, img_hw)
    assert ref_cam.shape == (2, 2, bev_h * bev_w, 4, 2) and hit.shape == (2, 2, bev_h * bev_w, 4)

    # a known cell ahead: row 7 (y = +44.8 m), col 4 (x = +6.4 m), pillar point 2 (z = 0.5 - 5 + ...)
    row, col, zi = 7, 4, 2
    q = row * bev_w + col
    x, y, z = denormalise_points(ref[zi, q], PC_RANGE).tolist()
    u = 50.0 * x / y + 50.0
    v = 50.0 * (1.0 - z) / y + 30.0
    torch.testing.assert_close(ref_cam[0, 0, q, zi], torch.tensor([u / 100.0, v / 60.0]), atol=1e-5, rtol=0)
    assert bool(hit[0, 0, q, zi]) and not bool(hit[0, 1, q, zi])
    assert bool(hit[1, 1, q, zi]) and not bool(hit[1, 0, q, zi])
    torch.testing.assert_close(ref_cam[0, 0], ref_cam[1, 1])
    torch.testing.assert_close(hit[0], hit[1].flip(0))
    # cells behind the front camera (row < bev_h / 2: y < 0) are never hit by it
    rows = torch.arange(bev_h * bev_w) // bev_w
    assert not hit[0, 0][rows < bev_h // 2].any()
    assert hit[0, 0][rows >= bev_h // 2].any()
