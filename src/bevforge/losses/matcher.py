"""Hungarian matcher between object queries and ground-truth boxes (official ``HungarianAssigner3D``).

Shape letters: B batch, Q queries, K classes, M GT boxes of one sample, T GT boxes of the whole batch.

Cost = ``cls_cost * FocalLossCost`` (on sigmoid probabilities) + ``bbox_cost * L1`` on the first 8
entries of the box code (``cx, cy, log l, log w, cz, log h, sin, cos``; the official
``normalize_bbox`` does not scale by the range despite its name, so the code in metres is compared
directly). The cost of the whole batch is built in one go and moved to the CPU once.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from bevforge.structures.boxes import encode_box_code


class HungarianMatcher:
    def __init__(
        self, cls_cost: float = 2.0, bbox_cost: float = 0.25, gamma: float = 2.0, alpha: float = 0.25
    ) -> None:
        self.cls_cost, self.bbox_cost, self.gamma, self.alpha = cls_cost, bbox_cost, gamma, alpha

    @torch.no_grad()
    def cost(
        self, cls_logits: torch.Tensor, box_code: torch.Tensor, gt_labels: torch.Tensor, gt_code: torch.Tensor
    ) -> torch.Tensor:
        """``cls_logits [B, Q, K]``, ``box_code [B, Q, 10]``, ``gt_labels [T]``, ``gt_code [T, 10]``
        -> ``[B, Q, T]``."""
        eps = 1e-12
        p = cls_logits.float().sigmoid()  # [B, Q, K]
        neg = -(1 - p + eps).log() * (1 - self.alpha) * p.pow(self.gamma)
        pos = -(p + eps).log() * self.alpha * (1 - p).pow(self.gamma)
        cls = (pos - neg)[..., gt_labels]  # [B, Q, T]
        pred8 = box_code[..., :8].float()  # [B, Q, 8]
        gt8 = gt_code[:, :8].float()[None].expand(pred8.shape[0], -1, -1)  # [B, T, 8]
        reg = torch.cdist(pred8, gt8, p=1)  # [B, Q, T]
        cost = self.cls_cost * cls + self.bbox_cost * reg
        return torch.nan_to_num(cost, nan=100.0, posinf=100.0, neginf=-100.0)

    @torch.no_grad()
    def __call__(
        self,
        cls_logits: torch.Tensor,
        box_code: torch.Tensor,
        gt_boxes: list[torch.Tensor],
        gt_labels: list[torch.Tensor],
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per sample ``(query_idx [m], gt_idx [m])`` int64 on the predictions' device, ``m = min(Q, M)``."""
        assert cls_logits.dim() == 3 and box_code.dim() == 3, (cls_logits.shape, box_code.shape)
        B, Q, _ = cls_logits.shape
        device = cls_logits.device
        sizes = [int(g.shape[0]) for g in gt_boxes]
        empty = torch.zeros(0, dtype=torch.long, device=device)
        if sum(sizes) == 0:
            return [(empty, empty) for _ in range(B)]
        labels = torch.cat(gt_labels).to(device)  # [T]
        code = encode_box_code(torch.cat(gt_boxes).to(device, torch.float32))  # [T, 10]
        cost = self.cost(cls_logits, box_code, labels, code).cpu().numpy()  # [B, Q, T], one transfer
        out: list[tuple[torch.Tensor, torch.Tensor]] = []
        start = 0
        for b, m in enumerate(sizes):
            if m == 0:
                out.append((empty, empty))
                continue
            rows, cols = linear_sum_assignment(cost[b, :, start : start + m])
            start += m
            out.append(
                (
                    torch.as_tensor(rows.astype(np.int64), device=device),
                    torch.as_tensor(cols.astype(np.int64), device=device),
                )
            )
        return out
