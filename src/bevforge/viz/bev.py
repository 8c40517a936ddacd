"""Bird's-eye-view panel: predicted boxes (green), ground truth (red), ego vehicle, range rings, map seg.

Metre -> pixel mapping (:class:`BevView`): a square image of ``size_px`` pixels covers
``[-range_m, range_m]`` in lidar x and y, ego at the centre, **lidar +x (forward) points up** and
**lidar +y (left) points left**::

    s = size_px / (2 * range_m)          # pixels per metre
    u (column) = (range_m - y_m) * s
    v (row)    = (range_m - x_m) * s

Pixel ``(u, v)`` covers ``[u, u+1) x [v, v+1)`` in these continuous coordinates; ``int(floor)`` gives
the pixel index. Everything is drawn with Pillow (no antialiasing) so colours are exact.

Boxes are numpy ``[M, >=7]`` rows in our convention (``structures/boxes.py``: x, y, z, l, w, h, yaw,
vx, vy; lidar frame).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw

from bevforge.structures.boxes import box_corners

RGB = tuple[int, int, int]
PRED_COLOR: RGB = (0, 255, 0)
GT_COLOR: RGB = (255, 0, 0)
BACKGROUND: RGB = (24, 24, 24)
RING_COLOR: RGB = (80, 80, 80)
EGO_COLOR: RGB = (255, 255, 255)
EGO_LW_M = (4.08, 1.73)  # nuScenes Renault Zoe length, width in metres
#: One colour per map-segmentation class (drivable_area, ped_crossing, lane_divider, ...).
SEG_COLORS: tuple[RGB, ...] = ((70, 110, 200), (230, 160, 40), (200, 60, 200), (60, 200, 200))


@dataclass(frozen=True)
class BevView:
    """The metre -> pixel mapping of a BEV panel (see the module docstring)."""

    range_m: float = 51.2
    size_px: int = 800

    @property
    def px_per_m(self) -> float:
        return self.size_px / (2.0 * self.range_m)

    def to_px(self, xy_m: np.ndarray) -> np.ndarray:
        """[..., 2] lidar (x_m, y_m) -> [..., 2] continuous pixel (u col, v row)."""
        xy = np.asarray(xy_m, dtype=np.float64)
        s = self.px_per_m
        return np.stack([(self.range_m - xy[..., 1]) * s, (self.range_m - xy[..., 0]) * s], axis=-1)

    def to_m(self, uv_px: np.ndarray) -> np.ndarray:
        """[..., 2] pixel (u, v) -> [..., 2] lidar (x_m, y_m) (inverse of :meth:`to_px`)."""
        uv = np.asarray(uv_px, dtype=np.float64)
        s = self.px_per_m
        return np.stack([self.range_m - uv[..., 1] / s, self.range_m - uv[..., 0] / s], axis=-1)


def new_canvas(view: BevView, rings_every_m: float = 10.0) -> Image.Image:
    """A dark RGB canvas with range rings every ``rings_every_m`` metres (labelled) and the ego car."""
    img = Image.new("RGB", (view.size_px, view.size_px), BACKGROUND)
    draw_range_rings(img, view, rings_every_m)
    return img


def draw_range_rings(img: Image.Image, view: BevView, every_m: float = 10.0) -> None:
    draw = ImageDraw.Draw(img)
    c = view.to_px(np.zeros(2))
    r_m = every_m
    while r_m <= view.range_m * 1.42:
        r = r_m * view.px_per_m
        draw.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], outline=RING_COLOR, width=1)
        draw.text((c[0] + 3, c[1] - r + 2), f"{r_m:g} m", fill=RING_COLOR)
        r_m += every_m


def draw_ego(img: Image.Image, view: BevView) -> None:
    """The ego vehicle at the lidar origin, heading +x (up), as a filled outline with a nose line."""
    ego = np.array([[0.0, 0.0, 0.0, EGO_LW_M[0], EGO_LW_M[1], 1.5, 0.0]])
    draw = ImageDraw.Draw(img)
    corners = _bev_corners(ego)[0]
    pts = [tuple(p) for p in view.to_px(corners)]
    draw.polygon(pts, outline=EGO_COLOR, fill=(90, 90, 90))
    nose = view.to_px(np.array([[0.0, 0.0], [EGO_LW_M[0] / 2, 0.0]]))
    draw.line([tuple(nose[0]), tuple(nose[1])], fill=EGO_COLOR, width=1)


def _bev_corners(boxes: np.ndarray) -> np.ndarray:
    """[M, >=7] boxes -> [M, 4, 2] bottom (x, y) corners: front-left, front-right, back-right, back-left."""
    corners = box_corners(torch.as_tensor(np.asarray(boxes, dtype=np.float64)[:, :7]))  # [M, 8, 3]
    return corners[:, :4, :2].numpy()  # [M, 4, 2]


def draw_boxes(
    img: Image.Image,
    view: BevView,
    boxes: np.ndarray,
    color: RGB,
    width: int = 2,
    scores: np.ndarray | None = None,
    velocity_s: float = 1.0,
) -> None:
    """Draw box outlines, a heading line (centre -> front edge) and a velocity arrow.

    ``boxes``: [M, >=7] (with vx, vy in columns 7:9 when present); the arrow shows where the box centre
    would be after ``velocity_s`` seconds; NaN velocities are skipped. ``scores`` [M] are written beside
    the boxes when given.
    """
    b = np.asarray(boxes, dtype=np.float64)
    if b.size == 0:
        return
    b = b.reshape(-1, b.shape[-1])  # [M, >=7]
    assert b.shape[1] >= 7, f"boxes must be [M, >=7] (x, y, z, l, w, h, yaw, ...), got {b.shape}"
    draw = ImageDraw.Draw(img)
    corners_px = view.to_px(_bev_corners(b))  # [M, 4, 2]
    centers_px = view.to_px(b[:, :2])  # [M, 2]
    front_mid = b[:, :2] + 0.5 * b[:, 3:4] * np.stack([np.cos(b[:, 6]), np.sin(b[:, 6])], axis=-1)
    front_px = view.to_px(front_mid)  # [M, 2]
    for i in range(len(b)):
        pts = [tuple(p) for p in corners_px[i]]
        draw.line([*pts, pts[0]], fill=color, width=width)
        draw.line([tuple(centers_px[i]), tuple(front_px[i])], fill=color, width=width)
        if b.shape[1] >= 9 and np.all(np.isfinite(b[i, 7:9])) and np.hypot(*b[i, 7:9]) > 0.2:
            tip_m = b[i, :2] + b[i, 7:9] * velocity_s
            _arrow(draw, centers_px[i], view.to_px(tip_m), color)
        if scores is not None:
            draw.text(
                (corners_px[i, :, 0].max() + 2, corners_px[i, :, 1].min()), f"{scores[i]:.2f}", fill=color
            )


def _arrow(
    draw: ImageDraw.ImageDraw, start: np.ndarray, tip: np.ndarray, color: RGB, head_px: float = 6.0
) -> None:
    draw.line([tuple(start), tuple(tip)], fill=color, width=1)
    d = tip - start
    n = float(np.hypot(*d))
    if n < 1e-6:
        return
    d = d / n
    left = tip - head_px * d + 0.5 * head_px * np.array([-d[1], d[0]])
    right = tip - head_px * d - 0.5 * head_px * np.array([-d[1], d[0]])
    draw.polygon([tuple(tip), tuple(left), tuple(right)], fill=color)


def draw_seg(
    img: Image.Image,
    view: BevView,
    seg: np.ndarray,
    point_cloud_range: Sequence[float],
    alpha: float = 0.35,
    outline_only: bool = False,
    colors: Sequence[RGB] = SEG_COLORS,
) -> Image.Image:
    """Overlay map segmentation ``seg`` [S, bev_h, bev_w] (probabilities or {0,1}; > 0.5 = on).

    The grid follows the contract: row = y (row 0 at y_min), col = x (col 0 at x_min) over
    ``point_cloud_range`` (x_min, y_min, z_min, x_max, y_max, z_max). Predictions are usually drawn
    filled (``alpha`` blend), ground truth as the outline of each class region (``outline_only``).
    Returns the new image (Pillow blends are not in place).
    """
    seg = np.asarray(seg)
    assert seg.ndim == 3, f"seg must be [S, bev_h, bev_w], got {seg.shape}"
    s_cls, bev_h, bev_w = seg.shape
    x_min, y_min, _, x_max, y_max, _ = (float(v) for v in point_cloud_range)
    uu, vv = np.meshgrid(np.arange(view.size_px) + 0.5, np.arange(view.size_px) + 0.5)  # [P, P] each
    xy = view.to_m(np.stack([uu, vv], axis=-1))  # [P, P, 2] metres at pixel centres
    col = np.floor((xy[..., 0] - x_min) / (x_max - x_min) * bev_w).astype(np.int64)  # [P, P]
    row = np.floor((xy[..., 1] - y_min) / (y_max - y_min) * bev_h).astype(np.int64)  # [P, P]
    inside = (col >= 0) & (col < bev_w) & (row >= 0) & (row < bev_h)
    col, row = np.clip(col, 0, bev_w - 1), np.clip(row, 0, bev_h - 1)
    out = np.asarray(img, dtype=np.float32).copy()  # [P, P, 3]
    for k in range(s_cls):
        mask = (seg[k] > 0.5)[row, col] & inside  # [P, P]
        if outline_only:
            edge = np.zeros_like(mask)
            edge[1:, :] |= mask[1:, :] != mask[:-1, :]
            edge[:, 1:] |= mask[:, 1:] != mask[:, :-1]
            mask = edge & mask
            a = 1.0
        else:
            a = alpha
        color = np.array(colors[k % len(colors)], dtype=np.float32)
        out[mask] = (1 - a) * out[mask] + a * color
    return Image.fromarray(out.round().astype(np.uint8), "RGB")


def render_bev(
    view: BevView | None = None,
    pred_boxes: np.ndarray | None = None,
    gt_boxes: np.ndarray | None = None,
    pred_scores: np.ndarray | None = None,
    seg_pred: np.ndarray | None = None,
    seg_gt: np.ndarray | None = None,
    point_cloud_range: Sequence[float] = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0),
) -> Image.Image:
    """The full BEV panel: rings, map seg (pred filled, GT outlined), GT red, predictions green, ego."""
    view = view or BevView()
    img = new_canvas(view)
    if seg_pred is not None:
        img = draw_seg(img, view, seg_pred, point_cloud_range)
    if seg_gt is not None:
        img = draw_seg(img, view, seg_gt, point_cloud_range, outline_only=True)
    if gt_boxes is not None:
        draw_boxes(img, view, gt_boxes, GT_COLOR)
    if pred_boxes is not None:
        draw_boxes(img, view, pred_boxes, PRED_COLOR, scores=pred_scores)
    draw_ego(img, view)
    return img
