"""CenterPoint criterion (official ``CenterHead.loss``): Gaussian focal loss on the heatmaps + L1 on the
box code at object centres, per task.

Shape letters: B batch, K_t classes of task t, H/W = bev_h/bev_w, S regression slots, E = 10.

- ``t{i}.loss_heatmap = heatmap_weight * GaussianFocal(clip_sigmoid(logits), target) / max(#peaks, 1)``
  (CornerNet penalty-reduced focal loss, alpha 2, gamma 4; ``#peaks`` = target cells equal to 1 in the
  batch; ``clip_sigmoid`` clamps to [1e-4, 1 - 1e-4] as the official code).
- ``t{i}.loss_bbox = bbox_weight * sum(code_weights * |pred - target|) / (#boxes + 1e-4)`` over the
  regression read at each box's centre cell, code ``(reg x, reg y, z, log l, log w, log h, sin, cos,
  vx, vy)``; NaN target entries (unknown velocity) get weight 0.
- ``loss_depth`` (only with ``depth_weight > 0``; BEVDepth-style, losses/depth.py): BCE of the LSS depth
  distributions ``preds["depth"]`` against the lidar depth targets ``preds["depth_gt"]`` (the model passes
  ``Batch.depth_gt`` through), times ``depth_weight``; a batch without ``depth_gt`` (fake data) warns and
  gets no depth term.
- ``loss_heatmap`` / ``loss_bbox``: sums over tasks; ``loss`` = the sum of all terms (the one to backprop).
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from bevforge.losses.centerpoint_targets import build_targets
from bevforge.losses.depth import depth_bce_loss
from bevforge.models.centerpoint_head import REG_HEADS


def gaussian_focal_loss(logits: Tensor, target: Tensor, alpha: float = 2.0, gamma: float = 4.0) -> Tensor:
    """Sum over all elements of the CornerNet/mmdet ``GaussianFocalLoss`` (``target`` in [0, 1], peaks 1):
    ``-log(p) (1-p)^alpha`` at peaks, ``-log(1-p) p^alpha (1-target)^gamma`` elsewhere (0 at the peaks)."""
    p = logits.sigmoid().clamp(1e-4, 1 - 1e-4)  # official clip_sigmoid
    neg = -torch.log1p(-p) * p.pow(alpha) * (1 - target).pow(gamma)
    p_pos = p[target.eq(1)]  # [#peaks]
    pos = -p_pos.log() * (1 - p_pos).pow(alpha)
    return neg.sum() + pos.sum()


class CenterPointCriterion(nn.Module):
    """``criterion(preds, gt_boxes, gt_labels, seg_target=None) -> dict`` (module docstring).

    ``preds`` are the head's flat outputs (models/centerpoint_head.py); other keys are ignored.
    """

    def __init__(
        self,
        tasks: tuple[tuple[int, ...], ...],
        pc_range: tuple[float, ...],
        gaussian_overlap: float = 0.1,
        min_radius: int = 2,
        max_objs: int = 500,
        heatmap_weight: float = 1.0,
        bbox_weight: float = 0.25,
        code_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2),
        depth_weight: float = 0.0,
        depth_bins_m: Tensor | None = None,
    ) -> None:
        super().__init__()
        if len(code_weights) != 10:
            raise ValueError(
                f"code_weights needs 10 values (reg 2, z, dim 3, rot 2, vel 2), got {code_weights}"
            )
        if len(pc_range) != 6:
            raise ValueError(f"pc_range needs 6 numbers (min xyz, max xyz), got {pc_range}")
        self.tasks = tuple(tuple(int(c) for c in t) for t in tasks)
        self.pc_range = tuple(float(v) for v in pc_range)
        self.gaussian_overlap = gaussian_overlap
        self.min_radius = min_radius
        self.max_objs = max_objs
        self.heatmap_weight = heatmap_weight
        self.bbox_weight = bbox_weight
        self.register_buffer(
            "code_weights", torch.tensor(code_weights, dtype=torch.float32), persistent=False
        )
        if depth_weight > 0 and depth_bins_m is None:
            raise ValueError(
                "depth_weight > 0 needs depth_bins_m (the LSS bin depths, nn/lss.depth_bin_centres)"
            )
        self.depth_weight = float(depth_weight)
        # [D] metres, or None without depth supervision
        self.register_buffer("depth_bins_m", depth_bins_m, persistent=False)

    def forward(
        self,
        preds: dict[str, Tensor],
        gt_boxes: list[Tensor],
        gt_labels: list[Tensor],
        seg_target: Tensor | None = None,
    ) -> dict[str, Tensor]:
        missing = [
            f"t{t}.{n}" for t in range(len(self.tasks)) for n in ("heatmap",) + tuple(h for h, _ in REG_HEADS)
        ]
        missing = [k for k in missing if k not in preds]
        if missing:
            raise KeyError(
                f"CenterPointCriterion: preds lack {missing[:4]}{'...' if len(missing) > 4 else ''}; "
                "it needs the CenterPointHead outputs (same model.bevdet.head_tasks for head and loss)"
            )
        heat0 = preds["t0.heatmap"]
        B, _, H, W = heat0.shape
        if len(gt_boxes) != B:
            raise ValueError(f"preds hold {B} samples but gt_boxes has {len(gt_boxes)}")
        gt_boxes = [bx.to(heat0.device) for bx in gt_boxes]
        gt_labels = [lb.to(heat0.device) for lb in gt_labels]
        targets = build_targets(
            gt_boxes,
            gt_labels,
            self.tasks,
            self.pc_range,
            H,
            W,
            self.gaussian_overlap,
            self.min_radius,
            self.max_objs,
        )
        out: dict[str, Tensor] = {}
        total_hm = heat0.new_zeros(())
        total_bbox = heat0.new_zeros(())
        for t, tgt in enumerate(targets):
            logits = preds[f"t{t}.heatmap"].float()
            if logits.shape != tgt.heatmap.shape:
                raise ValueError(
                    f"t{t}.heatmap is {tuple(logits.shape)} but task {t} has {len(self.tasks[t])} classes "
                    f"on a {H}x{W} grid"
                )
            num_pos = tgt.heatmap.eq(1).sum().clamp(min=1)
            loss_hm = self.heatmap_weight * gaussian_focal_loss(logits, tgt.heatmap) / num_pos

            index = tgt.index[:, None, :]  # [B, 1, S]
            pred = torch.cat(
                [
                    torch.gather(v.flatten(2), 2, index.expand(-1, v.shape[1], -1)).float()  # [B, c, S]
                    for v in (preds[f"t{t}.{name}"] for name, _ in REG_HEADS)
                ],
                dim=1,
            )  # [B, 10, S] read at the centre cells only
            pred = pred.transpose(1, 2)  # [B, S, 10]
            finite = torch.isfinite(tgt.box_code)
            weight = (tgt.mask[..., None] & finite).float() * self.code_weights.to(
                finite.device
            )  # [B, S, 10]
            target = torch.where(finite, tgt.box_code, torch.zeros_like(tgt.box_code))
            num = tgt.mask.sum().float()
            loss_bbox = self.bbox_weight * ((pred - target).abs() * weight).sum() / (num + 1e-4)

            out[f"t{t}.loss_heatmap"] = loss_hm
            out[f"t{t}.loss_bbox"] = loss_bbox
            total_hm = total_hm + loss_hm
            total_bbox = total_bbox + loss_bbox
        out["loss_heatmap"] = total_hm
        out["loss_bbox"] = total_bbox
        out["loss"] = total_hm + total_bbox
        if self.depth_weight > 0 and "depth" not in preds:
            raise KeyError(
                "CenterPointCriterion: model.bevdet.depth_loss_weight > 0 needs preds['depth'] (the LSS "
                "depth distributions of models/bevdet.py)"
            )
        if self.depth_weight > 0 and preds.get("depth_gt") is None:
            # hand-made batches (benchmarks with fake data, tests) carry no lidar: train on without the term
            warnings.warn(
                "model.bevdet.depth_loss_weight > 0 but the batch has no depth_gt (the training dataset "
                "makes it from the LIDAR_TOP files, data/depth_targets.py): no depth loss for this batch",
                stacklevel=2,
            )
        elif self.depth_weight > 0:
            assert self.depth_bins_m is not None
            out["loss_depth"] = self.depth_weight * depth_bce_loss(
                preds["depth"], preds["depth_gt"], self.depth_bins_m
            )
            out["loss"] = out["loss"] + out["loss_depth"]
        return out
