"""Our vectorised detection metrics == nuscenes-devkit 1.2.0 DetectionEval, on identical inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bevforge.eval.box_table import ATTRIBUTE_NAMES, DETECTION_NAMES
from bevforge.eval.devkit_bridge import devkit_db_metrics, devkit_metrics, max_abs_difference
from bevforge.eval.fake_db import fake_infos, write_fake_db
from bevforge.eval.gt import load_gt_from_db, load_gt_from_infos
from bevforge.eval.nuscenes_det import evaluate

TOL = 1e-6


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("fakedb")
    info = write_fake_db(
        root, num_scenes=2, samples_per_scene=4, objects_per_scene=40, seed=3, full_tracks=True
    )
    gt = load_gt_from_db(root, info["version"], info["split"])
    return root, info, gt


def _gt_as_submission(gt, rng=None):
    results = {t: [] for t in gt.sample_tokens}
    b = gt.boxes
    for i in range(len(b)):
        if b.num_pts[i] == 0:
            continue
        tok = gt.sample_tokens[b.sample_idx[i]]
        a = int(b.attr[i])
        results[tok].append(
            {
                "sample_token": tok,
                "translation": b.translation[i].tolist(),
                "size": b.size[i].tolist(),
                "rotation": b.rotation[i].tolist(),
                "velocity": np.nan_to_num(b.velocity[i]).tolist(),
                "detection_name": DETECTION_NAMES[b.label[i]],
                "detection_score": float(rng.random()) if rng is not None else 0.5,
                "attribute_name": ATTRIBUTE_NAMES[a] if a >= 0 else "",
            }
        )
    return {"meta": {"use_camera": True}, "results": results}


def test_metrics_gt_as_prediction_is_perfect(db):
    _, _, gt = db
    m = evaluate(_gt_as_submission(gt, np.random.default_rng(0)), gt)
    assert m["mean_ap"] == pytest.approx(1.0, abs=1e-9)
    assert m["nd_score"] == pytest.approx(1.0, abs=1e-9)
    for err in m["tp_errors"].values():
        assert err == pytest.approx(0.0, abs=1e-9)


def test_metrics_equal_genuine_devkit_pipeline(db, tmp_path):
    root, info, gt = db
    sub = _gt_as_submission(gt, np.random.default_rng(1))
    # degrade a little so that every metric is non-trivial
    for boxes in sub["results"].values():
        for k, box in enumerate(boxes):
            box["translation"][0] += 0.3 * (k % 3)
            box["velocity"] = [box["velocity"][0] + 0.5, box["velocity"][1]]
    path = tmp_path / "results.json"
    path.write_text(json.dumps(sub))
    ours = evaluate(path, gt)
    theirs = devkit_db_metrics(root, info["version"], info["eval_set"], path)
    worst, where = max_abs_difference(ours, theirs)
    assert worst <= TOL, (worst, where)
    assert 0.2 < ours["mean_ap"] < 1.0


def test_metrics_infos_gt_equals_db_gt(db):
    root, info, gt = db
    gti = load_gt_from_infos(fake_infos(root, info["version"], gt.sample_tokens))
    assert gti.sample_tokens == gt.sample_tokens
    np.testing.assert_allclose(gti.boxes.translation, gt.boxes.translation, atol=1e-9)
    np.testing.assert_array_equal(gti.boxes.label, gt.boxes.label)
    np.testing.assert_array_equal(gti.boxes.attr, gt.boxes.attr)
    np.testing.assert_allclose(gti.boxes.velocity, gt.boxes.velocity, atol=1e-9)
    assert len(gti.racks) == len(gt.racks) > 0
    sub = _gt_as_submission(gt, np.random.default_rng(2))
    worst, where = max_abs_difference(evaluate(sub, gti), devkit_metrics(gti, sub))
    assert worst <= TOL, (worst, where)


def _perturbed(gt, seed, drop, dup, noise, fp, tie, nan_vel, relabel, edge=0.0):
    rng = np.random.default_rng(seed)
    sub = _gt_as_submission(gt, rng)
    for tok, boxes in sub["results"].items():
        out = []
        for box in boxes:
            if rng.random() < drop:
                continue
            box["translation"] = (np.array(box["translation"]) + rng.normal(0, noise, 3)).tolist()
            box["size"] = (np.array(box["size"]) * rng.uniform(0.7, 1.3, 3)).tolist()
            yaw = rng.normal(0, noise)
            q = np.array(box["rotation"])
            box["rotation"] = [
                q[0] * np.cos(yaw) - q[3] * np.sin(yaw),
                q[1],
                q[2],
                q[3] * np.cos(yaw) + q[0] * np.sin(yaw),
            ]
            box["velocity"] = (np.array(box["velocity"]) + rng.normal(0, noise, 2)).tolist()
            if rng.random() < nan_vel:
                box["velocity"] = [float("nan"), float("nan")]
            if rng.random() < relabel:
                box["detection_name"] = DETECTION_NAMES[int(rng.integers(10))]
                box["attribute_name"] = ["", *ATTRIBUTE_NAMES][int(rng.integers(9))]
            if tie:
                box["detection_score"] = round(box["detection_score"], 1)
            if rng.random() < edge:  # exactly a threshold away (3-4-5 triangles): the devkit's `<` decides
                th = [0.5, 1.0, 2.0, 4.0][int(rng.integers(4))]
                box["translation"][0] += 0.6 * th
                box["translation"][1] += 0.8 * th
            out.append(box)
            if rng.random() < dup:
                twin = json.loads(json.dumps(box))
                twin["translation"][1] += rng.normal(0, 0.2) if rng.random() < 0.5 else 0.0  # exact twins too
                out.append(twin)
        for _ in range(int(rng.poisson(fp))):
            base = np.array(gt.ego_xyz[gt.sample_tokens.index(tok)])
            out.append(
                {
                    "sample_token": tok,
                    "translation": (base + np.append(rng.uniform(-60, 60, 2), 1.0)).tolist(),
                    "size": rng.uniform(0.5, 5, 3).tolist(),
                    "rotation": [1.0, 0.0, 0.0, 0.0],
                    "velocity": rng.normal(0, 2, 2).tolist(),
                    "detection_name": DETECTION_NAMES[int(rng.integers(10))],
                    "detection_score": float(rng.random()),
                    "attribute_name": "",
                }
            )
        sub["results"][tok] = out
    return sub


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    seed=st.integers(0, 2**31 - 1),
    drop=st.floats(0, 0.6),
    dup=st.floats(0, 0.5),
    noise=st.sampled_from([0.0, 0.1, 0.5, 1.5, 3.0]),
    fp=st.floats(0, 6),
    tie=st.booleans(),
    nan_vel=st.sampled_from([0.0, 0.2, 1.0]),
    relabel=st.floats(0, 0.3),
    edge=st.sampled_from([0.0, 0.5]),
)
def test_metrics_perturbed_predictions_match_devkit(
    db, seed, drop, dup, noise, fp, tie, nan_vel, relabel, edge
):
    _, _, gt = db
    sub = _perturbed(gt, seed, drop, dup, noise, fp, tie, nan_vel, relabel, edge)
    if not any(sub["results"].values()):
        return  # the devkit cannot score an all-empty submission
    worst, where = max_abs_difference(evaluate(sub, gt), devkit_metrics(gt, sub))
    assert worst <= TOL, (worst, where)


def test_metrics_filter_matches_devkit_filter(db):
    """Range, zero-point and bike-rack filtering keep exactly the boxes the devkit keeps."""
    from nuscenes import NuScenes
    from nuscenes.eval.common.loaders import add_center_dist, filter_eval_boxes, load_gt
    from nuscenes.eval.detection.data_classes import DetectionBox

    from bevforge.eval.box_table import CLASS_INDEX
    from bevforge.eval.metrics import DetectionEvalConfig, filter_mask

    root, info, gt = db
    nusc = NuScenes(info["version"], str(root), verbose=False)
    dk = load_gt(nusc, info["eval_set"], DetectionBox)
    kept = filter_eval_boxes(nusc, add_center_dist(nusc, dk), DetectionEvalConfig().class_range)
    mask = filter_mask(gt.boxes, gt, DetectionEvalConfig().class_range)
    ours = gt.boxes.select(mask)
    assert len(ours) == len(kept.all)
    np.testing.assert_allclose(ours.translation, np.array([b.translation for b in kept.all]))
    # the generator parks a bicycle inside a rack in every scene: dropped, and only by the rack test
    from bevforge.eval.box_table import BoxTable, GroundTruth

    no_racks = GroundTruth(gt.sample_tokens, gt.ego_xyz, gt.boxes, BoxTable())
    mask_no_racks = filter_mask(gt.boxes, no_racks, DetectionEvalConfig().class_range)
    bikes = gt.boxes.label == CLASS_INDEX["bicycle"]
    assert (bikes & mask_no_racks & ~mask).any()
    assert not (~bikes & mask_no_racks & ~mask).any()
