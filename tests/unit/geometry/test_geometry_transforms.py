"""geometry.transforms: the one pose -> 4x4 helper (and its rigid inverse) of data prep, synth and eval."""

import math

import numpy as np
from nuscenes.utils.geometry_utils import transform_matrix
from pyquaternion import Quaternion

from bevforge.geometry.transforms import pose_from_record, pose_matrix, rigid_inverse


def test_pose_matrix_matches_devkit_for_every_rotation_form() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        q = rng.normal(size=4) * rng.uniform(0.2, 3.0)  # not normalised: pyquaternion normalises
        t = rng.normal(size=3) * 100.0
        expected = transform_matrix(t.tolist(), Quaternion(q.tolist()), inverse=False)
        for got in (
            pose_matrix(t, q),
            pose_matrix(t.tolist(), tuple(q.tolist())),
            pose_matrix(t, Quaternion(q)),
            pose_matrix(t, Quaternion(q).rotation_matrix),
            pose_from_record({"translation": t.tolist(), "rotation": q.tolist()}),
        ):
            assert got.shape == (4, 4) and got.dtype == np.float64
            np.testing.assert_array_equal(got, expected)


def test_pose_matrix_maps_child_into_parent() -> None:
    # sensor 2 m ahead of the ego origin, rotated +90 deg about z: its +x axis is the ego's +y
    m = pose_matrix([2.0, 0.0, 0.0], [math.cos(math.pi / 4), 0.0, 0.0, math.sin(math.pi / 4)])
    p_ego = m @ np.array([1.0, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(p_ego, [2.0, 1.0, 0.0, 1.0], atol=1e-12)


def test_rigid_inverse() -> None:
    rng = np.random.default_rng(1)
    m = pose_matrix(rng.normal(size=3) * 50.0, rng.normal(size=4))
    inv = rigid_inverse(m)
    np.testing.assert_allclose(inv @ m, np.eye(4), atol=1e-12)
    np.testing.assert_allclose(inv, np.linalg.inv(m), atol=1e-12)
    np.testing.assert_array_equal(inv[3], [0.0, 0.0, 0.0, 1.0])
