"""Hungarian matcher between object queries and ground-truth boxes (official ``HungarianAssigner3D``).

Shape letters: D decoder layers, B batch, Q queries, K classes, M GT boxes of one sample (M_max the
most of any sample of the batch), T GT boxes of the whole batch.

Cost = ``cls_cost * FocalLossCost`` (on sigmoid probabilities) + ``bbox_cost * L1`` on the first 8
entries of the box code (``cx, cy, log l, log w, cz, log h, sin, cos``; the official
``normalize_bbox`` does not scale by the range despite its name, so the code in metres is compared
directly). Only each sample's block is built (its queries against its own GT, padded to M_max), for
all layers in one go, and moved to the CPU once (through pinned memory on CUDA); GT rows whose label
is not a detection class are dropped there, on the host (``num_classes``), not by boolean indexing on
the device (a sync per sample).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from bevforge.structures.boxes import encode_box_code


def _to_host(tensors: list[torch.Tensor]) -> list[np.ndarray]:
    """Copy to numpy with one wait: CUDA tensors go through pinned buffers (non-blocking copies, then
    one stream sync); CPU tensors are viewed as they are."""
    if not any(t.is_cuda for t in tensors):
        return [t.numpy() for t in tensors]
    hosts = []
    for t in tensors:
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        host.copy_(t, non_blocking=True)
        hosts.append(host)
    torch.cuda.current_stream(next(t.device for t in tensors if t.is_cuda)).synchronize()
    return [h.numpy() for h in hosts]


class HungarianMatcher:
    def __init__(
        self, cls_cost: float = 2.0, bbox_cost: float = 0.25, gamma: float = 2.0, alpha: float = 0.25
    ) -> None:
        self.cls_cost, self.bbox_cost, self.gamma, self.alpha = cls_cost, bbox_cost, gamma, alpha

    @torch.no_grad()
    def cost(
        self, cls_logits: torch.Tensor, box_code: torch.Tensor, gt_labels: torch.Tensor, gt_code: torch.Tensor
    ) -> torch.Tensor:
        """Per-sample blocks: ``cls_logits [..., B, Q, K]``, ``box_code [..., B, Q, 10]`` (any leading
        dims, e.g. D layers), ``gt_labels [B, M]`` (each a class in ``[0, K)``), ``gt_code [B, M, 10]``
        (sample b's own GT, padded to a common M) -> float32 ``[..., B, Q, M]``: entry ``[..., b, q, j]``
        is the cost of query q of sample b against GT j of sample b."""
        eps = 1e-12
        p = cls_logits.float().sigmoid()  # [..., B, Q, K]
        neg = -(1 - p + eps).log() * (1 - self.alpha) * p.pow(self.gamma)
        pos = -(p + eps).log() * self.alpha * (1 - p).pow(self.gamma)
        index = gt_labels.long()[:, None, :].expand(*p.shape[:-1], gt_labels.shape[-1])  # [..., B, Q, M]
        cls = torch.gather(pos - neg, -1, index)  # [..., B, Q, M]
        pred8 = box_code[..., :8].float()  # [..., B, Q, 8]
        gt8 = gt_code[..., :8].float()  # [B, M, 8]
        # L1 as a broadcast: cdist(p=1) is a slow kernel; [..., B, Q, 1, 8] - [B, 1, M, 8] -> [..., B, Q, M]
        reg = (pred8[..., :, None, :] - gt8[:, None, :, :]).abs_().sum(-1)
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
        counts the others); None: every label must be a class. One device->host copy of the costs
        ``[D, B, Q, M_max]`` (and of the labels, with ``num_classes``) and one host->device copy of the
        indices per call.
        """
        assert cls_logits.dim() == 4 and box_code.dim() == 4, (cls_logits.shape, box_code.shape)
        D, B, Q, K = cls_logits.shape
        device = cls_logits.device
        sizes = [int(g.shape[0]) for g in gt_boxes]
        if sum(sizes) == 0:
            return torch.zeros(D, 3, 0, dtype=torch.long, device=device)
        starts = np.cumsum([0, *sizes])
        m_max = max(sizes)
        # pad by gathering: slot j of sample b reads batch row starts[b] + j, padding reads row T (zeros)
        pad_rows = np.full((B, m_max), starts[-1], dtype=np.int64)  # [B, M_max]
        for b, m in enumerate(sizes):
            pad_rows[b, :m] = np.arange(starts[b], starts[b] + m)
        pad_rows_dev = torch.as_tensor(pad_rows).to(device, non_blocking=True)  # staged at once, no wait
        labels = torch.cat(gt_labels).to(device).long()  # [T]
        code = encode_box_code(torch.cat(gt_boxes).to(device, torch.float32))  # [T, 10]
        # a non-class label gets class 0's column here, and the column is dropped below
        cost_labels = labels if num_classes is None else labels.clamp(0, K - 1)
        pad_labels = torch.nn.functional.pad(cost_labels, (0, 1))[pad_rows_dev]  # [T+1] -> [B, M_max]
        pad_code = torch.nn.functional.pad(code, (0, 0, 0, 1))[pad_rows_dev]  # [T+1, 10] -> [B, M_max, 10]
        cost_dev = self.cost(cls_logits, box_code, pad_labels, pad_code)  # [D, B, Q, M_max]
        if num_classes is None:
            (cost,) = _to_host([cost_dev])
            keep = np.ones(sum(sizes), dtype=bool)
        else:
            cost, host_labels = _to_host([cost_dev, labels])
            keep = (host_labels >= 0) & (host_labels < num_classes)  # [T]
        kept = [np.flatnonzero(keep[starts[b] : starts[b] + m]) for b, m in enumerate(sizes)]  # within b
        layers = []
        for d in range(D):
            rows_all = [np.zeros((3, 0), dtype=np.int64)]
            for b, cols_b in enumerate(kept):
                if cols_b.size == 0:
                    continue
                rows, cols = linear_sum_assignment(cost[d, b][:, cols_b])
                rows_all.append(np.stack([np.full_like(rows, b), rows, cols_b[cols] + starts[b]]))  # [3, m_b]
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
