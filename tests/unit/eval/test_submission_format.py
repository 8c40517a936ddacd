"""Submission JSON: official layout, attributes, lidar->global conversion, validation messages."""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from pyquaternion import Quaternion

from bevforge.config import DET_CLASSES
from bevforge.eval.box_table import BoxTable, GroundTruth, quaternion_yaw
from bevforge.eval.gt import lidar_boxes_to_global
from bevforge.eval.nuscenes_det import (
    CAMERA_META,
    SubmissionError,
    attribute_name,
    evaluate,
    make_submission,
    parse_submission,
)
from bevforge.structures.boxes import lidar_to_global


def _pose(yaw: float, t: tuple[float, float, float]) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = Quaternion(axis=[0.1, 0.05, 1.0], angle=yaw).rotation_matrix
    m[:3, 3] = t
    return m


def _samples(n: int = 3) -> list[dict]:
    return [
        {
            "token": f"tok{i}",
            "lidar2ego": _pose(math.pi / 2, (0.9, 0, 1.8)).tolist(),
            "ego2global": _pose(0.3 * i, (100.0 + i, 200.0, 0.0)).tolist(),
        }
        for i in range(n)
    ]


def _gt(samples: list[dict]) -> GroundTruth:
    return GroundTruth(
        [s["token"] for s in samples], np.zeros((len(samples), 3)), BoxTable(), BoxTable(), "unit"
    )


def test_submission_lidar_to_global_matches_reference():
    torch.manual_seed(0)
    boxes = torch.randn(7, 9).double().numpy()
    boxes[:, 3:6] = np.abs(boxes[:, 3:6]) + 0.5
    s = _samples(1)[0]
    center, size, quat, vel = lidar_boxes_to_global(boxes, s["lidar2ego"], s["ego2global"])
    for k in range(len(boxes)):
        c, wlh, q, v = lidar_to_global(boxes[k], np.array(s["ego2global"]), np.array(s["lidar2ego"]))
        np.testing.assert_allclose(center[k], c, atol=1e-9)
        np.testing.assert_allclose(size[k], wlh, atol=1e-12)
        np.testing.assert_allclose(vel[k], v, atol=1e-9)
        assert Quaternion.absolute_distance(Quaternion(quat[k]), q) < 1e-9
        assert quaternion_yaw(quat[k : k + 1])[0] == pytest.approx(
            math.atan2(*q.rotation_matrix[[1, 0], 0]), abs=1e-9
        )


def test_submission_layout_every_token_and_attributes():
    torch.manual_seed(0)
    samples = _samples(3)
    boxes = torch.zeros(4, 9, dtype=torch.float64)
    boxes[:, 3:6] = torch.tensor([4.0, 2.0, 1.5])
    boxes[0, 7] = 5.0  # moving car
    boxes[2, 7] = 0.1  # slow bicycle
    det = {"boxes": boxes, "scores": torch.tensor([0.9, 0.8, 0.7, 0.6]), "labels": torch.tensor([0, 0, 7, 8])}
    sub = make_submission({"tok1": det}, samples)
    assert sub["meta"] == CAMERA_META and sub["meta"]["use_camera"] is True
    assert list(sub["results"]) == ["tok0", "tok1", "tok2"]
    assert sub["results"]["tok0"] == [] and len(sub["results"]["tok1"]) == 4
    attrs = [b["attribute_name"] for b in sub["results"]["tok1"]]
    assert attrs == ["vehicle.moving", "vehicle.parked", "cycle.without_rider", "pedestrian.standing"]
    names = [b["detection_name"] for b in sub["results"]["tok1"]]
    assert names == [DET_CLASSES[i] for i in (0, 0, 7, 8)]
    json.dumps(sub)  # serialisable
    parse_submission(sub, _gt(samples))  # valid


def test_submission_attribute_rules_match_official():
    assert attribute_name("bus", 0.0) == "vehicle.stopped"
    assert attribute_name("bus", 1.0) == "vehicle.moving"
    assert attribute_name("motorcycle", 0.3) == "cycle.with_rider"
    assert attribute_name("pedestrian", 1.0) == "pedestrian.moving"
    assert attribute_name("truck", 0.2) == "vehicle.parked"  # > 0.2 strictly
    assert attribute_name("traffic_cone", 3.0) == "" and attribute_name("barrier", 0.0) == ""


def test_submission_keeps_at_most_500_boxes():
    samples = _samples(1)
    n = 600
    boxes = torch.zeros(n, 9, dtype=torch.float64)
    boxes[:, 3:6] = 1.0
    det = {"boxes": boxes, "scores": torch.linspace(0, 1, n), "labels": torch.zeros(n, dtype=torch.long)}
    out = make_submission({"tok0": det}, samples)["results"]["tok0"]
    assert len(out) == 500 and min(b["detection_score"] for b in out) > 0.15


def _valid():
    samples = _samples(2)
    boxes = torch.zeros(2, 9, dtype=torch.float64)
    boxes[:, 3:6] = 1.0
    det = {"boxes": boxes, "scores": torch.tensor([0.5, 0.4]), "labels": torch.tensor([0, 1])}
    return make_submission({"tok0": det}, samples), _gt(samples)


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda s: s.pop("meta"), "'meta'"),
        (lambda s: s["results"].pop("tok1"), "'tok1'"),
        (lambda s: s["results"].__setitem__("other", []), "'other'"),
        (lambda s: s["results"]["tok0"][0]["size"].__setitem__(1, float("nan")), "results['tok0'][0].size"),
        (
            lambda s: s["results"]["tok0"][1]["size"].__setitem__(0, 0.0),
            "results['tok0'][1].size must be > 0",
        ),
        (lambda s: s["results"]["tok0"][0].__setitem__("detection_name", "tram"), "detection_name 'tram'"),
        (lambda s: s["results"]["tok0"][0].__setitem__("attribute_name", "None"), "attribute_name 'None'"),
        (lambda s: s["results"]["tok0"][0].pop("rotation"), "results['tok0'][0].rotation is missing"),
        (
            lambda s: s["results"]["tok0"][0].__setitem__("translation", [1, 2]),
            "translation must be a list of 3",
        ),
        (lambda s: s["results"]["tok0"][1].__setitem__("sample_token", "tok1"), "sample_token"),
        (lambda s: s["results"].__setitem__("tok1", s["results"]["tok0"][:1] * 501), "at most 500"),
        (lambda s: s["results"]["tok0"][0].__setitem__("detection_score", float("inf")), "detection_score"),
        (lambda s: s["results"]["tok0"].__setitem__(1, 5), "results['tok0'][1]. must be an object"),
        (
            lambda s: s["results"]["tok0"][1].__setitem__("velocity", "fast"),
            "[1].velocity must be a list of 2",
        ),
        (
            lambda s: s["results"]["tok0"][0].__setitem__("rotation", [1, "a", 0, 0]),
            "rotation must hold numbers",
        ),
        (lambda s: s["results"].__setitem__("tok1", {}), "results['tok1'] must be a list"),
    ],
)
def test_submission_malformed_rejected_with_clear_message(mutate, expected):
    sub, gt = _valid()
    bad = copy.deepcopy(sub)
    mutate(bad)
    with pytest.raises(SubmissionError) as e:
        parse_submission(bad, gt, source="results_nusc.json")
    assert expected in str(e.value)
    assert "results_nusc.json" in str(e.value)


def test_submission_missing_file_is_clear(tmp_path):
    sub, gt = _valid()
    with pytest.raises(SubmissionError, match="not found"):
        evaluate(tmp_path / "nope.json", gt)
    (tmp_path / "torn.json").write_text('{"meta": {')
    with pytest.raises(SubmissionError, match="not valid JSON"):
        evaluate(tmp_path / "torn.json", gt)
