"""Rigid 4x4 transforms (numpy, float64) from nuScenes-style poses.

A pose maps points of a child frame into its parent frame (``sensor2ego``, ``ego2global``...):
``p_parent = R @ p_child + t`` with ``R`` the rotation of a (w, x, y, z) quaternion or a 3x3 matrix.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pyquaternion import Quaternion


def pose_matrix(translation: Sequence[float] | np.ndarray, rotation: Any) -> np.ndarray:
    """``[4, 4]`` child -> parent transform from ``translation`` (3,) in metres and ``rotation``: a
    (w, x, y, z) quaternion (sequence, array or ``Quaternion``) or a ``[3, 3]`` rotation matrix."""
    m = np.eye(4)
    if isinstance(rotation, Quaternion):
        m[:3, :3] = rotation.rotation_matrix
    else:
        r = np.asarray(rotation, dtype=np.float64)
        m[:3, :3] = r if r.shape == (3, 3) else Quaternion(r).rotation_matrix
    m[:3, 3] = np.asarray(translation, dtype=np.float64).reshape(3)
    return m


def pose_from_record(record: Mapping[str, Any]) -> np.ndarray:
    """``[4, 4]`` transform of a nuScenes ``ego_pose`` / ``calibrated_sensor`` row
    (``translation`` in metres, ``rotation`` as a (w, x, y, z) quaternion)."""
    return pose_matrix(record["translation"], record["rotation"])


def rigid_inverse(m: np.ndarray) -> np.ndarray:
    """Inverse of a ``[4, 4]`` rotation + translation transform (``R^T``, ``-R^T t``)."""
    out = np.eye(4)
    out[:3, :3] = m[:3, :3].T
    out[:3, 3] = -m[:3, :3].T @ m[:3, 3]
    return out
