"""NMS-free decoding of the detection head (official ``NMSFreeCoder``).

Shape letters: D decoder layers, B batch, Q queries, K classes, N kept boxes.

From the last decoder layer: sigmoid scores of all ``Q x K`` (query, class) pairs, top ``max_boxes``,
label = index % K, query = index // K; the query's box code decodes to our 9-d boxes
(``structures/boxes.py``); boxes whose centre is outside ``post_center_range`` or whose score is at or
below ``score_threshold`` (when > 0) are dropped.
"""

from __future__ import annotations

import torch

from bevforge.structures.boxes import decode_box_code

DEFAULT_POST_CENTER_RANGE: tuple[float, ...] = (-61.2, -61.2, -10.0, 61.2, 61.2, 10.0)


@torch.no_grad()
def decode_predictions(
    preds: dict[str, torch.Tensor],
    max_boxes: int = 300,
    post_center_range: tuple[float, ...] | None = DEFAULT_POST_CENTER_RANGE,
    score_threshold: float = 0.0,
) -> list[dict[str, torch.Tensor]]:
    """``preds["cls_logits"] [D, B, Q, K]`` (or ``[B, Q, K]``), ``preds["box_code"]`` likewise ``[..., 10]``
    -> per batch element ``{"boxes": [N, 9], "scores": [N], "labels": [N] int64}`` sorted by score."""
    cls_logits, box_code = preds["cls_logits"], preds["box_code"]
    if cls_logits.dim() == 4:
        cls_logits, box_code = cls_logits[-1], box_code[-1]  # last decoder layer: [B, Q, K], [B, Q, 10]
    assert cls_logits.dim() == 3 and box_code.dim() == 3, (cls_logits.shape, box_code.shape)
    B, Q, K = cls_logits.shape
    k = min(max_boxes, Q * K)
    scores, index = cls_logits.float().sigmoid().flatten(1).topk(k, dim=1)  # [B, k] over Q*K
    labels = index % K  # [B, k]
    query = torch.div(index, K, rounding_mode="floor")  # [B, k]
    codes = torch.gather(
        box_code.float(), 1, query[..., None].expand(-1, -1, box_code.shape[-1])
    )  # [B, k, 10]
    boxes = decode_box_code(codes)  # [B, k, 9]
    keep = torch.ones_like(scores, dtype=torch.bool)  # [B, k]
    if score_threshold > 0:
        keep &= scores > score_threshold
    if post_center_range is not None:
        if len(post_center_range) != 6:
            raise ValueError(f"post_center_range needs 6 numbers (min xyz, max xyz), got {post_center_range}")
        rng = torch.tensor(post_center_range, dtype=boxes.dtype, device=boxes.device)
        keep &= ((boxes[..., :3] >= rng[:3]) & (boxes[..., :3] <= rng[3:])).all(-1)
    return [
        {"boxes": boxes[b][keep[b]], "scores": scores[b][keep[b]], "labels": labels[b][keep[b]]}
        for b in range(B)
    ]
