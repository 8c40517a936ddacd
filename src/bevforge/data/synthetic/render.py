"""Camera images rendered from the 3D scene with numpy + PIL polygons.

Sky, then the ground quads (grass, sidewalks, roads, lane markings, zebra crossings) in list order
(painter's order: PIL polygons), then every object as a cuboid whose visible faces are shaded by their
normal, rasterised into a z-buffer (numpy) so occlusion is exact, with darker 1-px edges. Polygons
are clipped to the near plane in 3D before the pinhole projection, so every straight edge stays
straight. Pixel (row j, col i) samples the image point (u, v) = (i, j), as the devkit projects.
The projection uses the caller's intrinsics and camera->global transform: the numbers in the tables.

Frames: camera x right, y down, z forward; pixels (u, v) with u to the right, v down.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from bevforge.geometry.transforms import rigid_inverse

NEAR_M = 0.1
MARKING_CULL_M = 70.0
_SUN_DIR = np.array([0.4, 0.3, 0.866]) / np.linalg.norm([0.4, 0.3, 0.866])
_SKY_TOP = np.array([110.0, 160.0, 225.0])
_SKY_HORIZON = np.array([205.0, 220.0, 235.0])

# faces of the cuboid: (axis, sign); corners are indexed by bits (x: 1, y: 2, z: 4), bit set = +half
_FACES = ((0, 1), (0, -1), (1, 1), (1, -1), (2, 1))  # the bottom face is never seen from above ground
_FACE_LOOPS: dict[tuple[int, int], list[int]] = {}
for _axis, _sign in _FACES:
    _b, _c = [a for a in range(3) if a != _axis]
    _loop = []
    for sb, sc in ((0, 0), (1, 0), (1, 1), (0, 1)):
        idx = (1 << _axis if _sign > 0 else 0) | (sb << _b) | (sc << _c)
        _loop.append(idx)
    _FACE_LOOPS[(_axis, _sign)] = _loop


@dataclass
class GroundQuads:
    """P planar ground polygons with 4 vertices each, drawn in order."""

    verts_global_m: np.ndarray  # [P, 4, 3]
    colours: np.ndarray  # [P, 3] uint8
    is_marking: np.ndarray  # [P] bool: culled beyond MARKING_CULL_M


@dataclass
class Cuboids:
    """M boxes in the global frame at one instant."""

    centres_m: np.ndarray  # [M, 3] gravity centres
    size_wlh_m: np.ndarray  # [M, 3]
    yaw_rad: np.ndarray  # [M]
    colours: np.ndarray  # [M, 3] uint8 base colour


def box_corners_global(c: Cuboids) -> np.ndarray:
    """[M, 8, 3] corners; corner i has +half extent on axis a iff bit a of i is set (x=length)."""
    bits = np.array([[(i >> a) & 1 for a in range(3)] for i in range(8)], dtype=np.float64) * 2 - 1  # [8, 3]
    half = c.size_wlh_m[:, [1, 0, 2]] / 2.0  # [M, 3] (l, w, h)
    local = bits[None] * half[:, None, :]  # [M, 8, 3]
    cos, sin = np.cos(c.yaw_rad)[:, None], np.sin(c.yaw_rad)[:, None]
    x = local[..., 0] * cos - local[..., 1] * sin
    y = local[..., 0] * sin + local[..., 1] * cos
    return np.stack([x, y, local[..., 2]], -1) + c.centres_m[:, None, :]  # [M, 8, 3]


def sky_background(width: int, height: int, cy: float) -> np.ndarray:
    """[H, W, 3] uint8 gradient, horizon at row ``cy`` (cameras look horizontally)."""
    rows = np.clip(np.arange(height, dtype=np.float64) / max(cy, 1.0), 0.0, 1.0)[:, None]  # [H, 1]
    col = _SKY_TOP[None] * (1 - rows) + _SKY_HORIZON[None] * rows  # [H, 3]
    return np.broadcast_to(col[:, None, :], (height, width, 3)).astype(np.uint8).copy()


def _clip_near(poly: np.ndarray) -> np.ndarray:
    """Sutherland-Hodgman clip of a [n, 3] camera-frame polygon to z >= NEAR_M."""
    out = []
    n = len(poly)
    for i in range(n):
        a, b = poly[i], poly[(i + 1) % n]
        ina, inb = a[2] >= NEAR_M, b[2] >= NEAR_M
        if ina:
            out.append(a)
        if ina != inb:
            t = (NEAR_M - a[2]) / (b[2] - a[2])
            out.append(a + t * (b - a))
    return np.array(out).reshape(-1, 3)


def _project(k: np.ndarray, pts_cam: np.ndarray) -> np.ndarray:
    """[..., 3] camera-frame points (z > 0) -> [..., 2] pixels."""
    uvw = pts_cam @ k.T
    return uvw[..., :2] / uvw[..., 2:3]


def _polygon_area_clipped(uv: np.ndarray, width: int, height: int) -> float:
    """Area of the convex hull of [n, 2] points clipped to the image rectangle (pixels^2)."""
    pts = sorted({(float(p[0]), float(p[1])) for p in uv})
    if len(pts) < 3:
        return 0.0

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list = []
    upper: list = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    poly = lower[:-1] + upper[:-1]
    for axis, bound, keep_less in (
        (0, 0.0, False),
        (0, float(width), True),
        (1, 0.0, False),
        (1, float(height), True),
    ):
        if not poly:
            return 0.0
        new = []
        for i in range(len(poly)):
            a, b = poly[i], poly[(i + 1) % len(poly)]
            ina = a[axis] <= bound if keep_less else a[axis] >= bound
            inb = b[axis] <= bound if keep_less else b[axis] >= bound
            if ina:
                new.append(a)
            if ina != inb:
                t = (bound - a[axis]) / (b[axis] - a[axis])
                new.append((a[0] + t * (b[0] - a[0]), a[1] + t * (b[1] - a[1])))
        poly = new
    if len(poly) < 3:
        return 0.0
    xy = np.array(poly)
    return 0.5 * abs(float(np.dot(xy[:, 0], np.roll(xy[:, 1], -1)) - np.dot(xy[:, 1], np.roll(xy[:, 0], -1))))


def _off_screen(uv: np.ndarray, width: int, height: int) -> np.ndarray:
    """[P, n, 2] -> [P] True where all vertices lie beyond one image border."""
    return (
        (uv[..., 0] < 0).all(-1)
        | (uv[..., 0] > width).all(-1)
        | (uv[..., 1] < 0).all(-1)
        | (uv[..., 1] > height).all(-1)
    )


def render_camera(
    ground: GroundQuads,
    boxes: Cuboids,
    intrinsics: np.ndarray,
    cam2global: np.ndarray,
    width: int,
    height: int,
    sky: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render one camera.

    Returns (image [H, W, 3] uint8 RGB, visible_px [M] pixels of each box not hidden by nearer boxes,
    silhouette_px [M] pixels the box would cover alone).
    """
    global2cam = rigid_inverse(cam2global)
    rot, trans = global2cam[:3, :3], global2cam[:3, 3]
    cam_pos = cam2global[:3, 3]
    img = Image.fromarray(sky)
    draw = ImageDraw.Draw(img)

    # ground: vectorised transform and culling, python clipping only for quads crossing the near plane
    g_cam = ground.verts_global_m @ rot.T + trans  # [P, 4, 3]
    z = g_cam[..., 2]
    dist = np.linalg.norm(ground.verts_global_m.mean(1)[:, :2] - cam_pos[None, :2], axis=-1)  # [P]
    keep = ~(z < NEAR_M).all(-1) & ~(ground.is_marking & (dist > MARKING_CULL_M))
    front = (z >= NEAR_M).all(-1)
    uv_all = np.zeros(g_cam.shape[:2] + (2,))
    uv_all[front] = _project(intrinsics, g_cam[front])
    keep &= ~(front & _off_screen(uv_all, width, height))
    for p in np.nonzero(keep)[0]:
        if front[p]:
            uv = uv_all[p]
        else:
            clipped = _clip_near(g_cam[p])
            if len(clipped) < 3:
                continue
            uv = _project(intrinsics, clipped)
        draw.polygon([tuple(q) for q in uv.tolist()], fill=tuple(int(c) for c in ground.colours[p]))

    # objects: z-buffered rasterisation of the visible faces (exact occlusion, unlike a painter's sort)
    m = len(boxes.centres_m)
    visible_px = np.zeros(m, dtype=np.int64)
    silhouette_px = np.zeros(m, dtype=np.float64)
    rgb = np.array(img)  # [H, W, 3]
    if m == 0:
        return rgb, visible_px, silhouette_px
    inv_depth = np.zeros((height, width))  # 1 / z of the nearest face so far (0 = nothing)
    ids = np.zeros((height, width), dtype=np.int64)  # object index + 1
    corners = box_corners_global(boxes)  # [M, 8, 3]
    corners_cam = corners @ rot.T + trans  # [M, 8, 3]
    cos, sin = np.cos(boxes.yaw_rad), np.sin(boxes.yaw_rad)
    axes = np.stack(
        [
            np.stack([cos, sin, 0 * cos], -1),
            np.stack([-sin, cos, 0 * cos], -1),
            np.tile([0.0, 0.0, 1.0], (m, 1)),
        ],
        1,
    )  # [M, 3 axes, 3] box axes in the global frame
    half = boxes.size_wlh_m[:, [1, 0, 2]] / 2.0  # [M, 3]
    k_inv = np.array(
        [
            [1 / intrinsics[0, 0], 0.0, -intrinsics[0, 2] / intrinsics[0, 0]],
            [0.0, 1 / intrinsics[1, 1], -intrinsics[1, 2] / intrinsics[1, 1]],
            [0.0, 0.0, 1.0],
        ]
    )  # pinhole without skew
    for i in range(m):
        quick = corners_cam[i]
        if (quick[:, 2] < NEAR_M).all():
            continue
        if (quick[:, 2] >= NEAR_M).all() and _off_screen(_project(intrinsics, quick)[None], width, height)[0]:
            continue
        hull_pts = []
        for axis, sign in _FACES:
            normal = axes[i, axis] * sign
            face_centre = boxes.centres_m[i] + normal * half[i, axis]
            if float(np.dot(cam_pos - face_centre, normal)) <= 0:
                continue  # back face
            poly = _clip_near(corners_cam[i, _FACE_LOOPS[(axis, sign)]])
            if len(poly) < 3:
                continue
            uv = _project(intrinsics, poly)
            hull_pts.append(uv)
            shade = 0.45 + 0.55 * max(0.0, float(np.dot(normal, _SUN_DIR)))
            normal_cam = rot @ normal
            plane_d = float(normal_cam @ poly[0])  # face plane: normal_cam . X = plane_d (camera frame)
            _raster_face(
                rgb, inv_depth, ids, uv, normal_cam @ k_inv / plane_d, boxes.colours[i] * shade, i + 1
            )
        if hull_pts:
            silhouette_px[i] = _polygon_area_clipped(np.concatenate(hull_pts), width, height)
    counts = np.bincount(ids.ravel(), minlength=m + 1)
    visible_px[:] = counts[1 : m + 1]
    return rgb, visible_px, silhouette_px


def _raster_face(
    rgb: np.ndarray,
    inv_depth: np.ndarray,
    ids: np.ndarray,
    uv: np.ndarray,
    inv_depth_coef: np.ndarray,
    colour: np.ndarray,
    obj_id: int,
) -> None:
    """Fill the convex polygon ``uv`` [n, 2] where it is nearer than the z-buffer.

    Pixel (row j, col i) samples the point (u, v) = (i, j). 1/z is affine in (u, v) on a plane:
    ``1/z = inv_depth_coef . (u, v, 1)``. Pixels within 1 px of an edge get a darker outline colour.
    """
    height, width = inv_depth.shape
    u0, v0 = max(int(np.floor(uv[:, 0].min())), 0), max(int(np.floor(uv[:, 1].min())), 0)
    u1, v1 = min(int(np.ceil(uv[:, 0].max())), width - 1), min(int(np.ceil(uv[:, 1].max())), height - 1)
    if u1 < u0 or v1 < v0:
        return
    nxt = np.concatenate([uv[1:], uv[:1]])  # [n, 2] edge ends
    area2 = float(np.sum(uv[:, 0] * nxt[:, 1] - uv[:, 1] * nxt[:, 0]))
    if abs(area2) < 1e-9:
        return
    e = nxt - uv  # [n, 2]
    length = np.hypot(e[:, 0], e[:, 1])
    ok = length > 1e-9
    e, a, length = e[ok], uv[ok], length[ok] * (1.0 if area2 > 0 else -1.0)
    us = np.arange(u0, u1 + 1, dtype=np.float64)[None, None, :]  # [1, 1, w]
    vs = np.arange(v0, v1 + 1, dtype=np.float64)[None, :, None]  # [1, h, 1]
    # signed distance (px, > 0 inside) of every pixel to every edge line, then to the nearest edge
    coef_v = (e[:, 0] / length)[:, None, None]
    coef_u = (-e[:, 1] / length)[:, None, None]
    offset = ((e[:, 1] * a[:, 0] - e[:, 0] * a[:, 1]) / length)[:, None, None]
    dist = (coef_v * vs + coef_u * us + offset).min(0)  # [h, w]
    inside = dist >= -0.5
    if not inside.any():
        return
    inv_z = inv_depth_coef[0] * us[0] + inv_depth_coef[1] * vs[0] + inv_depth_coef[2]  # [h, w]
    win = inside & (inv_z > inv_depth[v0 : v1 + 1, u0 : u1 + 1])
    if not win.any():
        return
    inv_depth[v0 : v1 + 1, u0 : u1 + 1][win] = inv_z[win]
    ids[v0 : v1 + 1, u0 : u1 + 1][win] = obj_id
    fill = np.clip(colour, 0, 255).astype(np.uint8)
    edge = np.clip(colour * 0.6, 0, 255).astype(np.uint8)
    patch = rgb[v0 : v1 + 1, u0 : u1 + 1]
    patch[win] = np.where((dist[win] < 0.5)[:, None], edge[None], fill[None])
