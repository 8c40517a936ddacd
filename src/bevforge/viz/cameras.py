"""Boxes projected into the six camera images, and the nuScenes 2 x 3 camera layout.

A lidar point ``p`` maps to the image through the 4x4 ``lidar2img`` of the infos / ``Batch``:
``q = lidar2img @ [x, y, z, 1]``, depth ``q[2]`` (metres along the optical axis), pixel
``(u, v) = (q[0] / q[2], q[1] / q[2])`` (OpenCV convention: pixel centres at integer coordinates).
Because the map is linear in homogeneous coordinates, a box edge is clipped at the near plane
(``depth = near_m``) by interpolating ``q`` along the edge, then clipped to the image rectangle
(Liang-Barsky). Edges wholly behind the camera disappear, so a box behind a camera draws nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from bevforge.structures.boxes import box_corners

RGB = tuple[int, int, int]
#: nuScenes display layout: top row front-left, front, front-right; bottom row back-left, back, back-right.
NUSC_LAYOUT: tuple[tuple[str, ...], ...] = (
    ("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT"),
    ("CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"),
)
NEAR_M = 0.1
#: The 12 edges of :func:`box_corners` (bottom face 0-3, top face 4-7, then the verticals).
BOX_EDGES: tuple[tuple[int, int], ...] = (
    (0, 1), (1, 2), (2, 3), (3, 0),
    (4, 5), (5, 6), (6, 7), (7, 4),
    (0, 4), (1, 5), (2, 6), (3, 7),
)  # fmt: skip
#: The front face (corners 0, 1, 5, 4) gets a cross so the heading reads in the image.
FRONT_CROSS: tuple[tuple[int, int], ...] = ((0, 5), (1, 4))

TITLE_H = 20  # pixels of the title bar above a composed sample

Segment = tuple[tuple[float, float], tuple[float, float]]


def project_points(points_lidar: np.ndarray, lidar2img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[..., 3] lidar points -> ([..., 2] pixels (u, v), [...] depth in metres). Pixels are NaN-free only
    where depth > 0."""
    pts = np.asarray(points_lidar, dtype=np.float64)
    homog = np.concatenate([pts, np.ones_like(pts[..., :1])], axis=-1)  # [..., 4]
    q = homog @ np.asarray(lidar2img, dtype=np.float64).T  # [..., 4]
    depth = q[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = q[..., :2] / depth[..., None]  # [..., 2]
    return uv, depth


def clip_near(q0: np.ndarray, q1: np.ndarray, near_m: float = NEAR_M) -> tuple[np.ndarray, np.ndarray] | None:
    """Clip the homogeneous image-space segment q0-q1 ([4] each, depth = q[2]) to depth >= near_m."""
    d0, d1 = q0[2], q1[2]
    if d0 < near_m and d1 < near_m:
        return None
    if d0 < near_m:
        q0 = q0 + (near_m - d0) / (d1 - d0) * (q1 - q0)
    elif d1 < near_m:
        q1 = q1 + (near_m - d1) / (d0 - d1) * (q0 - q1)
    return q0, q1


def clip_rect(a: np.ndarray, b: np.ndarray, width: float, height: float) -> Segment | None:
    """Liang-Barsky clip of the 2D segment a-b to [0, width] x [0, height]; None when outside."""
    t0, t1 = 0.0, 1.0
    d = b - a
    for p, q in ((-d[0], a[0]), (d[0], width - a[0]), (-d[1], a[1]), (d[1], height - a[1])):
        if abs(p) < 1e-12:
            if q < 0:
                return None
            continue
        t = q / p
        if p < 0:
            t0 = max(t0, t)
        else:
            t1 = min(t1, t)
        if t0 > t1:
            return None
    s, e = a + t0 * d, a + t1 * d
    return (float(s[0]), float(s[1])), (float(e[0]), float(e[1]))


def box_segments(
    boxes: np.ndarray,
    lidar2img: np.ndarray,
    image_wh: tuple[int, int],
    near_m: float = NEAR_M,
    front_cross: bool = True,
) -> list[list[Segment]]:
    """Per box, the visible 2D edge segments (pixels) after near-plane and image-border clipping.

    ``boxes`` [M, >=7] in the lidar frame; ``lidar2img`` [4, 4]; ``image_wh`` = (W, H).
    """
    b = np.asarray(boxes, dtype=np.float64)
    if b.size == 0:
        return []
    b = b.reshape(-1, b.shape[-1])  # [M, >=7]
    corners = box_corners(torch.as_tensor(b[:, :7])).numpy()  # [M, 8, 3]
    homog = np.concatenate([corners, np.ones_like(corners[..., :1])], axis=-1)  # [M, 8, 4]
    q = homog @ np.asarray(lidar2img, dtype=np.float64).T  # [M, 8, 4]
    w, h = image_wh
    edges = BOX_EDGES + (FRONT_CROSS if front_cross else ())
    out: list[list[Segment]] = []
    for m in range(len(b)):
        segs: list[Segment] = []
        for i, j in edges:
            clipped = clip_near(q[m, i], q[m, j], near_m)
            if clipped is None:
                continue
            a, c = (x[:2] / x[2] for x in clipped)
            seg = clip_rect(a, c, w - 1, h - 1)
            if seg is not None:
                segs.append(seg)
        out.append(segs)
    return out


def draw_boxes_camera(
    img: Image.Image, boxes: np.ndarray, lidar2img: np.ndarray, color: RGB, width: int = 2
) -> int:
    """Draw ``boxes`` [M, >=7] (lidar frame) into ``img`` through ``lidar2img``; returns boxes drawn."""
    drawn = 0
    draw = ImageDraw.Draw(img)
    for segs in box_segments(boxes, lidar2img, img.size):
        for s, e in segs:
            draw.line([s, e], fill=color, width=width)
        drawn += bool(segs)
    return drawn


def placeholder(image_wh: tuple[int, int], text: str) -> Image.Image:
    """A grey image with ``text`` (for a camera image that could not be read)."""
    img = Image.new("RGB", image_wh, (60, 60, 60))
    ImageDraw.Draw(img).text((10, 10), text, fill=(255, 255, 255))
    return img


def compose_cameras(
    images: Mapping[str, Image.Image],
    tile_w: int = 480,
    layout: Sequence[Sequence[str]] = NUSC_LAYOUT,
    label: bool = True,
) -> Image.Image:
    """Tile the camera images in ``layout`` (default nuScenes 2 x 3), each resized to ``tile_w`` wide.

    A camera missing from ``images`` gets a dark tile. Tile height follows the first image's aspect.
    """
    first = next(iter(images.values()), None)
    aspect = first.height / first.width if first is not None else 9 / 16
    tile_h = int(round(tile_w * aspect))
    rows, cols = len(layout), max(len(r) for r in layout)
    canvas = Image.new("RGB", (cols * tile_w, rows * tile_h), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    for r, row in enumerate(layout):
        for c, cam in enumerate(row):
            x0, y0 = c * tile_w, r * tile_h
            if cam in images:
                canvas.paste(images[cam].convert("RGB").resize((tile_w, tile_h), Image.BILINEAR), (x0, y0))
            if label:
                draw.rectangle([x0, y0, x0 + 8 * len(cam) + 6, y0 + 14], fill=(0, 0, 0))
                draw.text((x0 + 3, y0 + 2), cam, fill=(255, 255, 255))
    return canvas


def compose_sample(bev: Image.Image, cameras: Image.Image, title: str = "") -> Image.Image:
    """BEV panel (scaled to the camera grid's height) on the left, camera grid on the right, title above."""
    h = cameras.height
    bev_s = bev.resize((h, h), Image.BILINEAR) if bev.height != h else bev
    title_h = TITLE_H if title else 0
    out = Image.new("RGB", (h + cameras.width, h + title_h), (0, 0, 0))
    out.paste(bev_s, (0, title_h))
    out.paste(cameras, (h, title_h))
    if title:
        ImageDraw.Draw(out).text((5, 4), title, fill=(255, 255, 255))
    return out
