"""The map of the synthetic world: the ``maps/<token>.png`` semantic prior (drivable area, 10 px/m,
row 0 = north) and the map expansion ``maps/expansion/<location>.json`` (version 1.3) that
``NuScenesMap`` reads. Both are built from the road cross-section in :mod:`roads`.

Dividers are straight 2-node lines (a clipped straight segment stays one LineString under Shapely 2).
"""

from __future__ import annotations

import functools
import io
import json
import math
from pathlib import Path

import numpy as np
from PIL import Image

from bevforge.data.synthetic import roads
from bevforge.data.synthetic.ground import segments_between_nodes
from bevforge.data.synthetic.tokens import token
from bevforge.io import atomic_write_bytes

#: real map-table tokens (= PNG file names) of the four nuScenes locations
MAP_TOKENS: dict[str, str] = {
    "boston-seaport": "36092f0b03a857c6a3403e25b4b7aab3",
    "singapore-hollandvillage": "37819e65e09e5547b8a3ceaefba56bb2",
    "singapore-onenorth": "53992ee3023e5494b90c316c183be829",
    "singapore-queenstown": "93406b464a165eaba6d9de76ca09f5da",
}
PNG_PX_PER_M = 10.0
MAP_VERSION = "1.3"


def write_mask_png(path: Path, grid: roads.RoadGrid) -> Path:
    """8-bit gray drivable-area mask over [0, extent]^2, 255 = road; row = H - y * 10."""
    return atomic_write_bytes(path, _mask_png_bytes(grid))


@functools.lru_cache(maxsize=2)
def _mask_png_bytes(grid: roads.RoadGrid) -> bytes:
    size = int(math.ceil(grid.extent_m * PNG_PX_PER_M))
    mask = np.zeros((size, size), dtype=np.uint8)  # [rows (north first), cols]
    h = roads.ROAD_HALF_WIDTH_M
    for c in grid.node_coords:
        lo, hi = int(round((c - h) * PNG_PX_PER_M)), int(round((c + h) * PNG_PX_PER_M))
        mask[:, lo:hi] = 255  # road along y at x = c
        mask[size - hi : size - lo, :] = 255  # road along x at y = c
    buf = io.BytesIO()
    Image.fromarray(mask, mode="L").save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


class _Builder:
    def __init__(self, seed: int, location: str):
        self.seed, self.location = seed, location
        self.layers: dict[str, list] = {
            k: []
            for k in (
                "node",
                "line",
                "polygon",
                "drivable_area",
                "road_segment",
                "road_block",
                "lane",
                "ped_crossing",
                "walkway",
                "stop_line",
                "carpark_area",
                "road_divider",
                "lane_divider",
                "traffic_light",
                "lane_connector",
            )
        }
        self.arclines: dict[str, list] = {}
        self.connectivity: dict[str, dict] = {}
        self._n = 0

    def tok(self, kind: str) -> str:
        self._n += 1
        return token(self.seed, "map", self.location, kind, self._n)

    def node(self, x: float, y: float) -> str:
        t = self.tok("node")
        self.layers["node"].append({"token": t, "x": round(x, 4), "y": round(y, 4)})
        return t

    def polygon(self, xy: list[tuple[float, float]]) -> tuple[str, list[str]]:
        nodes = [self.node(x, y) for x, y in xy]
        t = self.tok("polygon")
        self.layers["polygon"].append({"token": t, "exterior_node_tokens": nodes, "holes": []})
        return t, nodes

    def line(self, a: tuple[float, float], b: tuple[float, float]) -> tuple[str, list[str]]:
        nodes = [self.node(*a), self.node(*b)]
        t = self.tok("line")
        self.layers["line"].append({"token": t, "node_tokens": nodes})
        return t, nodes


def _xy(along: float, across: float, axis: int) -> tuple[float, float]:
    return (along, across) if axis == 0 else (across, along)


def _rect(a0: float, a1: float, c0: float, c1: float, axis: int) -> list[tuple[float, float]]:
    return [_xy(a0, c0, axis), _xy(a1, c0, axis), _xy(a1, c1, axis), _xy(a0, c1, axis)]


def build_expansion(grid: roads.RoadGrid, seed: int, location: str) -> dict:
    """The map-expansion JSON dict for the grid."""
    b = _Builder(seed, location)
    h, e = roads.ROAD_HALF_WIDTH_M, grid.extent_m
    da_polys = []
    for axis in (0, 1):
        for c in grid.node_coords:
            da_polys.append(b.polygon(_rect(0.0, e, c - h, c + h, axis))[0])
    da_tok = b.tok("drivable_area")
    b.layers["drivable_area"].append({"token": da_tok, "polygon_tokens": da_polys})
    for ix in grid.node_coords:
        for iy in grid.node_coords:
            poly, _ = b.polygon(_rect(ix - h, ix + h, iy - h, iy + h, 0))
            b.layers["road_segment"].append(
                {
                    "token": b.tok("road_segment"),
                    "polygon_token": poly,
                    "is_intersection": True,
                    "drivable_area_token": da_tok,
                }
            )
    segs = segments_between_nodes(grid)
    for axis in (0, 1):
        for c in grid.node_coords:
            for a0, a1 in segs:
                poly, _ = b.polygon(_rect(a0, a1, c - h, c + h, axis))
                rs_tok = b.tok("road_segment")
                b.layers["road_segment"].append(
                    {
                        "token": rs_tok,
                        "polygon_token": poly,
                        "is_intersection": False,
                        "drivable_area_token": da_tok,
                    }
                )
                line, _ = b.line(_xy(a0, c, axis), _xy(a1, c, axis))
                b.layers["road_divider"].append(
                    {"token": b.tok("road_divider"), "line_token": line, "road_segment_token": rs_tok}
                )
                for side in (-1.0, 1.0):
                    for off in (roads.LANE_WIDTH_M, 2 * roads.LANE_WIDTH_M):
                        line, nodes = b.line(_xy(a0, c + side * off, axis), _xy(a1, c + side * off, axis))
                        seg_type = (
                            "DOUBLE_DASHED_WHITE" if off == roads.LANE_WIDTH_M else "SINGLE_SOLID_WHITE"
                        )
                        b.layers["lane_divider"].append(
                            {
                                "token": b.tok("lane_divider"),
                                "line_token": line,
                                "lane_divider_segments": [
                                    {"node_token": t, "segment_type": seg_type} for t in nodes
                                ],
                            }
                        )
                    # sidewalk strip of this side
                    s0 = c + side * (roads.SIDEWALK_OFFSET_M - roads.SIDEWALK_HALF_WIDTH_M)
                    s1 = c + side * (roads.SIDEWALK_OFFSET_M + roads.SIDEWALK_HALF_WIDTH_M)
                    poly, _ = b.polygon(_rect(a0, a1, min(s0, s1), max(s0, s1), axis))
                    b.layers["walkway"].append({"token": b.tok("walkway"), "polygon_token": poly})
                _add_lanes(b, axis, c, a0, a1)
    for axis in (0, 1):
        for c in grid.node_coords:
            for n in grid.node_coords:
                for side in (-1.0, 1.0):
                    a0, a1 = n + side * roads.CROSSING_RANGE_M[0], n + side * roads.CROSSING_RANGE_M[1]
                    poly, _ = b.polygon(_rect(min(a0, a1), max(a0, a1), c - h, c + h, axis))
                    b.layers["ped_crossing"].append(
                        {"token": b.tok("ped_crossing"), "polygon_token": poly, "road_segment_token": ""}
                    )
    out: dict = {"version": MAP_VERSION, "canvas_edge": [e, e]}
    out.update(b.layers)
    out["arcline_path_3"] = b.arclines
    out["connectivity"] = b.connectivity
    return out


def _add_lanes(b: _Builder, axis: int, c: float, a0: float, a1: float) -> None:
    """Four lanes (two per direction) on one road segment, each with a straight arcline path."""
    for direction in (1.0, -1.0):
        for off in roads.LANE_OFFSETS_M:
            # right of the travel direction: for +along that is -across (axis 0) / +across (axis 1)
            right = -direction if axis == 0 else direction
            centre = c + right * off
            lo, hi = centre - roads.LANE_WIDTH_M / 2, centre + roads.LANE_WIDTH_M / 2
            poly, nodes = b.polygon(_rect(a0, a1, lo, hi, axis))
            start, end = (a0, a1) if direction > 0 else (a1, a0)
            yaw = math.atan2(direction, 0.0) if axis == 1 else (0.0 if direction > 0 else math.pi)
            lane_tok = b.tok("lane")
            b.layers["lane"].append(
                {
                    "token": lane_tok,
                    "polygon_token": poly,
                    "lane_type": "CAR",
                    "from_edge_line_token": "",
                    "to_edge_line_token": "",
                    "left_lane_divider_segments": [{"node_token": nodes[0], "segment_type": "NIL"}],
                    "right_lane_divider_segments": [{"node_token": nodes[1], "segment_type": "NIL"}],
                }
            )
            sx, sy = _xy(start, centre, axis)
            ex, ey = _xy(end, centre, axis)
            b.arclines[lane_tok] = [
                {
                    "start_pose": [sx, sy, yaw],
                    "end_pose": [ex, ey, yaw],
                    "shape": "LSR",
                    "radius": 999.0,
                    "segment_length": [0.0, abs(end - start), 0.0],
                }
            ]
            b.connectivity[lane_tok] = {"incoming": [], "outgoing": []}


def write_expansion(path: Path, grid: roads.RoadGrid, seed: int, location: str) -> Path:
    return atomic_write_bytes(path, json.dumps(build_expansion(grid, seed, location)).encode("utf-8"))
