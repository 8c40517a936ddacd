import math

import torch
from shapely.geometry import Polygon

from bevforge.losses.centerpoint_targets import build_targets, targets_as_predictions
from bevforge.models.centerpoint_decode import (
    NMSSettings,
    bev_corners,
    circle_nms,
    decode_centerpoint,
    rotated_bev_iou_pairs,
    rotated_nms,
)


def _shapely_iou(a, b):
    pa, pb = (Polygon(bev_corners(x[None].double())[0].tolist()) for x in (a, b))
    return pa.intersection(pb).area / pa.union(pb).area


def test_rotated_iou_matches_shapely():
    torch.manual_seed(0)
    n = 64
    a = torch.cat([torch.rand(n, 2) * 4, torch.rand(n, 2) * 3 + 0.3, torch.rand(n, 1) * 6 - 3], 1)
    b = torch.cat([torch.rand(n, 2) * 4, torch.rand(n, 2) * 3 + 0.3, torch.rand(n, 1) * 6 - 3], 1)
    b[:4] = a[:4]  # identical
    b[4, :2], b[4, 2:4], b[4, 4] = a[4, :2], a[4, 2:4] * 0.5, a[4, 4]  # contained
    b[5, :2] = a[5, :2] + 20  # disjoint
    b[6] = a[6] + torch.tensor([0, 0, 0, 0, math.pi])  # same footprint, opposite heading
    got = rotated_bev_iou_pairs(a, b)
    ref = torch.tensor([_shapely_iou(a[i], b[i]) for i in range(n)], dtype=torch.float32)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    assert ref[:4].eq(1).all() and abs(float(got[4]) - 0.25) < 1e-5 and got[5] == 0
    assert ref.gt(0.05).sum() > 10  # the random pairs do overlap


def test_nms_removes_duplicates_and_keeps_separate_boxes():
    boxes = torch.tensor(
        [
            [0.0, 0.0, 4.0, 2.0, 0.3],
            [0.2, 0.1, 4.2, 2.0, 0.35],  # duplicate of box 0 with a lower score
            [10.0, 0.0, 4.0, 2.0, 0.0],
            [0.0, 3.0, 4.0, 2.0, 0.0],  # next to box 0, no overlap
        ]
    )
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    assert rotated_nms(boxes, scores, 0.2, 1000, 83).tolist() == [0, 2, 3]
    assert rotated_nms(boxes, scores, 0.2, 1000, 2).tolist() == [0, 2]  # post_max_size
    assert rotated_nms(boxes, scores, 0.2, 2, 83).tolist() == [0]  # pre_max_size
    # circle NMS compares squared centre distances: 0.05 m^2 apart -> suppressed at radius 1 m^2
    assert circle_nms(boxes[:, :2], scores, 1.0, 83).tolist() == [0, 2, 3]
    assert circle_nms(boxes[:, :2], scores, 0.01, 83).tolist() == [0, 1, 2, 3]
    assert circle_nms(boxes[:, :2], scores.flip(0), 1.0, 83).tolist() == [3, 2, 1]


def _preds_from_boxes(boxes, labels, tasks, pcr, H, W):
    return targets_as_predictions(build_targets([boxes], [labels], tasks, pcr, H, W))


def test_scale_nms_rescales_per_class_before_comparing():
    # two pedestrians 1 m apart (0.6 m boxes: no overlap) and a car; 0.5 m cells
    pcr = (-8.0, -8.0, -5.0, 8.0, 8.0, 3.0)
    boxes = torch.tensor(
        [
            [0.25, 0.25, 0.0, 0.6, 0.6, 1.7, 0.0, 0.0, 0.0],
            [1.25, 0.25, 0.0, 0.6, 0.6, 1.7, 0.0, 0.0, 0.0],
            [5.0, 5.0, 0.0, 4.0, 2.0, 1.5, 0.0, 0.0, 0.0],
        ]
    )
    labels = torch.tensor([1, 1, 0])
    tasks = ((0,), (1,))
    preds = _preds_from_boxes(boxes, labels, tasks, pcr, 32, 32)
    preds["t1.heatmap"][0, 0, 16, 18] -= 1.0  # second pedestrian (row 16, col 18) scores lower

    def run(factors):
        nms = NMSSettings(0.1, 500, 1000, 83, ("rotate", "rotate"), (0.2, 0.2), (1.0, 1.0), factors)
        return decode_centerpoint(preds, tasks, pcr, nms)[0]

    plain, scaled = run((1.0, 1.0)), run((1.0, 4.5))
    assert plain["labels"].tolist().count(1) == 2 and scaled["labels"].tolist().count(1) == 1
    # the kept box keeps its true size (the factor only applies while comparing)
    ped = scaled["boxes"][scaled["labels"] == 1][0]
    torch.testing.assert_close(ped[3:5], torch.tensor([0.6, 0.6]), atol=1e-5, rtol=0)
    torch.testing.assert_close(ped[:2], boxes[0, :2], atol=1e-5, rtol=0)
