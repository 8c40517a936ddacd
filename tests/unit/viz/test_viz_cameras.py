"""viz/cameras.py: projection through lidar2img, near-plane and border clipping, layout."""

from __future__ import annotations

import numpy as np
from PIL import Image

from bevforge.viz.cameras import (
    NUSC_LAYOUT,
    box_segments,
    clip_rect,
    compose_cameras,
    draw_boxes_camera,
    project_points,
)

W, H, F = 320, 180, 150.0
GREEN, RED = (0, 255, 0), (255, 0, 0)


def _front_lidar2img() -> np.ndarray:
    """A camera at the lidar origin looking along lidar +x (cam z = x, cam x = -y, cam y = -z)."""
    lidar2cam = np.eye(4)
    lidar2cam[:3, :3] = [[0, -1, 0], [0, 0, -1], [1, 0, 0]]
    k = np.eye(4)
    k[:3, :3] = [[F, 0, W / 2], [0, F, H / 2], [0, 0, 1]]
    return k @ lidar2cam


def test_viz_cameras_corner_lands_at_projected_pixel() -> None:
    l2i = _front_lidar2img()
    box = np.array([[20.0, 0.0, 0.0, 4.0, 2.0, 2.0, 0.0, 0.0, 0.0]])
    # corner 0 = front-left-bottom = (22, 1, -1): cam (-1, 1, 22)
    uv, depth = project_points(np.array([22.0, 1.0, -1.0]), l2i)
    np.testing.assert_allclose(uv, [W / 2 - F / 22, H / 2 + F / 22])
    assert depth == 22.0
    img = Image.new("RGB", (W, H))
    assert draw_boxes_camera(img, box, l2i, GREEN) == 1
    u, v = (int(round(c)) for c in uv)
    assert img.getpixel((u, v)) == GREEN
    # back-right-top corner (18, -1, 1): cam (1, -1, 18)
    assert img.getpixel((int(round(W / 2 + F / 18)), int(round(H / 2 - F / 18)))) == GREEN
    assert img.getpixel((5, 5)) == (0, 0, 0)


def test_viz_cameras_box_behind_camera_not_drawn() -> None:
    l2i = _front_lidar2img()
    behind = np.array([[-20.0, 0.0, 0.0, 4.0, 2.0, 2.0, 0.3, 0.0, 0.0]])
    img = Image.new("RGB", (W, H))
    assert draw_boxes_camera(img, behind, l2i, RED) == 0
    assert img.getbbox() is None  # nothing drawn at all
    assert box_segments(behind, l2i, (W, H)) == [[]]


def test_viz_cameras_near_plane_and_border_clipping() -> None:
    l2i = _front_lidar2img()
    # straddles the camera plane (x from -5 to 5) and is wide enough to leave the image sideways
    boxes = np.array([[0.0, 0.0, 0.0, 10.0, 30.0, 2.0, 0.0, 0.0, 0.0]])
    segs = box_segments(boxes, l2i, (W, H))[0]
    assert segs, "the part in front of the camera must be drawn"
    pts = np.array([p for s in segs for p in s])
    assert np.all(np.isfinite(pts))
    assert pts[:, 0].min() >= 0 and pts[:, 0].max() <= W - 1
    assert pts[:, 1].min() >= 0 and pts[:, 1].max() <= H - 1


def test_viz_cameras_clip_rect() -> None:
    seg = clip_rect(np.array([-10.0, 5.0]), np.array([20.0, 5.0]), 10, 10)
    assert seg == ((0.0, 5.0), (10.0, 5.0))
    assert clip_rect(np.array([-10.0, -5.0]), np.array([20.0, -5.0]), 10, 10) is None
    assert clip_rect(np.array([2.0, 2.0]), np.array([3.0, 4.0]), 10, 10) == ((2.0, 2.0), (3.0, 4.0))


def test_viz_cameras_layout_nuscenes_order() -> None:
    cams = [c for row in NUSC_LAYOUT for c in row]
    colors = {c: (10 * i + 40, 0, 0) for i, c in enumerate(cams)}
    images = {c: Image.new("RGB", (160, 90), colors[c]) for c in cams}
    grid = compose_cameras(images, tile_w=100, label=False)
    assert grid.size == (300, 112)  # 3 x 100 wide, 2 x round(100 * 90 / 160) high
    assert grid.getpixel((50, 28)) == colors["CAM_FRONT_LEFT"]
    assert grid.getpixel((150, 28)) == colors["CAM_FRONT"]
    assert grid.getpixel((250, 84)) == colors["CAM_BACK_RIGHT"]
    assert grid.getpixel((50, 84)) == colors["CAM_BACK_LEFT"]
