"""Ground-plane scenery of the road grid as planar quads for the renderer (global frame, z = 0).

Everything here follows the cross-section in :mod:`roads`, and the map expansion (:mod:`maps`) is
built from the same numbers, so map masks match the rendered roads.
"""

from __future__ import annotations

import functools

import numpy as np

from bevforge.data.synthetic import roads
from bevforge.data.synthetic.render import GroundQuads

GRASS = (92, 118, 78)
SIDEWALK = (168, 166, 160)
ROAD = (72, 72, 78)
WHITE = (235, 235, 235)
YELLOW = (230, 190, 40)
LINE_WIDTH_M = 0.15
DASH_M, DASH_PERIOD_M = 3.0, 6.0
ZEBRA_STRIPE_M, ZEBRA_PERIOD_M = 0.6, 1.2


def _rect(along0: float, along1: float, across0: float, across1: float, axis: int) -> np.ndarray:
    """Axis-aligned rectangle [4, 3]; ``axis`` 0: along = x, 1: along = y."""
    pts = [(along0, across0), (along1, across0), (along1, across1), (along0, across1)]
    out = np.zeros((4, 3))
    for i, (a, c) in enumerate(pts):
        out[i, axis], out[i, 1 - axis] = a, c
    return out


def segments_between_nodes(grid: roads.RoadGrid) -> list[tuple[float, float]]:
    """Along-road intervals between intersections (incl. the two end pieces to the map edge)."""
    h = roads.ROAD_HALF_WIDTH_M
    edges = [0.0] + [c for n in grid.node_coords for c in (n - h, n + h)] + [grid.extent_m]
    return [(edges[i], edges[i + 1]) for i in range(0, len(edges), 2)]


def build_ground(grid: roads.RoadGrid, centre_xy: np.ndarray, radius_m: float) -> GroundQuads:
    """All ground quads whose bounding box comes within ``radius_m`` of ``centre_xy``."""
    full = _ground_of_grid(grid)
    lo, hi = full.verts_global_m[:, :, :2].min(1), full.verts_global_m[:, :, :2].max(1)  # [P, 2]
    keep = np.all(centre_xy[None] > lo - radius_m, -1) & np.all(centre_xy[None] < hi + radius_m, -1)
    return GroundQuads(full.verts_global_m[keep], full.colours[keep], full.is_marking[keep])


@functools.lru_cache(maxsize=4)
def _ground_of_grid(grid: roads.RoadGrid) -> GroundQuads:
    quads: list[np.ndarray] = []
    colours: list[tuple[int, int, int]] = []
    marking: list[bool] = []

    def add(q: np.ndarray, colour: tuple[int, int, int], is_marking: bool) -> None:
        quads.append(q)
        colours.append(colour)
        marking.append(is_marking)

    e = grid.extent_m
    add(_rect(-300.0, e + 300.0, -300.0, e + 300.0, 0), GRASS, False)
    h, sw, sh = roads.ROAD_HALF_WIDTH_M, roads.SIDEWALK_OFFSET_M, roads.SIDEWALK_HALF_WIDTH_M
    for axis in (0, 1):
        for c in grid.node_coords:
            for side in (-1.0, 1.0):
                add(_rect(0.0, e, c + side * (sw - sh), c + side * (sw + sh), axis), SIDEWALK, False)
    for axis in (0, 1):
        for c in grid.node_coords:
            add(_rect(0.0, e, c - h, c + h, axis), ROAD, False)
    lw = LINE_WIDTH_M / 2
    segs = segments_between_nodes(grid)
    for axis in (0, 1):
        for c in grid.node_coords:
            for a0, a1 in segs:
                for side in (-1.0, 1.0):
                    # centre double yellow, kerb-strip solid white, dashed lane divider
                    add(_rect(a0, a1, c + side * 0.15 - lw, c + side * 0.15 + lw, axis), YELLOW, True)
                    k = c + side * (roads.LANE_OFFSETS_M[1] + roads.LANE_WIDTH_M / 2)
                    add(_rect(a0, a1, k - lw, k + lw, axis), WHITE, True)
                    d = c + side * roads.LANE_WIDTH_M
                    for s in np.arange(a0 + 1.0, a1 - DASH_M, DASH_PERIOD_M):
                        add(_rect(s, s + DASH_M, d - lw, d + lw, axis), WHITE, True)
    for axis in (0, 1):
        for c in grid.node_coords:
            for n in grid.node_coords:
                for side in (-1.0, 1.0):
                    a0, a1 = n + side * roads.CROSSING_RANGE_M[0], n + side * roads.CROSSING_RANGE_M[1]
                    lo, hi = min(a0, a1), max(a0, a1)
                    for s in np.arange(c - h + 0.3, c + h - ZEBRA_STRIPE_M, ZEBRA_PERIOD_M):
                        add(_rect(lo, hi, s, s + ZEBRA_STRIPE_M, axis), WHITE, True)
    return GroundQuads(
        verts_global_m=np.stack(quads),
        colours=np.array(colours, dtype=np.uint8),
        is_marking=np.array(marking),
    )
