"""Set criterion of BEVFormer: Hungarian matching + focal classification + L1 box loss on every
decoder layer (official ``BEVFormerHead.loss``), plus the optional BEV segmentation loss.

Shape letters: B batch, Q queries, K classes, D decoder layers, M GT boxes of a sample, S seg classes.

Per layer: unmatched queries are background (all-zero one-hot); the focal loss is summed and divided by
the number of matched GT boxes (clamped >= 1); the L1 loss compares the matched predictions with the
encoded GT code (``structures/boxes.py``) weighted by ``code_weights`` and divided by the same count.
Multi-GPU averaging of that count (official ``reduce_mean``) is the trainer's business: pass
``num_pos_override`` to use a global count.
"""

from __future__ import annotations

import torch
from torch import nn

from bevforge.losses.focal import sigmoid_focal_loss, weighted_l1_loss
from bevforge.losses.matcher import HungarianMatcher
from bevforge.losses.seg import seg_loss
from bevforge.structures.boxes import CODE_DIM, encode_box_code


class SetCriterion(nn.Module):
    def __init__(
        self,
        num_classes: int = 10,
        matcher: HungarianMatcher | None = None,
        cls_weight: float = 2.0,
        bbox_weight: float = 0.25,
        focal_gamma: float = 2.0,
        focal_alpha: float = 0.25,
        code_weights: tuple[float, ...] = (1.0,) * 8 + (0.2, 0.2),
        seg_weight: float = 1.0,
        with_det: bool = True,
        with_seg: bool = False,
    ) -> None:
        super().__init__()
        if len(code_weights) != CODE_DIM:
            raise ValueError(
                f"loss.code_weights needs {CODE_DIM} numbers (one per box-code entry), got {code_weights}"
            )
        self.num_classes = num_classes
        self.matcher = matcher or HungarianMatcher(gamma=focal_gamma, alpha=focal_alpha)
        self.cls_weight, self.bbox_weight = cls_weight, bbox_weight
        self.gamma, self.alpha = focal_gamma, focal_alpha
        self.register_buffer(
            "code_weights", torch.tensor(code_weights, dtype=torch.float32), persistent=False
        )
        self.seg_weight = seg_weight
        self.with_det, self.with_seg = with_det, with_seg

    @staticmethod
    def _check_gt(gt_boxes: list[torch.Tensor], gt_labels: list[torch.Tensor]) -> None:
        """Shapes only. GT rows whose label is not a detection class (label < 0 or >= K; the official
        filter) are left out by the matcher on the host (``num_classes``): a boolean index here would
        sync with the device once per sample."""
        for b, (box, lab) in enumerate(zip(gt_boxes, gt_labels)):
            if box.dim() != 2 or box.shape[-1] != 9 or lab.dim() != 1 or box.shape[0] != lab.shape[0]:
                raise ValueError(
                    f"gt_boxes[{b}] {tuple(box.shape)} / gt_labels[{b}] {tuple(lab.shape)}: "
                    "expected [M, 9] and [M]"
                )

    def layer_loss(
        self,
        cls_logits: torch.Tensor,
        box_code: torch.Tensor,
        match: torch.Tensor,
        gt_boxes: torch.Tensor,
        gt_labels: torch.Tensor,
        num_pos_override: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One decoder layer: ``cls_logits [B, Q, K]``, ``box_code [B, Q, 10]``, ``match [3, P]`` (sample,
        query, GT row), ``gt_boxes [T, 9]`` / ``gt_labels [T]`` of the batch -> (loss_cls, loss_bbox)."""
        loss_cls, loss_bbox = self.layers_loss(
            cls_logits[None], box_code[None], match[None], gt_boxes, gt_labels, num_pos_override
        )
        return loss_cls[0], loss_bbox[0]

    def layers_loss(
        self,
        cls_logits: torch.Tensor,
        box_code: torch.Tensor,
        matches: torch.Tensor,
        gt_boxes: torch.Tensor,
        gt_labels: torch.Tensor,
        num_pos_override: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Every decoder layer at once (one set of operators, not one per layer): ``cls_logits [D, B, Q,
        K]``, ``box_code [D, B, Q, 10]``, ``matches [D, 3, P]`` (sample, query, GT row per layer),
        ``gt_boxes [T, 9]`` / ``gt_labels [T]`` of the batch -> (loss_cls [D], loss_bbox [D])."""
        batch_idx, query_idx, gt_idx = matches.unbind(1)  # 3 x [D, P]
        layer_idx = torch.arange(matches.shape[0], device=matches.device)[:, None].expand_as(gt_idx)
        num_pos = float(matches.shape[-1]) if num_pos_override is None else float(num_pos_override)
        num_pos = max(num_pos, 1.0)
        target = torch.zeros_like(cls_logits, dtype=torch.float32)  # [D, B, Q, K] one-hot, background = 0
        # a device scalar as the value: a Python 1.0 is copied host->device synchronously on every call
        target[layer_idx, batch_idx, query_idx, gt_labels[gt_idx]] = target.new_ones(())
        focal = sigmoid_focal_loss(cls_logits.float(), target, self.gamma, self.alpha)  # [D, B, Q, K]
        loss_cls = focal.flatten(1).sum(1) / num_pos  # [D]
        code_target = encode_box_code(gt_boxes[gt_idx].float())  # [D, P, 10]
        weight = self.code_weights.to(box_code.device).expand_as(code_target)  # [D, P, 10]
        matched = box_code[layer_idx, batch_idx, query_idx].float()  # [D, P, 10]
        loss_bbox = weighted_l1_loss(matched, code_target, weight) / num_pos  # [D]
        return (
            torch.nan_to_num(loss_cls * self.cls_weight),
            torch.nan_to_num(loss_bbox * self.bbox_weight),
        )

    def forward(
        self,
        preds: dict[str, torch.Tensor],
        gt_boxes: list[torch.Tensor],
        gt_labels: list[torch.Tensor],
        seg_target: torch.Tensor | None = None,
        num_pos_override: float | None = None,
    ) -> dict[str, torch.Tensor]:
        """``preds`` as CONTRACTS.md (``cls_logits [D, B, Q, K]``, ``box_code [D, B, Q, 10]``, optional
        ``seg_logits``) -> ``{"loss", "loss_cls", "loss_bbox", "d{i}.loss_cls", "d{i}.loss_bbox",
        "loss_seg"}``."""
        losses: dict[str, torch.Tensor] = {}
        if self.with_det:
            cls_all, code_all = preds["cls_logits"], preds["box_code"]
            assert cls_all.dim() == 4 and code_all.dim() == 4, (cls_all.shape, code_all.shape)
            if len(gt_boxes) != cls_all.shape[1]:
                raise ValueError(f"{len(gt_boxes)} GT lists for a batch of {cls_all.shape[1]} predictions")
            self._check_gt(gt_boxes, gt_labels)
            # [D, 3, P] (sample, query, row of the concatenated GT); non-class rows are never matched
            matches = self.matcher.match_layers(cls_all, code_all, gt_boxes, gt_labels, self.num_classes)
            boxes_all = torch.cat(gt_boxes).to(code_all.device)  # [T, 9]
            labels_all = torch.cat(gt_labels).to(code_all.device).long()  # [T]
            loss_cls, loss_bbox = self.layers_loss(
                cls_all, code_all, matches, boxes_all, labels_all, num_pos_override
            )  # [D] each
            D = cls_all.shape[0]
            for i, (lc, lb) in enumerate(zip(loss_cls.unbind(), loss_bbox.unbind(), strict=True)):
                prefix = "" if i == D - 1 else f"d{i}."
                losses[f"{prefix}loss_cls"] = lc
                losses[f"{prefix}loss_bbox"] = lb
        if self.with_seg:
            if "seg_logits" not in preds or seg_target is None:
                raise ValueError(
                    "the criterion has with_seg=True but got no seg_logits/seg_target: set "
                    "model.with_seg and data.with_seg together"
                )
            losses["loss_seg"] = self.seg_weight * seg_loss(
                preds["seg_logits"], seg_target.to(preds["seg_logits"])
            )
        if not losses:
            raise ValueError("the criterion has neither detection nor segmentation enabled")
        losses["loss"] = torch.stack(list(losses.values())).sum()
        return losses
