"""Hungarian matcher between object queries and ground-truth boxes (official ``HungarianAssigner3D``).

Shape letters: B batch, Q queries, K classes, M GT boxes of one sample, T GT boxes of the whole batch.

Cost = ``cls_cost * FocalLossCost`` (on sigmoid probabilities) + ``bbox_cost * L1`` on the first 8
entries of the box code (``cx, cy, log l, log w, cz, log h, sin, cos``; the official
``normalize_bbox`` does not scale by the range despite its name, so the code in metres is compared
directly). The cost of the whole batch is built in one go and moved to the CPU once; GT rows whose
label is not a detection class are dropped there, on the host (``num_classes``), not by boolean
indexing on the device (a sync per sample).
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
        """``cls_logits [G, Q, K]``, ``box_code [G, Q, 10]`` (G = any number of (layer, sample) pairs),
        ``gt_labels [T]``, ``gt_code [T, 10]`` -> ``[G, Q, T]``."""
        eps = 1e-12
        p = cls_logits.float().sigmoid()  # [G, Q, K]
        neg = -(1 - p + eps).log() * (1 - self.alpha) * p.pow(self.gamma)
        pos = -(p + eps).log() * self.alpha * (1 - p).pow(self.gamma)
        cls = (pos - neg)[..., gt_labels]  # [G, Q, T]
        pred8 = box_code[..., :8].float()  # [G, Q, 8]
        gt8 = gt_code[:, :8].float()[None].expand(pred8.shape[0], -1, -1)  # [G, T, 8]
        reg = torch.cdist(pred8, gt8, p=1)  # [G, Q, T]
        cost = self.cls_cost * cls + self.bbox_cost * reg
        return torch.nan_to_num(cost, nan=100.0, posinf=100.0, neginf=-100.0)

    @torch.no_grad()
    def match_layers(
        self,
        cls_logits: torch.Tensor,
        box_code: torch.Tensor,
        gt_boxes: list[torch.Tensor],
        gt_labels: list[torch.Tensor],
        num_classes: int | None = None,
    ) -> torch.Tensor:
        """All decoder layers at once: ``cls_logits [D, B, Q, K]``, ``box_code [D, B, Q, 10]`` ->
        ``[D, 3, P]`` int64 rows (sample, query, row of ``torch.cat(gt_boxes)``), P = sum_b min(Q, M_b).

        ``num_classes``: GT rows whose label is outside ``[0, num_classes)`` are never matched (M_b
        counts the others); None: every label must be a class. One device->host copy of the costs (and
        of the labels, with ``num_classes``) and one host->device copy of the indices per call.
        """
        assert cls_logits.dim() == 4 and box_code.dim() == 4, (cls_logits.shape, box_code.shape)
        D, B, Q, K = cls_logits.shape
        device = cls_logits.device
        sizes = [int(g.shape[0]) for g in gt_boxes]
        if sum(sizes) == 0:
            return torch.zeros(D, 3, 0, dtype=torch.long, device=device)
        labels = torch.cat(gt_labels).to(device).long()  # [T]
        code = encode_box_code(torch.cat(gt_boxes).to(device, torch.float32))  # [T, 10]
        # [D, B, Q, K] -> [D*B, Q, K]; cost [D*B, Q, T] -> host once (a non-class label gets class 0's
        # column here, and the column is dropped below)
        cost_labels = labels if num_classes is None else labels.clamp(0, K - 1)
        cost = self.cost(cls_logits.flatten(0, 1), box_code.flatten(0, 1), cost_labels, code).cpu().numpy()
        cost = cost.reshape(D, B, Q, -1)  # [D, B, Q, T]
        if num_classes is None:
            keep = np.ones(sum(sizes), dtype=bool)
        else:
            host_labels = labels.cpu().numpy()  # the device is idle after the cost copy: no wait
            keep = (host_labels >= 0) & (host_labels < num_classes)  # [T]
        starts = np.cumsum([0, *sizes])
        kept = [np.flatnonzero(keep[starts[b] : starts[b] + m]) + starts[b] for b, m in enumerate(sizes)]
        layers = []
        for d in range(D):
            rows_all = [np.zeros((3, 0), dtype=np.int64)]
            for b, cols_b in enumerate(kept):
                if cols_b.size == 0:
                    continue
                rows, cols = linear_sum_assignment(cost[d, b][:, cols_b])
                rows_all.append(np.stack([np.full_like(rows, b), rows, cols_b[cols]]))  # [3, m_b]
            layers.append(np.concatenate(rows_all, axis=1))  # [3, P]
        return torch.as_tensor(np.stack(layers).astype(np.int64)).to(device, non_blocking=True)  # [D, 3, P]

    @torch.no_grad()
    def __call__(
        self,
        cls_logits: torch.Tensor,
        box_code: torch.Tensor,
        gt_boxes: list[torch.Tensor],
        gt_labels: list[torch.Tensor],
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """One layer ``[B, Q, K]`` / ``[B, Q, 10]`` -> per sample ``(query_idx [m], gt_idx [m])`` (GT index
        within the sample), ``m = min(Q, M)``."""
        assert cls_logits.dim() == 3 and box_code.dim() == 3, (cls_logits.shape, box_code.shape)
        idx = self.match_layers(cls_logits[None], box_code[None], gt_boxes, gt_labels)[0]  # [3, P]
        starts = [0]
        for g in gt_boxes:
            starts.append(starts[-1] + int(g.shape[0]))
        out = []
        for b in range(cls_logits.shape[0]):
            sel = idx[0] == b
            out.append((idx[1][sel], idx[2][sel] - starts[b]))
        return out
