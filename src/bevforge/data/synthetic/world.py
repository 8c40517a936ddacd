"""One synthetic scene in the global frame: the ego motion and the objects around it.

Time ``t_s`` is seconds from the scene's first key frame (key frame k at ``t = 0.5 k``). Objects move
in straight lines at constant velocity along the roads (or stand still); their footprints (BEV
rectangles) are checked against each other and the ego at every half key frame, so boxes never
interpenetrate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bevforge.data.synthetic import roads
from bevforge.data.synthetic.catalog import CLASS_SPECS, ClassSpec, attribute_for

KEYFRAME_DT_S = 0.5
CAN_PAD_S = 2.0  # the ego motion (and CAN bus) is defined this long before/after the key frames
_DENSE_DT_S = 0.01
EGO_SIZE_WLH_M = (2.0, 4.9, 1.6)
EGO_CENTRE_AHEAD_M = 1.4  # ego box centre ahead of the ego origin (rear axle)


@dataclass
class EgoMotion:
    """Ego state sampled on a dense time grid; query with :meth:`state`."""

    path: roads.Path
    t_s: np.ndarray  # [D] dense times
    s_m: np.ndarray  # [D] arc length along the path
    speed_mps: np.ndarray  # [D]

    def state(self, t_s: np.ndarray) -> dict[str, np.ndarray]:
        """[T] times -> xy [T,2], yaw_rad [T], speed [T], accel_long [T], curvature [T] (global)."""
        t = np.asarray(t_s, dtype=np.float64)
        s = np.interp(t, self.t_s, self.s_m)
        v = np.interp(t, self.t_s, self.speed_mps)
        a = np.interp(t, self.t_s, np.gradient(self.speed_mps, self.t_s))
        xy, yaw, curv = self.path.at(s)
        return {"xy": xy, "yaw_rad": yaw, "speed_mps": v, "accel_mps2": a, "curvature_per_m": curv}


@dataclass
class SceneObjects:
    """M objects; position at time t is ``xy0_m + vel_mps * t`` (global)."""

    class_names: list[str]
    categories: list[str]
    attributes: list[str]
    size_wlh_m: np.ndarray  # [M, 3]
    xy0_m: np.ndarray  # [M, 2] at t = 0
    vel_mps: np.ndarray  # [M, 2] global
    yaw_rad: np.ndarray  # [M]

    def __len__(self) -> int:
        return len(self.class_names)

    def centres_at(self, t_s: float) -> np.ndarray:
        """[M, 3] gravity centres at time t (ground at z = 0)."""
        xy = self.xy0_m + self.vel_mps * t_s  # [M, 2]
        return np.concatenate([xy, self.size_wlh_m[:, 2:3] / 2.0], axis=1)


LATERAL_ACCEL_MAX_MPS2 = 2.5  # comfortable cornering: 3.9 m/s on the 6 m right turn, 5 m/s on the 10 m left
BRAKE_MPS2 = 2.0
ACCEL_MPS2 = 1.5


def ego_motion(grid: roads.RoadGrid, rng: np.random.Generator, duration_s: float) -> EgoMotion:
    """Desired speed varies smoothly (a slow sine plus a faster one, 1.5..14.5 m/s); the car slows down
    before turns (lateral acceleration <= 2.5 m/s^2, braking 2 m/s^2) and accelerates gently after."""
    t = np.arange(-CAN_PAD_S, duration_s + CAN_PAD_S + _DENSE_DT_S, _DENSE_DT_S)  # [D]
    v0 = rng.uniform(5.0, 9.5)
    a1, p1, f1 = rng.uniform(1.5, 4.0), rng.uniform(8.0, 16.0), rng.uniform(0, 2 * math.pi)
    a2, p2, f2 = rng.uniform(0.2, 0.6), rng.uniform(3.0, 6.0), rng.uniform(0, 2 * math.pi)
    v_des = v0 + a1 * np.sin(2 * math.pi * t / p1 + f1) + a2 * np.sin(2 * math.pi * t / p2 + f2)
    v_des = np.maximum(v_des, 1.5)
    path = roads.ego_path(grid, rng, min_length_m=float(v_des.sum() * _DENSE_DT_S) + 5.0)
    # speed limit along the path: cornering, then a backward pass so the car brakes before a turn
    v_lim = np.sqrt(LATERAL_ACCEL_MAX_MPS2 / np.maximum(np.abs(path.curvature_per_m), 1e-6))  # [S]
    for i in range(len(v_lim) - 2, -1, -1):
        v_lim[i] = min(v_lim[i], math.sqrt(v_lim[i + 1] ** 2 + 2 * BRAKE_MPS2 * roads.PATH_STEP_M))
    v = np.empty_like(t)
    s = np.empty_like(t)
    s_now, v_now = 0.0, min(v_des[0], v_lim[0])
    for i in range(len(t)):
        limit = v_lim[min(int(s_now / roads.PATH_STEP_M), len(v_lim) - 1)]
        v_now = min(v_des[i], limit, v_now + ACCEL_MPS2 * _DENSE_DT_S) if i else v_now
        v[i], s[i] = v_now, s_now
        s_now += v_now * _DENSE_DT_S
    return EgoMotion(path, t, s, v)


def rects_overlap(
    c1: np.ndarray, yaw1: np.ndarray, half1: np.ndarray, c2: np.ndarray, yaw2: np.ndarray, half2: np.ndarray
) -> np.ndarray:
    """Separating-axis test of oriented rectangles; broadcasting over leading dims.

    c [..., 2] centres, yaw [...], half [..., 2] half (length, width). Returns bool [...].
    """
    u1 = np.stack([np.cos(yaw1), np.sin(yaw1)], -1)  # [..., 2] length axis
    v1 = np.stack([-np.sin(yaw1), np.cos(yaw1)], -1)
    u2 = np.stack([np.cos(yaw2), np.sin(yaw2)], -1)
    v2 = np.stack([-np.sin(yaw2), np.cos(yaw2)], -1)
    d = c2 - c1
    sep = np.zeros(np.broadcast_shapes(c1.shape, c2.shape)[:-1], dtype=bool)
    for axis in (u1, v1, u2, v2):
        r1 = half1[..., 0] * np.abs((u1 * axis).sum(-1)) + half1[..., 1] * np.abs((v1 * axis).sum(-1))
        r2 = half2[..., 0] * np.abs((u2 * axis).sum(-1)) + half2[..., 1] * np.abs((v2 * axis).sum(-1))
        sep |= np.abs((d * axis).sum(-1)) > r1 + r2
    return ~sep


def _lateral_offset(spec: ClassSpec, moving: bool, parked: bool, rng: np.random.Generator) -> float:
    if spec.role == "vehicle":
        return roads.KERB_STRIP_OFFSET_M if parked else float(rng.choice(roads.LANE_OFFSETS_M))
    if spec.role == "cycle":
        return roads.KERB_STRIP_OFFSET_M if parked else roads.LANE_OFFSETS_M[1] + 0.7
    if spec.role == "pedestrian":
        return roads.SIDEWALK_OFFSET_M + rng.uniform(-1.0, 1.0)
    if spec.name == "barrier":
        return rng.uniform(7.6, 8.9)
    return rng.uniform(7.0, 9.2)  # cones


def place_objects(
    grid: roads.RoadGrid, ego: EgoMotion, num_samples: int, rng: np.random.Generator
) -> SceneObjects:
    """Spawn each class's objects on the roads near the ego's drive, rejecting any that would overlap
    the ego or an accepted object at any half key frame."""
    duration = (num_samples - 1) * KEYFRAME_DT_S
    t_check = np.arange(0.0, duration + 1e-9, KEYFRAME_DT_S / 2)  # [T]
    es = ego.state(t_check)
    ego_c = es["xy"] + EGO_CENTRE_AHEAD_M * np.stack([np.cos(es["yaw_rad"]), np.sin(es["yaw_rad"])], -1)
    ego_half = np.array([EGO_SIZE_WLH_M[1] / 2 + 1.0, EGO_SIZE_WLH_M[0] / 2 + 0.3])
    nodes = np.array(grid.node_coords)

    acc_c: list[np.ndarray] = []  # each [T, 2]
    acc_yaw: list[float] = []
    acc_half: list[np.ndarray] = []
    out: dict[str, list] = {k: [] for k in ("cls", "cat", "attr", "wlh", "xy0", "vel", "yaw")}
    for spec in CLASS_SPECS:
        cats, probs = zip(*spec.categories)
        for _ in range(spec.count):
            for _try in range(25):
                k = rng.uniform(0.0, duration)
                e = ego.state(np.array([k]))["xy"][0]
                axis = int(rng.integers(2))  # 0: road along x, 1: road along y
                across = e[1 - axis]
                near = nodes[np.argsort(np.abs(nodes - across))[:2]]
                road_c = float(near[0] if rng.random() < 0.75 else near[1])
                along = float(e[axis] + rng.uniform(-45.0, 45.0))
                direction = 1.0 if rng.random() < 0.5 else -1.0
                static = rng.random() < spec.p_static
                parked = static and (spec.role in ("vehicle", "cycle")) and rng.random() < 0.7
                moving = not static
                off = _lateral_offset(spec, moving, parked, rng)
                if (parked or spec.role == "static") and np.min(np.abs(nodes - along)) < 17.0:
                    continue  # nothing parked in intersections or on crossings
                f = np.zeros(2)
                f[axis] = direction
                r = np.array([f[1], -f[0]])
                xy_k = np.zeros(2)
                xy_k[axis], xy_k[1 - axis] = along, road_c
                xy_k = xy_k + off * r
                yaw = math.atan2(f[1], f[0])
                if spec.name == "barrier":
                    yaw += math.pi / 2
                elif spec.role == "pedestrian" and not moving:
                    yaw = float(rng.uniform(-math.pi, math.pi))
                speed = float(rng.uniform(*spec.speed_mps)) if moving else 0.0
                vel = f * speed
                xy0 = xy_k - vel * k
                cs = xy0 + vel * t_check[:, None]  # [T, 2]
                if np.any(cs < 2.0) or np.any(cs > grid.extent_m - 2.0):
                    continue
                w, l, h = spec.size_wlh_m
                scale = float(rng.uniform(0.9, 1.1))
                wlh = np.array([w, l, h]) * scale
                half = np.array([wlh[1] / 2, wlh[0] / 2])
                if rects_overlap(cs, np.full(len(cs), yaw), half, ego_c, es["yaw_rad"], ego_half).any():
                    continue
                if acc_c:
                    cc = np.stack(acc_c)  # [M, T, 2]
                    yy = np.array(acc_yaw)[:, None]  # [M, 1]
                    hh = np.stack(acc_half)[:, None, :] + 0.15  # [M, 1, 2]
                    if rects_overlap(cs[None], np.array(yaw), half, cc, yy, hh).any():
                        continue
                acc_c.append(cs)
                acc_yaw.append(yaw)
                acc_half.append(half)
                out["cls"].append(spec.name)
                out["cat"].append(str(rng.choice(cats, p=np.array(probs) / sum(probs))))
                out["attr"].append(attribute_for(spec, moving, parked))
                out["wlh"].append(wlh)
                out["xy0"].append(xy0)
                out["vel"].append(vel)
                out["yaw"].append(yaw)
                break
    m = len(out["cls"])
    return SceneObjects(
        class_names=out["cls"],
        categories=out["cat"],
        attributes=out["attr"],
        size_wlh_m=np.array(out["wlh"]).reshape(m, 3),
        xy0_m=np.array(out["xy0"]).reshape(m, 2),
        vel_mps=np.array(out["vel"]).reshape(m, 2),
        yaw_rad=np.array(out["yaw"]).reshape(m),
    )
