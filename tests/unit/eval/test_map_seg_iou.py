"""Map-segmentation IoU on hand-made masks (accumulated counts, sigmoid > 0.5)."""

from __future__ import annotations

import math

import pytest
import torch

from bevforge.eval.map_seg import SegIoU
from bevforge.eval.pipeline import seg_from_results
from bevforge.eval.runner import _seg_counts


def _logits(mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.bool(), torch.tensor(3.0), torch.tensor(-3.0))


def test_map_seg_iou_hand_made_masks():
    torch.manual_seed(0)
    target = torch.zeros(1, 3, 4, 4)
    pred = torch.zeros(1, 3, 4, 4)
    target[0, 0, :2] = 1  # 8 px
    pred[0, 0, 1:3] = 1  # 8 px, overlap 4 -> IoU 4/12
    target[0, 1, 0, 0] = 1
    pred[0, 1, 0, 0] = 1  # perfect
    # class 2: empty everywhere -> NaN, excluded from mIoU
    acc = SegIoU(("road", "crossing", "divider"))
    acc.update(_logits(pred), target)
    r = acc.result()
    assert r["iou"]["road"] == pytest.approx(4 / 12)
    assert r["iou"]["crossing"] == 1.0
    assert math.isnan(r["iou"]["divider"])
    assert r["miou"] == pytest.approx((4 / 12 + 1) / 2)


def test_map_seg_accumulates_counts_not_means():
    acc = SegIoU(("a",))
    t1, p1 = torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2)  # 4/4
    t2, p2 = torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    t2[0, 0, 0, 0] = 1  # 0/1
    acc.update(_logits(p1), t1)
    acc.update(_logits(p2), t2)
    assert acc.result()["iou"]["a"] == pytest.approx(4 / 5)  # not the mean of 1 and 0


def test_map_seg_threshold_is_sigmoid_half():
    acc = SegIoU(("a",))
    logits = torch.tensor([[[[0.0, 0.01]]]])  # sigmoid 0.5 -> negative, 0.5025 -> positive
    acc.update(logits, torch.tensor([[[[1.0, 1.0]]]]))
    assert acc.result()["iou"]["a"] == pytest.approx(0.5)


def test_map_seg_per_sample_counts_sum_to_split_iou():
    torch.manual_seed(0)
    logits = torch.randn(3, 2, 5, 5)
    target = (torch.rand(3, 2, 5, 5) > 0.5).float()
    acc = SegIoU(("a", "b"))
    acc.update(logits, target)
    inter, union = _seg_counts(logits, target)
    results = {f"t{i}": {"seg_intersection": inter[i], "seg_union": union[i]} for i in range(3)}
    assert seg_from_results(results, ("a", "b"))["iou"] == acc.result()["iou"]


def test_map_seg_shape_mismatch_is_clear():
    acc = SegIoU(("a",))
    with pytest.raises(ValueError, match="same shape"):
        acc.update(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 5, 5))
