"""Map-seg targets: a known polygon (given in the lidar frame) lands in the expected BEV cells."""

from __future__ import annotations

import json
import math

import numpy as np
from scipy.ndimage import binary_dilation

from bevforge.data.map_targets import MapTargetBuilder

EMPTY_LAYERS = ["road_segment", "road_block", "lane", "ped_crossing", "walkway", "stop_line", "carpark_area"]
EMPTY_LAYERS += ["road_divider", "lane_divider", "traffic_light", "lane_connector"]


def _write_map(root, polygon_xy: np.ndarray) -> None:
    nodes = [{"token": f"n{i}", "x": float(x), "y": float(y)} for i, (x, y) in enumerate(polygon_xy)]
    expansion = {
        "version": "1.3",
        "canvas_edge": [1000.0, 1000.0],
        "node": nodes,
        "line": [],
        "polygon": [{"token": "p0", "exterior_node_tokens": [n["token"] for n in nodes], "holes": []}],
        "drivable_area": [{"token": "d0", "polygon_tokens": ["p0"]}],
        **{k: [] for k in EMPTY_LAYERS},
        "arcline_path_3": {},
        "connectivity": {},
    }
    (root / "maps" / "expansion").mkdir(parents=True)
    (root / "maps" / "expansion" / "singapore-onenorth.json").write_text(json.dumps(expansion))


def test_polygon_lands_in_expected_cells(tmp_path):
    yaw = math.radians(120.0)
    lidar2global = np.eye(4)
    lidar2global[:2, :2] = [[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]]
    lidar2global[:3, 3] = [300.0, 400.0, 1.8]
    # rectangle x in [4, 12], y in [-6, -2] metres in the LIDAR frame -> global
    rect = np.array([[4.0, -6.0], [12.0, -6.0], [12.0, -2.0], [4.0, -2.0]])
    rect_g = (lidar2global[:2, :2] @ rect.T).T + lidar2global[:2, 3]
    _write_map(tmp_path, rect_g)
    # grid: 32 x 32 cells of 1 m over [-16, 16]; row = y from y_min, col = x from x_min
    builder = MapTargetBuilder(tmp_path, ["drivable_area"], (-16, -16, -5, 16, 16, 3), (32, 32))
    mask = builder("singapore-onenorth", lidar2global)
    assert mask.shape == (1, 32, 32) and mask.dtype == np.float32
    expected = np.zeros((32, 32), dtype=bool)
    expected[16 - 6 : 16 - 2, 16 + 4 : 16 + 12] = True  # rows y in [-6, -2), cols x in [4, 12)
    inner = np.zeros_like(expected)
    inner[11:13, 21:27] = True  # safely inside: must be set
    assert mask[0][inner].all()
    near = binary_dilation(expected, structure=np.ones((3, 3), dtype=bool))
    assert not mask[0][~near].any()  # nothing more than one cell away from the rectangle
    # the mirror image (x -> -x or y -> -y) must be empty: catches flipped axes
    assert mask[0][16 + 2 : 16 + 6, :].sum() == 0 and mask[0][:, 16 - 12 : 16 - 4].sum() == 0


def test_line_layer_leaving_and_reentering_the_patch(tmp_path):
    """A divider that leaves and re-enters the patch (MultiLineString) must not crash (Shapely 2)."""
    nodes = [(-10.0, -3.0), (10.0, -3.0), (30.0, 0.0), (10.0, 3.0), (-10.0, 3.0)]  # a U through x=16
    _write_map(tmp_path, np.array([[-100.0, -100.0], [-99.0, -100.0], [-99.0, -99.0]]))
    path = tmp_path / "maps" / "expansion" / "singapore-onenorth.json"
    m = json.loads(path.read_text())
    m["node"] += [{"token": f"l{i}", "x": x, "y": y} for i, (x, y) in enumerate(nodes)]
    m["line"] = [{"token": "line0", "node_tokens": [f"l{i}" for i in range(len(nodes))]}]
    m["lane_divider"] = [{"token": "ld0", "line_token": "line0", "lane_divider_segments": []}]
    path.write_text(json.dumps(m))
    builder = MapTargetBuilder(
        tmp_path, ["drivable_area", "lane_divider"], (-16, -16, -5, 16, 16, 3), (32, 32)
    )
    mask = builder("singapore-onenorth", np.eye(4))
    assert mask.shape == (2, 32, 32) and mask[0].sum() == 0
    assert mask[1, 13, 7:15].all() and mask[1, 19, 7:15].all()  # y = -3 -> row 13, y = 3 -> row 19
    assert mask[1, 16, :10].sum() == 0  # nothing between the two branches
