"""Flat (structure-of-arrays) nuScenes evaluation boxes and the ground truth of a split.

Shape letters: N boxes, S samples. Everything here is in the nuScenes **global** frame, like the
devkit's ``DetectionBox``: ``translation`` (m), ``size`` = (w, l, h) m, ``rotation`` quaternion (w, x, y, z),
``velocity`` (vx, vy) m/s (NaN = unknown). Class and attribute are small ints indexing
:data:`DETECTION_NAMES` / :data:`ATTRIBUTE_NAMES` (``-1`` attribute = the devkit's ``''``).

The order of boxes matters and is kept as the devkit keeps it (sample order, then box order inside a
sample): ties in score and distance are broken by it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: The devkit's detection class order (``nuscenes.eval.detection.constants.DETECTION_NAMES``); the order
#: of the per-class tables and of ``class_range``. (Our model's label order is ``config.DET_CLASSES``.)
DETECTION_NAMES: tuple[str, ...] = (
    "car",
    "truck",
    "bus",
    "trailer",
    "construction_vehicle",
    "pedestrian",
    "motorcycle",
    "bicycle",
    "traffic_cone",
    "barrier",
)
ATTRIBUTE_NAMES: tuple[str, ...] = (
    "pedestrian.moving",
    "pedestrian.sitting_lying_down",
    "pedestrian.standing",
    "cycle.with_rider",
    "cycle.without_rider",
    "vehicle.moving",
    "vehicle.parked",
    "vehicle.stopped",
)
CLASS_INDEX = {n: i for i, n in enumerate(DETECTION_NAMES)}
ATTR_INDEX = {n: i for i, n in enumerate(ATTRIBUTE_NAMES)}
BICYCLE_RACK = "static_object.bicycle_rack"


def _empty(shape: tuple[int, ...], dtype: type = np.float64) -> np.ndarray:
    return np.zeros(shape, dtype=dtype)


@dataclass
class BoxTable:
    """N evaluation boxes as flat arrays (see the module docstring for frames and units)."""

    sample_idx: np.ndarray = field(default_factory=lambda: _empty((0,), np.int64))  # [N] into sample_tokens
    translation: np.ndarray = field(default_factory=lambda: _empty((0, 3)))  # [N, 3] global, m
    size: np.ndarray = field(default_factory=lambda: _empty((0, 3)))  # [N, 3] (w, l, h) m
    rotation: np.ndarray = field(default_factory=lambda: _empty((0, 4)))  # [N, 4] (w, x, y, z)
    velocity: np.ndarray = field(default_factory=lambda: _empty((0, 2)))  # [N, 2] global m/s, NaN ok
    label: np.ndarray = field(default_factory=lambda: _empty((0,), np.int64))  # [N] DETECTION_NAMES index
    score: np.ndarray = field(default_factory=lambda: _empty((0,)))  # [N] (-1 for ground truth)
    attr: np.ndarray = field(default_factory=lambda: _empty((0,), np.int64))  # [N] ATTRIBUTE_NAMES idx, -1 ''
    num_pts: np.ndarray = field(default_factory=lambda: _empty((0,), np.int64))  # [N] lidar+radar, -1 = n/a

    def __len__(self) -> int:
        return int(self.sample_idx.shape[0])

    def select(self, mask_or_index: np.ndarray) -> BoxTable:
        """The boxes at a bool mask or an index array (order kept)."""
        return BoxTable(
            sample_idx=self.sample_idx[mask_or_index],
            translation=self.translation[mask_or_index],
            size=self.size[mask_or_index],
            rotation=self.rotation[mask_or_index],
            velocity=self.velocity[mask_or_index],
            label=self.label[mask_or_index],
            score=self.score[mask_or_index],
            attr=self.attr[mask_or_index],
            num_pts=self.num_pts[mask_or_index],
        )

    @staticmethod
    def concat(tables: list[BoxTable]) -> BoxTable:
        if not tables:
            return BoxTable()
        return BoxTable(
            **{
                name: np.concatenate([getattr(t, name) for t in tables], axis=0)
                for name in BoxTable.__dataclass_fields__
            }
        )


@dataclass
class GroundTruth:
    """The ground truth of one split, ready for :func:`bevforge.eval.metrics.detection_metrics`.

    ``sample_tokens`` is the split (every token must have an entry in a submission); ``ego_xyz`` is the
    translation of the ego pose of each sample's LIDAR_TOP key frame (the devkit's ``add_center_dist``);
    ``racks`` holds the ``static_object.bicycle_rack`` boxes (only sample_idx/translation/size/rotation used).
    """

    sample_tokens: list[str]
    ego_xyz: np.ndarray  # [S, 3] global, m
    boxes: BoxTable  # detection-class annotations (all of them, before range/points filtering)
    racks: BoxTable
    source: str = ""  # where it came from (for messages)

    def token_index(self) -> dict[str, int]:
        return {t: i for i, t in enumerate(self.sample_tokens)}


def quaternion_yaw(rotation_wxyz: np.ndarray) -> np.ndarray:
    """[N, 4] quaternions (w, x, y, z) -> [N] yaw (rad): heading of the rotated x axis (devkit semantics).

    Normalises like ``pyquaternion`` and evaluates the rotation-matrix entries in the same product
    form, so the result agrees with ``nuscenes.eval.common.utils.quaternion_yaw`` to ~1 ulp.
    """
    q = np.asarray(rotation_wxyz, dtype=np.float64).reshape(-1, 4)
    sumsq = np.einsum("ij,ij->i", q, q)  # [N]
    scale = np.where(np.abs(1.0 - sumsq) < 1e-14, 1.0, 1.0 / np.sqrt(np.where(sumsq > 0, sumsq, 1.0)))
    w, x, y, z = (q * scale[:, None]).T
    r00 = x * x + w * w + (-z) * z + y * (-y)
    r10 = y * x + z * w + w * z + (-x) * (-y)
    return np.arctan2(r10, r00)


def rotation_matrices(rotation_wxyz: np.ndarray) -> np.ndarray:
    """[N, 4] unit quaternions (w, x, y, z) -> [N, 3, 3] rotation matrices."""
    q = np.asarray(rotation_wxyz, dtype=np.float64).reshape(-1, 4)
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
            np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
            np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
        ],
        axis=1,
    )  # [N, 3, 3]


def quaternion_multiply(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of [..., 4] (w, x, y, z) quaternions (broadcasting)."""
    aw, ax, ay, az = np.moveaxis(np.asarray(a, dtype=np.float64), -1, 0)
    bw, bx, by, bz = np.moveaxis(np.asarray(b, dtype=np.float64), -1, 0)
    return np.stack(
        [
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ],
        axis=-1,
    )
