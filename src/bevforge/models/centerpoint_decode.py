"""Decoding of the CenterPoint head (official ``CenterPointBBoxCoder`` + BEVDet's per-task NMS).

Shape letters: B batch, K_t classes of task t, H/W = bev_h/bev_w, k peaks per task, N / P boxes / pairs.

Per task: sigmoid heatmap, top ``max_per_task`` (class, cell) peaks over ``K_t*H*W``, the regression
read at each peak's cell: ``x = x_min + (col + reg_x) * cell_x``, ``y = y_min + (row + reg_y) * cell_y``,
``z = height``, ``(l, w, h) = exp(dim)``, ``yaw = atan2(sin, cos)``, ``(vx, vy) = vel``. Peaks at or
below the score floor and centres outside ``post_center_range`` are dropped (official: in the coder,
before NMS). Then NMS within the task (class-agnostic, like the official ``nms_gpu``):

- ``"circle"`` (CenterPoint): greedy by score, suppress centres whose squared BEV distance is
  ``<= circle_radius[t]`` (m^2; the official ``circle_nms`` compares the squared distance).
- ``"rotate"`` (BEVDet Scale-NMS): every box's l and w are multiplied by its class's
  ``nms_rescale_factor`` (only for the comparison), then greedy rotated BEV IoU NMS with ``nms_thr[t]``
  over the best ``pre_max_size`` boxes. The IoU is exact for rotated rectangles
  (:func:`rotated_bev_iou_pairs`, vectorised convex clipping), as the official CUDA ``nms_gpu``.

Both keep at most ``post_max_size`` boxes per task. The tasks' boxes are merged, sorted by score and
cut to ``max_boxes``. Boxes come out in our convention (structures/boxes.py, gravity-centre z).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from bevforge.structures.boxes import wrap_angle


@dataclass(frozen=True)
class NMSSettings:
    """Decode settings of the head (official ``test_cfg``); per-task tuples have one value per task."""

    score_threshold: float
    max_per_task: int
    pre_max_size: int
    post_max_size: int
    nms_type: tuple[str, ...]
    nms_thr: tuple[float, ...]
    circle_radius: tuple[float, ...]
    nms_rescale_factor: tuple[float, ...]  # per class index (data.classes order)

    def check(self, num_tasks: int, num_classes: int) -> None:
        for key in ("nms_type", "nms_thr", "circle_radius"):
            if len(getattr(self, key)) != num_tasks:
                raise ValueError(f"{key} needs one value per task ({num_tasks}), got {getattr(self, key)}")
        if len(self.nms_rescale_factor) < num_classes:
            raise ValueError(
                f"nms_rescale_factor needs one value per class ({num_classes}), got {self.nms_rescale_factor}"
            )
        bad = [t for t in self.nms_type if t not in ("circle", "rotate")]
        if bad:
            raise ValueError(f"nms_type {bad} unknown; use 'circle' or 'rotate'")


# ------------------------------------------------------------------------------------------ NMS


def _greedy_keep(over: np.ndarray, max_keep: int) -> list[int]:
    """Greedy NMS over rows already sorted by score: ``over[i, j]`` = i suppresses j."""
    removed = np.zeros(over.shape[0], dtype=bool)
    keep: list[int] = []
    for i in range(over.shape[0]):
        if removed[i]:
            continue
        keep.append(i)
        if len(keep) >= max_keep:
            break
        removed |= over[i]
    return keep


def circle_nms(centers_xy: Tensor, scores: Tensor, radius_sq_m2: float, post_max_size: int) -> Tensor:
    """CenterPoint circle NMS: ``centers_xy [N, 2]`` m, ``scores [N]`` -> kept indices ``[n]`` int64 by
    descending score; a box is suppressed when its squared distance to a kept one is ``<= radius_sq_m2``."""
    order = scores.argsort(descending=True)  # [N]
    c = centers_xy[order].double()  # [N, 2]
    dist_sq = (c[:, None, :] - c[None, :, :]).pow(2).sum(-1)  # [N, N]
    keep = _greedy_keep((dist_sq <= radius_sq_m2).cpu().numpy(), post_max_size)
    return order[torch.as_tensor(keep, dtype=torch.long, device=order.device)]


def bev_corners(boxes_bev: Tensor) -> Tensor:
    """``[P, 5]`` (x, y, l, w, yaw) -> ``[P, 4, 2]`` corners, counter-clockwise."""
    x, y, l, w, yaw = boxes_bev.unbind(-1)
    sx = boxes_bev.new_tensor([0.5, -0.5, -0.5, 0.5])
    sy = boxes_bev.new_tensor([0.5, 0.5, -0.5, -0.5])
    lx, ly = l[:, None] * sx, w[:, None] * sy  # [P, 4] in the box frame
    c, s = yaw.cos()[:, None], yaw.sin()[:, None]
    return torch.stack([x[:, None] + lx * c - ly * s, y[:, None] + lx * s + ly * c], dim=-1)  # [P, 4, 2]


def _cross(a: Tensor, b: Tensor) -> Tensor:
    return a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0]


def _inside(points: Tensor, boxes_bev: Tensor, eps: float) -> Tensor:
    """``points [P, 4, 2]`` inside ``boxes_bev [P, 5]`` (closed, tolerance ``eps`` m) -> ``[P, 4]``."""
    d = points - boxes_bev[:, None, :2]  # [P, 4, 2]
    c, s = boxes_bev[:, None, 4].cos(), boxes_bev[:, None, 4].sin()
    u = d[..., 0] * c + d[..., 1] * s  # along l
    v = -d[..., 0] * s + d[..., 1] * c  # along w
    return (u.abs() <= boxes_bev[:, None, 2] / 2 + eps) & (v.abs() <= boxes_bev[:, None, 3] / 2 + eps)


def rotated_bev_iou_pairs(a: Tensor, b: Tensor, eps: float = 1e-6) -> Tensor:
    """BEV IoU of rotated rectangles, pairwise by row: ``a, b [P, 5]`` (x, y, l, w, yaw) -> ``[P]``.

    Intersection polygon = corners of one box inside the other + edge/edge crossings (24 candidates),
    sorted by angle around their mean and summed with the shoelace formula; unused slots repeat the
    first vertex so they add no area."""
    a, b = a.double(), b.double()
    ca, cb = bev_corners(a), bev_corners(b)  # [P, 4, 2]
    p, r = ca[:, :, None, :], (ca.roll(-1, dims=1) - ca)[:, :, None, :]  # edges of a: [P, 4, 1, 2]
    q, s = cb[:, None, :, :], (cb.roll(-1, dims=1) - cb)[:, None, :, :]  # edges of b: [P, 1, 4, 2]
    rxs = _cross(r, s)  # [P, 4, 4]
    qp = q - p  # [P, 4, 4, 2]
    denom = torch.where(rxs.abs() > 1e-12, rxs, torch.ones_like(rxs))
    t = _cross(qp, s) / denom  # [P, 4, 4] along a's edge
    u = _cross(qp, r) / denom  # along b's edge
    hit = (rxs.abs() > 1e-12) & (t >= -eps) & (t <= 1 + eps) & (u >= -eps) & (u <= 1 + eps)
    crossings = (p + t[..., None] * r).flatten(1, 2)  # [P, 16, 2]
    pts = torch.cat([ca, cb, crossings], dim=1)  # [P, 24, 2]
    valid = torch.cat([_inside(ca, b, eps), _inside(cb, a, eps), hit.flatten(1)], dim=1)  # [P, 24]
    pts = torch.where(valid[..., None], pts, torch.zeros_like(pts))
    n = valid.sum(1)  # [P]
    centre = pts.sum(1) / n.clamp(min=1)[:, None]  # [P, 2]
    d = pts - centre[:, None, :]  # [P, 24, 2]
    ang = torch.where(valid, torch.atan2(d[..., 1], d[..., 0]), torch.full_like(d[..., 0], 10.0))
    order = ang.argsort(dim=1)  # [P, 24]: valid vertices by angle, then the unused slots
    pts = torch.gather(pts, 1, order[..., None].expand(-1, -1, 2))  # [P, 24, 2]
    valid = torch.gather(valid, 1, order)  # [P, 24]
    pts = torch.where(valid[..., None], pts, pts[:, :1, :])  # unused slots repeat the first vertex
    inter = 0.5 * _cross(pts, pts.roll(-1, dims=1)).sum(1).abs()  # [P]
    inter = torch.where(n >= 3, inter, torch.zeros_like(inter))
    area_a, area_b = a[:, 2] * a[:, 3], b[:, 2] * b[:, 3]
    return (inter / (area_a + area_b - inter).clamp(min=1e-12)).float()


def rotated_nms(
    boxes_bev: Tensor,
    scores: Tensor,
    iou_threshold: float,
    pre_max_size: int,
    post_max_size: int,
    chunk_pairs: int = 65536,
) -> Tensor:
    """Greedy rotated BEV IoU NMS: ``boxes_bev [N, 5]`` (x, y, l, w, yaw), ``scores [N]`` -> kept indices
    by descending score. Only the best ``pre_max_size`` enter. The IoU is computed (in chunks) only for
    pairs whose circumscribed circles meet and whose area ratio allows an IoU above the threshold."""
    order = scores.argsort(descending=True)[:pre_max_size]  # [n]
    bx = boxes_bev[order].detach().double()  # [n, 5]
    n = bx.shape[0]
    radius = 0.5 * torch.hypot(bx[:, 2], bx[:, 3])  # [n]
    area = bx[:, 2] * bx[:, 3]  # [n]
    near = torch.cdist(bx[:, :2], bx[:, :2]) < radius[:, None] + radius[None, :]  # [n, n]
    near &= torch.minimum(area[:, None], area[None, :]) > iou_threshold * torch.maximum(
        area[:, None], area[None, :]
    )  # IoU <= min(area) / max(area)
    ii, jj = torch.triu(near, diagonal=1).nonzero(as_tuple=True)  # [P], i before j in score order
    over = torch.zeros(n, n, dtype=torch.bool, device=bx.device)
    for s in range(0, ii.numel(), chunk_pairs):
        i, j = ii[s : s + chunk_pairs], jj[s : s + chunk_pairs]
        over[i, j] = rotated_bev_iou_pairs(bx[i], bx[j]) > iou_threshold
    keep = _greedy_keep(over.cpu().numpy(), post_max_size)
    return order[torch.as_tensor(keep, dtype=torch.long, device=order.device)]


# ---------------------------------------------------------------------------------------- decode


def _task_boxes(
    preds: dict[str, Tensor], t: int, classes: Tensor, pc_range: tuple[float, ...], k_max: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Top peaks of task ``t`` -> boxes ``[B, k, 9]``, scores ``[B, k]``, labels ``[B, k]`` (class index)."""
    heat = preds[f"t{t}.heatmap"].float()
    assert heat.dim() == 4, f"t{t}.heatmap must be [B, K_t, H, W], got {tuple(heat.shape)}"
    B, K_t, H, W = heat.shape
    if K_t != classes.numel():
        raise ValueError(f"t{t}.heatmap has {K_t} channels but task {t} has {classes.numel()} classes")
    k = min(k_max, K_t * H * W)
    scores, index = heat.sigmoid().flatten(1).topk(k, dim=1)  # [B, k] over K_t*H*W
    cls = torch.div(index, H * W, rounding_mode="floor")  # [B, k]
    cell = index % (H * W)  # [B, k] = row * W + col
    row = torch.div(cell, W, rounding_mode="floor").float()
    col = (cell % W).float()

    def read(name: str) -> Tensor:
        v = preds[f"t{t}.{name}"].float().flatten(2)  # [B, c, H*W]
        return torch.gather(v, 2, cell[:, None, :].expand(-1, v.shape[1], -1))  # [B, c, k]

    reg, height, dim, rot, vel = (read(n) for n in ("reg", "height", "dim", "rot", "vel"))
    cell_x = (pc_range[3] - pc_range[0]) / W
    cell_y = (pc_range[4] - pc_range[1]) / H
    x = pc_range[0] + (col + reg[:, 0]) * cell_x  # [B, k] metres
    y = pc_range[1] + (row + reg[:, 1]) * cell_y
    yaw = wrap_angle(torch.atan2(rot[:, 0], rot[:, 1]))
    sizes = dim.exp()  # [B, 3, k] (l, w, h)
    boxes = torch.stack(
        [x, y, height[:, 0], sizes[:, 0], sizes[:, 1], sizes[:, 2], yaw, vel[:, 0], vel[:, 1]], dim=-1
    )  # [B, k, 9]
    return boxes, scores, classes[cls]


@torch.no_grad()
def decode_centerpoint(
    preds: dict[str, Tensor],
    tasks: tuple[tuple[int, ...], ...],
    pc_range: tuple[float, ...],
    nms: NMSSettings,
    max_boxes: int = 300,
    post_center_range: tuple[float, ...] | None = None,
    score_threshold: float = 0.0,
) -> list[dict[str, Tensor]]:
    """Head outputs (models/centerpoint_head.py) -> per batch element ``{"boxes": [N, 9], "scores": [N],
    "labels": [N] int64}`` sorted by score (module docstring)."""
    if post_center_range is not None and len(post_center_range) != 6:
        raise ValueError(f"post_center_range needs 6 numbers (min xyz, max xyz), got {post_center_range}")
    floor = max(float(score_threshold), nms.score_threshold)
    device = preds["t0.heatmap"].device
    factor = torch.tensor(nms.nms_rescale_factor, dtype=torch.float32, device=device)  # [K]
    B = preds["t0.heatmap"].shape[0]
    per_sample: list[list[tuple[Tensor, Tensor, Tensor]]] = [[] for _ in range(B)]
    for t, task_classes in enumerate(tasks):
        classes = torch.tensor(task_classes, dtype=torch.int64, device=device)
        boxes, scores, labels = _task_boxes(preds, t, classes, pc_range, nms.max_per_task)
        keep = scores > floor  # [B, k]
        if post_center_range is not None:
            rng = torch.tensor(post_center_range, dtype=boxes.dtype, device=device)
            keep &= ((boxes[..., :3] >= rng[:3]) & (boxes[..., :3] <= rng[3:])).all(-1)
        for b in range(B):
            bx, sc, lb = boxes[b][keep[b]], scores[b][keep[b]], labels[b][keep[b]]
            if nms.nms_type[t] == "circle":
                sel = circle_nms(bx[:, :2], sc, nms.circle_radius[t], nms.post_max_size)
            else:
                f = factor[lb][:, None]  # [n, 1] Scale-NMS: compare rescaled footprints
                bev = torch.cat([bx[:, :2], bx[:, 3:5] * f, bx[:, 6:7]], dim=1)  # [n, 5]
                sel = rotated_nms(bev, sc, nms.nms_thr[t], nms.pre_max_size, nms.post_max_size)
            per_sample[b].append((bx[sel], sc[sel], lb[sel]))
    out = []
    for parts in per_sample:
        boxes = torch.cat([p[0] for p in parts])  # [N, 9]
        scores = torch.cat([p[1] for p in parts])  # [N]
        labels = torch.cat([p[2] for p in parts])  # [N]
        order = scores.argsort(descending=True)[:max_boxes]
        out.append({"boxes": boxes[order], "scores": scores[order], "labels": labels[order]})
    return out
