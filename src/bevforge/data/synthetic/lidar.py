"""A small LIDAR_TOP key-frame cloud: ground rings plus points on the sensor-facing faces of the boxes.

Points are float32 (x, y, z, intensity, ring) in the LIDAR_TOP frame, as in nuScenes ``.pcd.bin``.
``num_lidar_pts`` of an annotation is the number of cloud points inside its box, and every box
within ``POINTS_RANGE_M`` of the sensor gets at least one.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from bevforge.data.synthetic.render import Cuboids
from bevforge.geometry.transforms import rigid_inverse

POINTS_RANGE_M = 60.0
_RING_ELEVATIONS_DEG = np.linspace(-30.0, -3.0, 12)
_AZIMUTH_STEP_DEG = 1.5


def _to_box_local(points_global: np.ndarray, boxes: Cuboids) -> np.ndarray:
    """[N, 3] points -> [M, N, 3] coordinates in each box frame (x along the length)."""
    d = points_global[None, :, :] - boxes.centres_m[:, None, :]  # [M, N, 3]
    cos, sin = np.cos(boxes.yaw_rad)[:, None], np.sin(boxes.yaw_rad)[:, None]
    x = d[..., 0] * cos + d[..., 1] * sin
    y = -d[..., 0] * sin + d[..., 1] * cos
    return np.stack([x, y, d[..., 2]], -1)


def count_points_in_boxes(points_global: np.ndarray, boxes: Cuboids, pad_m: float = 0.0) -> np.ndarray:
    """[N, 3] points, M boxes -> [M] number of points inside each box (grown by ``pad_m``)."""
    m = len(boxes.centres_m)
    counts = np.zeros(m, dtype=np.int64)
    if m == 0 or len(points_global) == 0:
        return counts
    tree = cKDTree(points_global)
    radii = np.linalg.norm(boxes.size_wlh_m, axis=-1) / 2.0 + pad_m
    for i, idx in enumerate(tree.query_ball_point(boxes.centres_m, radii)):
        if not idx:
            continue
        one = Cuboids(
            boxes.centres_m[i : i + 1],
            boxes.size_wlh_m[i : i + 1],
            boxes.yaw_rad[i : i + 1],
            boxes.colours[:0],
        )
        local = _to_box_local(points_global[idx], one)[0]  # [n, 3]
        half = boxes.size_wlh_m[i, [1, 0, 2]] / 2.0 + pad_m
        counts[i] = int((np.abs(local) <= half).all(-1).sum())
    return counts


def lidar_cloud(
    boxes: Cuboids, lidar2global: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Returns (points [N, 5] float32 in the lidar frame, num_lidar_pts [M] int)."""
    origin = lidar2global[:3, 3]
    height = origin[2]
    # ground rings (global): ranges where each elevation ray meets z = 0
    ranges = height / np.tan(np.radians(-_RING_ELEVATIONS_DEG))  # [R]
    az = np.radians(np.arange(0.0, 360.0, _AZIMUTH_STEP_DEG))  # [A]
    rr, aa = np.meshgrid(ranges, az, indexing="ij")  # [R, A]
    ring = np.broadcast_to(np.arange(len(ranges))[:, None], rr.shape)
    ground = np.stack(
        [origin[0] + rr * np.cos(aa), origin[1] + rr * np.sin(aa), np.zeros_like(rr)], -1
    ).reshape(-1, 3)
    ground_ring = ring.reshape(-1).astype(np.float64)
    m = len(boxes.centres_m)
    if m:
        # drop ground points under a box footprint (they would be counted as the box's points)
        tree = cKDTree(ground[:, :2])
        radii = np.linalg.norm(boxes.size_wlh_m[:, :2], axis=-1) / 2.0 + 0.1
        under = np.zeros(len(ground), dtype=bool)
        for i, idx in enumerate(tree.query_ball_point(boxes.centres_m[:, :2], radii)):
            if not idx:
                continue
            local = _to_box_local(
                ground[idx],
                Cuboids(
                    boxes.centres_m[i : i + 1],
                    boxes.size_wlh_m[i : i + 1],
                    boxes.yaw_rad[i : i + 1],
                    boxes.colours[:0],
                ),
            )[0]
            half = boxes.size_wlh_m[i, [1, 0]] / 2.0 + 0.05
            under[np.array(idx)[(np.abs(local[:, :2]) <= half).all(-1)]] = True
        ground, ground_ring = ground[~under], ground_ring[~under]

    obj_pts = [np.zeros((0, 3))]
    dist = np.linalg.norm(boxes.centres_m[:, :2] - origin[None, :2], axis=-1) if m else np.zeros(0)
    for i in np.nonzero(dist <= POINTS_RANGE_M + 2.0)[0]:  # + lidar offset from the ego origin
        l, w, h = boxes.size_wlh_m[i, 1], boxes.size_wlh_m[i, 0], boxes.size_wlh_m[i, 2]
        cos, sin = np.cos(boxes.yaw_rad[i]), np.sin(boxes.yaw_rad[i])
        to_sensor = origin - boxes.centres_m[i]
        sx = np.sign(to_sensor[0] * cos + to_sensor[1] * sin) or 1.0  # which length face faces the sensor
        sy = np.sign(-to_sensor[0] * sin + to_sensor[1] * cos) or 1.0
        faces = np.array([w * h, l * h, l * w])  # areas of the x face, y face, top
        n = int(np.clip(1500.0 * faces.sum() / max(dist[i], 1.0) ** 2, 1, 250))
        which = rng.choice(3, size=n, p=faces / faces.sum())
        u = rng.uniform(-0.47, 0.47, size=(n, 3)) * np.array([l, w, h])  # box-local, strictly inside
        u[which == 0, 0] = sx * 0.47 * l
        u[which == 1, 1] = sy * 0.47 * w
        u[which == 2, 2] = 0.47 * h
        gx = boxes.centres_m[i, 0] + u[:, 0] * cos - u[:, 1] * sin
        gy = boxes.centres_m[i, 1] + u[:, 0] * sin + u[:, 1] * cos
        obj_pts.append(np.stack([gx, gy, boxes.centres_m[i, 2] + u[:, 2]], -1))
    objects = np.concatenate(obj_pts)
    pts_global = np.concatenate([ground, objects])  # [N, 3]
    elev = np.degrees(
        np.arctan2(objects[:, 2] - height, np.linalg.norm(objects[:, :2] - origin[:2], axis=-1))
    )
    obj_ring = np.clip(np.round(np.interp(elev, _RING_ELEVATIONS_DEG, np.arange(12))), 0, 31)
    rings = np.concatenate([ground_ring, obj_ring])
    intensity = np.concatenate([rng.uniform(1.0, 12.0, len(ground)), rng.uniform(5.0, 60.0, len(objects))])
    num_pts = count_points_in_boxes(pts_global, boxes)  # [M]
    global2lidar = rigid_inverse(lidar2global)
    pts_lidar = pts_global @ global2lidar[:3, :3].T + global2lidar[:3, 3]
    cloud = np.concatenate([pts_lidar, intensity[:, None], rings[:, None]], 1).astype(np.float32)  # [N, 5]
    return cloud, num_pts
