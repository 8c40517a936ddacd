"""The one box convention: code round trip, frame round trips, official conventions."""

import math

import numpy as np
import torch
from pyquaternion import Quaternion

from bevforge.structures.boxes import (
    box_corners,
    decode_box_code,
    encode_box_code,
    from_mmdet3d_v0,
    from_mmdet3d_v1,
    global_to_lidar,
    lidar_to_global,
    to_mmdet3d_v0,
    to_mmdet3d_v1,
)


def _pose(yaw_rad, t):
    m = np.eye(4)
    m[:3, :3] = Quaternion(axis=[0, 0, 1], radians=yaw_rad).rotation_matrix
    m[:3, 3] = t
    return m


def test_box_code_round_trip():
    torch.manual_seed(0)
    boxes = torch.cat(
        [
            torch.randn(5, 3) * 10,
            torch.rand(5, 3) * 4 + 0.3,
            (torch.rand(5, 1) * 2 - 1) * math.pi,
            torch.randn(5, 2),
        ],
        dim=1,
    )
    code = encode_box_code(boxes)
    assert code.shape == (5, 10)
    torch.testing.assert_close(decode_box_code(code), boxes, rtol=1e-5, atol=1e-5)


def test_corners_follow_heading():
    box = torch.tensor([[1.0, 2.0, 0.5, 4.0, 2.0, 1.0, math.pi / 2, 0.0, 0.0]])
    c = box_corners(box)[0]
    # heading +y: the front face (first two corners) is at y = 2 + l/2
    torch.testing.assert_close(c[:2, 1], torch.tensor([4.0, 4.0]))
    # "left" of a +y heading is -x: front-left corner at x = 1 - w/2
    torch.testing.assert_close(c[0, 0], torch.tensor(0.0))
    torch.testing.assert_close(c[:4, 2], torch.zeros(4))


def test_global_lidar_round_trip():
    ego2global = _pose(0.7, [100.0, -20.0, 0.0])
    lidar2ego = _pose(-math.pi / 2, [0.9, 0.0, 1.8])
    rot = Quaternion(axis=[0, 0, 1], radians=1.2)
    box = global_to_lidar(
        np.array([110.0, -15.0, 1.0]),
        np.array([2.0, 4.5, 1.6]),
        rot,
        np.array([3.0, -1.0]),
        ego2global,
        lidar2ego,
    )
    assert box.shape == (9,)
    assert box[3] == 4.5 and box[4] == 2.0  # (l, w) from nuScenes (w, l)
    center, wlh, rot_back, vel = lidar_to_global(box, ego2global, lidar2ego)
    np.testing.assert_allclose(center, [110.0, -15.0, 1.0], atol=1e-9)
    np.testing.assert_allclose(wlh, [2.0, 4.5, 1.6])
    np.testing.assert_allclose(vel, [3.0, -1.0], atol=1e-9)
    assert abs(Quaternion.absolute_distance(rot, rot_back)) < 1e-6
    # yaw in the lidar frame = global yaw - ego yaw - lidar yaw
    expected = (1.2 - 0.7 + math.pi / 2 + math.pi) % (2 * math.pi) - math.pi
    assert abs(box[6] - expected) < 1e-9


def test_official_v0_convention():
    ours = np.array([[1.0, 2.0, 3.0, 4.0, 2.0, 1.5, 0.3, 0.5, -0.5]])
    old = to_mmdet3d_v0(ours)
    np.testing.assert_allclose(old[0, 3:6], [2.0, 4.0, 1.5])  # (w, l, h)
    np.testing.assert_allclose(old[0, 6], -0.3 - math.pi / 2)  # rot = -yaw - pi/2
    back = from_mmdet3d_v0(old, ours[:, 7:9])
    np.testing.assert_allclose(back, ours, atol=1e-12)


def test_mmdet3d_v1_convention():
    ours = np.array([[1.0, 2.0, 3.0, 4.0, 2.0, 1.5, -2.0, 0.0, 0.0]])
    np.testing.assert_allclose(from_mmdet3d_v1(to_mmdet3d_v1(ours)), ours)
    bottom = to_mmdet3d_v1(ours, z_is_bottom=True)
    assert bottom[0, 2] == 3.0 - 0.75
    np.testing.assert_allclose(from_mmdet3d_v1(bottom, z_is_bottom=True), ours)
