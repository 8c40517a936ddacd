"""viz/bev.py: boxes land at the documented metre -> pixel mapping."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from bevforge.viz.bev import BACKGROUND, GT_COLOR, PRED_COLOR, BevView, draw_seg, new_canvas, render_bev

VIEW = BevView(range_m=51.2, size_px=1024)  # 10 px per metre


def _px(img: Image.Image, u: int, v: int) -> tuple[int, int, int]:
    return img.getpixel((u, v))


def _near(img: Image.Image, u: float, v: float, color, r: int = 1) -> bool:
    return any(
        _px(img, int(u) + du, int(v) + dv) == color for du in range(-r, r + 1) for dv in range(-r, r + 1)
    )


def test_viz_bev_mapping_round_trip() -> None:
    assert VIEW.px_per_m == 10.0
    np.testing.assert_allclose(VIEW.to_px(np.array([0.0, 0.0])), [512.0, 512.0])
    np.testing.assert_allclose(VIEW.to_px(np.array([10.0, 0.0])), [512.0, 412.0])  # forward = up
    np.testing.assert_allclose(VIEW.to_px(np.array([0.0, 10.0])), [412.0, 512.0])  # left = left
    xy = np.random.default_rng(0).uniform(-50, 50, (5, 2))
    np.testing.assert_allclose(VIEW.to_m(VIEW.to_px(xy)), xy)


def test_viz_bev_gt_box_red_at_expected_pixels() -> None:
    torch.manual_seed(0)
    # 4 m x 2 m box 10 m ahead, 5 m to the right, heading forward
    gt = np.array([[10.0, -5.0, 0.0, 4.0, 2.0, 1.5, 0.0, 0.0, 0.0]])
    img = render_bev(VIEW, gt_boxes=gt)
    # front edge x = 12 -> row 392, spanning y in [-6, -4] -> cols 552..572
    assert _near(img, 562, 392, GT_COLOR)
    assert _near(img, 552, 400, GT_COLOR)  # left side (y = -4)
    assert _near(img, 572, 420, GT_COLOR)  # right side (y = -6)
    assert _near(img, 560, 432, GT_COLOR)  # back edge x = 8 -> row 432
    assert _near(img, 562, 405, GT_COLOR)  # heading line centre -> front
    assert _px(img, 556, 425) == BACKGROUND  # inside the box, off the lines
    assert not _near(img, 562, 392, PRED_COLOR)


def test_viz_bev_pred_rotated_green_with_velocity() -> None:
    # heading +y (left): the length axis runs along y; velocity 5 m/s to the left
    pred = np.array([[0.0, 20.0, 0.0, 4.0, 2.0, 1.5, np.pi / 2, 0.0, 5.0]])
    img = render_bev(VIEW, pred_boxes=pred, pred_scores=np.array([0.9]))
    # front edge y = 22 -> col 292, x in [-1, 1] -> rows 502..522
    assert _near(img, 292, 512, PRED_COLOR)
    assert _near(img, 312, 502, PRED_COLOR)  # side x = 1 -> row 502
    assert _near(img, 270, 512, PRED_COLOR)  # velocity arrow reaches y = 25 -> col 262
    assert _px(img, 200, 512) == BACKGROUND
    assert not _near(img, 292, 512, GT_COLOR)


def test_viz_bev_seg_overlay_cell_mapping() -> None:
    pc_range = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)
    seg = np.zeros((1, 4, 4))  # 25.6 m cells; row = y, col = x
    seg[0, 3, 2] = 1.0  # y in [25.6, 51.2], x in [0, 25.6]
    img = draw_seg(new_canvas(VIEW, rings_every_m=1000), VIEW, seg, pc_range, alpha=0.5)
    on = VIEW.to_px(np.array([12.8, 38.4])).astype(int)  # cell centre
    off = VIEW.to_px(np.array([-12.8, 38.4])).astype(int)
    assert _px(img, *on) != BACKGROUND
    assert _px(img, *off) == BACKGROUND
