"""The road network (a Manhattan grid in the global frame) and the ego car's path on it.

Every road is straight, 19 m wide: two 3.5 m lanes per direction (right-hand traffic), a 2.5 m kerb
strip for parked cars on each side, then a 3.5 m sidewalk. Cross-section offsets are measured to the
RIGHT of the travel direction from the road centre line.

A path is a dense polyline sampled every ``PATH_STEP_M`` metres of arc length with its heading.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LANE_WIDTH_M = 3.5
LANE_OFFSETS_M = (1.75, 5.25)  # centres of the two lanes of one direction, right of the centre line
KERB_STRIP_OFFSET_M = 8.25  # centre of the parking strip
ROAD_HALF_WIDTH_M = 9.5  # drivable half width (lanes + parking strip)
SIDEWALK_OFFSET_M = 11.25  # centre of the sidewalk
SIDEWALK_HALF_WIDTH_M = 1.75
CROSSING_RANGE_M = (10.5, 14.5)  # ped crossing: distance from the intersection centre along the arm
PATH_STEP_M = 0.05


@dataclass(frozen=True)
class RoadGrid:
    """Roads along x = node_coords[i] (north-south) and y = node_coords[j] (east-west).

    The map covers [0, extent_m] x [0, extent_m] (global metres); every road runs across the map.
    """

    node_coords: tuple[float, ...]
    extent_m: float

    @property
    def num_nodes(self) -> int:
        return len(self.node_coords)


def make_grid(num_nodes: int = 6, block_m: float = 70.0, margin_m: float = 60.0) -> RoadGrid:
    coords = tuple(margin_m + i * block_m for i in range(num_nodes))
    return RoadGrid(coords, extent_m=coords[-1] + margin_m)


@dataclass
class Path:
    xy_m: np.ndarray  # [S, 2] global
    heading_rad: np.ndarray  # [S] unwrapped
    curvature_per_m: np.ndarray  # [S] (+ left turn)

    @property
    def length_m(self) -> float:
        return (len(self.xy_m) - 1) * PATH_STEP_M

    def at(self, s_m: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Arc length [T] -> (xy [T, 2], heading [T], curvature [T]) by linear interpolation."""
        grid = np.arange(len(self.xy_m)) * PATH_STEP_M
        s = np.clip(s_m, 0.0, grid[-1])
        x = np.interp(s, grid, self.xy_m[:, 0])
        y = np.interp(s, grid, self.xy_m[:, 1])
        return (
            np.stack([x, y], -1),
            np.interp(s, grid, self.heading_rad),
            np.interp(s, grid, self.curvature_per_m),
        )


class _Turtle:
    def __init__(self, xy: np.ndarray, heading: float):
        self.xy = [np.asarray(xy, dtype=np.float64)]
        self.heading = [heading]
        self.curv = [0.0]

    def straight(self, length_m: float) -> None:
        n = max(int(round(length_m / PATH_STEP_M)), 0)
        h = self.heading[-1]
        d = np.array([math.cos(h), math.sin(h)])
        start = self.xy[-1]
        for i in range(1, n + 1):
            self.xy.append(start + d * i * PATH_STEP_M)
            self.heading.append(h)
            self.curv.append(0.0)

    def arc(self, radius_m: float, left: bool) -> None:
        """Quarter turn of ``radius_m`` to the left or right."""
        sign = 1.0 if left else -1.0
        h0 = self.heading[-1]
        start = self.xy[-1]
        normal = np.array([-math.sin(h0), math.cos(h0)]) * sign  # towards the turn centre
        centre = start + normal * radius_m
        n = int(round(0.5 * math.pi * radius_m / PATH_STEP_M))
        for i in range(1, n + 1):
            h = h0 + sign * 0.5 * math.pi * i / n
            self.xy.append(centre - np.array([-math.sin(h), math.cos(h)]) * sign * radius_m)
            self.heading.append(h)
            self.curv.append(sign / radius_m)

    def path(self) -> Path:
        return Path(np.stack(self.xy), np.array(self.heading), np.array(self.curv))


_RIGHT_TURN_RADIUS_M = 6.0
_LEFT_TURN_RADIUS_M = 10.0


def ego_path(grid: RoadGrid, rng: np.random.Generator, min_length_m: float) -> Path:
    """A drive in the inner right-hand lane, turning left/right or going straight at intersections,
    always staying inside the grid (turns back inward at the outer nodes)."""
    n = grid.num_nodes
    o = LANE_OFFSETS_M[0]
    # start on an interior segment, heading along x or y, somewhere between two nodes
    axis_dirs = [(1, 0), (-1, 0), (0, 1), (0, -1)]
    fdir = axis_dirs[int(rng.integers(4))]
    node = [int(rng.integers(1, n - 1)), int(rng.integers(1, n - 1))]  # next intersection (ix, iy)
    c = np.array([grid.node_coords[node[0]], grid.node_coords[node[1]]])
    f = np.array(fdir, dtype=np.float64)
    r = np.array([f[1], -f[0]])
    back = float(rng.uniform(25.0, 45.0))
    turtle = _Turtle(c - back * f + o * r, math.atan2(f[1], f[0]))
    while True:
        pos = turtle.xy[-1]
        c = np.array([grid.node_coords[node[0]], grid.node_coords[node[1]]])
        f = np.array([math.cos(turtle.heading[-1]), math.sin(turtle.heading[-1])]).round()
        r = np.array([f[1], -f[0]])
        to_c = float((c - pos) @ f)  # distance along f to the intersection centre
        options = []
        for action, new_f in (("straight", f), ("left", -r), ("right", r)):
            nxt = [node[0] + int(new_f[0]), node[1] + int(new_f[1])]
            if 0 <= nxt[0] < n and 0 <= nxt[1] < n:
                options.append((action, new_f, nxt))
        weights = np.array([2.0 if a == "straight" else 1.0 for a, _, _ in options])
        action, new_f, nxt = options[int(rng.choice(len(options), p=weights / weights.sum()))]
        if action == "straight":
            turtle.straight(to_c)
        elif action == "right":
            turtle.straight(to_c - (o + _RIGHT_TURN_RADIUS_M))
            turtle.arc(_RIGHT_TURN_RADIUS_M, left=False)
            turtle.straight(o + _RIGHT_TURN_RADIUS_M - o)  # leave the intersection centre line
        else:
            turtle.straight(to_c - (_LEFT_TURN_RADIUS_M - o))
            turtle.arc(_LEFT_TURN_RADIUS_M, left=True)
            turtle.straight(_LEFT_TURN_RADIUS_M - o)
        node = nxt
        if (len(turtle.xy) - 1) * PATH_STEP_M >= min_length_m:
            return turtle.path()
