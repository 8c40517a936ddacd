"""CenterPoint training targets (official ``CenterHead.get_targets``), vectorised over the batch.

Shape letters: B batch, M boxes of a sample, O boxes of the batch, K_t classes of task t, H/W =
bev_h/bev_w (the head's grid), S regression slots per sample and task (<= ``max_objs``), E = 10.

Per task t and sample:
- ``heatmap [K_t, H, W]``: for every box of the task whose centre cell lies on the grid, a square
  ``(2r+1)^2`` Gaussian ``exp(-(dx^2 + dy^2) / (2 sigma^2))``, ``sigma = (2r+1)/6``, peak 1 at the centre
  cell, merged by maximum; ``r = max(min_radius, int(gaussian_radius((l, w) in cells, overlap)))``.
- ``box_code [S, 10]``: (sub-cell offset x, y in cells, z m, log l, log w, log h, sin yaw, cos yaw,
  vx, vy) per box, ``index [S]`` = ``row * W + col`` of its centre cell, ``mask [S]`` = a real box.

Grid as docs/CONTRACTS.md: col = floor((x - x_min) / cell_x), row = floor((y - y_min) / cell_y).
Slots: boxes of a task keep their order in the sample; at most ``max_objs`` per sample and task; ``S`` is
the batch's largest count (at least 1, so every regression branch stays in the graph).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from bevforge.models.centerpoint_head import REG_HEADS


@dataclass
class TaskTargets:
    """Targets of one task for a batch."""

    heatmap: Tensor  # [B, K_t, H, W] in [0, 1]
    box_code: Tensor  # [B, S, 10] (NaN velocities kept: the loss masks them)
    index: Tensor  # [B, S] int64, row * W + col
    mask: Tensor  # [B, S] bool


def gaussian_radius(height: Tensor, width: Tensor, min_overlap: float = 0.1) -> Tensor:
    """CenterPoint/mmdet3d ``gaussian_radius`` (CornerNet's three cases, with their ``/2`` as in the
    official code), element-wise over box sizes in cells."""
    hw, s = height * width, height + width
    r1 = (s + torch.sqrt(s**2 - 4 * hw * (1 - min_overlap) / (1 + min_overlap))) / 2
    r2 = (2 * s + torch.sqrt((2 * s) ** 2 - 16 * (1 - min_overlap) * hw)) / 2
    a3, b3 = 4 * min_overlap, -2 * min_overlap * s
    r3 = (b3 + torch.sqrt(b3**2 - 4 * a3 * (min_overlap - 1) * hw)) / 2
    return torch.minimum(torch.minimum(r1, r2), r3)


def _draw_gaussians(
    heatmap_flat: Tensor, plane: Tensor, row: Tensor, col: Tensor, radius: Tensor, H: int, W: int
) -> None:
    """Max-merge square Gaussians into ``heatmap_flat [P*H*W]`` (in place): ``plane [O]`` selects the
    ``[H, W]`` plane, ``row/col/radius [O]`` int64 in cells."""
    if plane.numel() == 0:
        return
    R = int(radius.max())
    offs = torch.arange(-R, R + 1, device=plane.device)  # [2R+1]
    dy, dx = torch.meshgrid(offs, offs, indexing="ij")  # [2R+1, 2R+1]
    dy, dx = dy.reshape(1, -1), dx.reshape(1, -1)  # [1, (2R+1)^2]
    sigma = (2 * radius + 1).to(heatmap_flat.dtype) / 6  # [O]
    value = torch.exp(-(dx**2 + dy**2).to(heatmap_flat.dtype) / (2 * sigma[:, None] ** 2))  # [O, (2R+1)^2]
    r, c = row[:, None] + dy, col[:, None] + dx  # [O, (2R+1)^2]
    ok = (dy.abs() <= radius[:, None]) & (dx.abs() <= radius[:, None])
    ok &= (r >= 0) & (r < H) & (c >= 0) & (c < W)
    flat = (plane[:, None] * H + r) * W + c  # [O, (2R+1)^2]
    heatmap_flat.scatter_reduce_(0, flat[ok], value[ok], reduce="amax", include_self=True)


def build_targets(
    gt_boxes: list[Tensor],
    gt_labels: list[Tensor],
    tasks: tuple[tuple[int, ...], ...],
    pc_range: tuple[float, ...],
    bev_h: int,
    bev_w: int,
    gaussian_overlap: float = 0.1,
    min_radius: int = 2,
    max_objs: int = 500,
) -> list[TaskTargets]:
    """Targets for every task (module docstring). ``gt_boxes``: B x ``[M, 9]`` ours (structures/boxes.py);
    ``gt_labels``: B x ``[M]`` class indices (a label in no task is ignored)."""
    if len(gt_boxes) != len(gt_labels):
        raise ValueError(f"gt_boxes has {len(gt_boxes)} samples but gt_labels has {len(gt_labels)}")
    B, H, W = len(gt_boxes), bev_h, bev_w
    if B == 0:
        raise ValueError("build_targets needs at least one sample (gt_boxes is an empty list)")
    for b, (bx, lb) in enumerate(zip(gt_boxes, gt_labels, strict=True)):
        if bx.dim() != 2 or bx.shape[1] != 9 or lb.shape != bx.shape[:1]:
            raise ValueError(
                f"sample {b}: gt_boxes must be [M, 9] and gt_labels [M], got {tuple(bx.shape)} and "
                f"{tuple(lb.shape)}"
            )
    device = gt_boxes[0].device
    boxes = torch.cat([bx.float() for bx in gt_boxes])  # [O, 9]
    labels = torch.cat([lb.long() for lb in gt_labels]).to(device)  # [O]
    batch = torch.cat([torch.full((len(lb),), b, dtype=torch.long) for b, lb in enumerate(gt_labels)])
    batch = batch.to(device)  # [O]

    num_classes = max(max(t) for t in tasks) + 1
    task_of = torch.full((num_classes + 1,), -1, dtype=torch.long, device=device)  # last: unknown labels
    slot_in_task = torch.zeros(num_classes + 1, dtype=torch.long, device=device)
    for t, cls in enumerate(tasks):
        task_of[list(cls)] = t
        slot_in_task[list(cls)] = torch.arange(len(cls), device=device)
    labels = torch.where((labels >= 0) & (labels < num_classes), labels, torch.full_like(labels, num_classes))

    cell_x = (pc_range[3] - pc_range[0]) / W
    cell_y = (pc_range[4] - pc_range[1]) / H
    cx = (boxes[:, 0] - pc_range[0]) / cell_x  # [O] centre in cells
    cy = (boxes[:, 1] - pc_range[1]) / cell_y
    col, row = cx.floor().long(), cy.floor().long()
    l_cells, w_cells = boxes[:, 3] / cell_x, boxes[:, 4] / cell_y
    on_grid = (col >= 0) & (col < W) & (row >= 0) & (row < H) & (l_cells > 0) & (w_cells > 0)
    radius = gaussian_radius(l_cells.clamp(min=0), w_cells.clamp(min=0), gaussian_overlap)
    radius = radius.nan_to_num(0).long().clamp(min=min_radius)  # int() of a positive radius = floor
    code = torch.stack(
        [
            cx - col,
            cy - row,
            boxes[:, 2],
            boxes[:, 3].clamp(min=1e-6).log(),
            boxes[:, 4].clamp(min=1e-6).log(),
            boxes[:, 5].clamp(min=1e-6).log(),
            boxes[:, 6].sin(),
            boxes[:, 6].cos(),
            boxes[:, 7],
            boxes[:, 8],
        ],
        dim=-1,
    )  # [O, 10]

    out: list[TaskTargets] = []
    for t, cls in enumerate(tasks):
        K_t = len(cls)
        in_task = task_of[labels] == t  # [O]
        heat = boxes.new_zeros(B * K_t * H * W)
        sel = in_task & on_grid
        plane = batch[sel] * K_t + slot_in_task[labels[sel]]  # [O_t]
        _draw_gaussians(heat, plane, row[sel], col[sel], radius[sel], H, W)

        counts = torch.bincount(batch[sel], minlength=B)  # [B]
        S = max(1, min(max_objs, int(counts.max())))
        starts = counts.cumsum(0) - counts  # [B] first position of each sample in the (sorted) selection
        b_sel = batch[sel]
        slot = torch.arange(b_sel.numel(), device=device) - starts[b_sel]  # [O_t]
        fits = slot < max_objs
        b_sel, slot = b_sel[fits], slot[fits]
        box_code = boxes.new_zeros(B, S, 10)
        index = torch.zeros(B, S, dtype=torch.long, device=device)
        mask = torch.zeros(B, S, dtype=torch.bool, device=device)
        box_code[b_sel, slot] = code[sel][fits]
        index[b_sel, slot] = (row * W + col)[sel][fits]
        mask[b_sel, slot] = True
        out.append(TaskTargets(heat.view(B, K_t, H, W), box_code, index, mask))  # heat: [B, K_t, H, W]
    return out


def targets_as_predictions(targets: list[TaskTargets], logit: float = 8.0) -> dict[str, Tensor]:
    """Head outputs (``t{i}.*`` keys of models/centerpoint_head.py) that equal ``targets``: heatmap logits
    ``+logit`` at the peaks and ``-logit`` elsewhere, regression maps holding each box code at its centre
    cell (zeros elsewhere). The exact oracle for the loss and the decoding: decoding it gives the boxes."""
    preds: dict[str, Tensor] = {}
    for t, tgt in enumerate(targets):
        B, _, H, W = tgt.heatmap.shape
        preds[f"t{t}.heatmap"] = torch.where(tgt.heatmap.eq(1), logit, -logit)
        code = torch.zeros(B, 10, H * W, dtype=tgt.box_code.dtype)
        for b in range(B):
            m = tgt.mask[b]
            code[b][:, tgt.index[b][m]] = tgt.box_code[b][m].T
        code = code.view(B, 10, H, W)  # [B, 10, H, W]
        start = 0
        for name, c in REG_HEADS:
            preds[f"t{t}.{name}"] = code[:, start : start + c]
            start += c
    return preds
