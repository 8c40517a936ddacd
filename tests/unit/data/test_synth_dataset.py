"""The synthetic generator writes a dataset that nuscenes-devkit loads, evaluates and maps unchanged."""

from __future__ import annotations

import colorsys
import json
import math

import numpy as np
import pytest
from nuscenes import NuScenes
from nuscenes.can_bus.can_bus_api import NuScenesCanBus
from nuscenes.eval.common.config import config_factory
from nuscenes.eval.detection.evaluate import DetectionEval
from nuscenes.map_expansion.map_api import NuScenesMap
from nuscenes.utils.data_classes import LidarPointCloud
from nuscenes.utils.geometry_utils import BoxVisibility, points_in_box, view_points
from PIL import Image
from pyquaternion import Quaternion

from bevforge.config import CAMERAS, DET_CLASSES
from bevforge.data.synthetic import generate
from bevforge.data.synthetic.catalog import CLASS_COLOURS
from bevforge.data.synthetic.world import rects_overlap

VERSION = "v1.0-mini"
CATEGORY_TO_CLASS = {
    "movable_object.barrier": "barrier",
    "vehicle.bicycle": "bicycle",
    "vehicle.bus.bendy": "bus",
    "vehicle.bus.rigid": "bus",
    "vehicle.car": "car",
    "vehicle.construction": "construction_vehicle",
    "vehicle.motorcycle": "motorcycle",
    "human.pedestrian.adult": "pedestrian",
    "human.pedestrian.child": "pedestrian",
    "human.pedestrian.construction_worker": "pedestrian",
    "human.pedestrian.police_officer": "pedestrian",
    "movable_object.trafficcone": "traffic_cone",
    "vehicle.trailer": "trailer",
    "vehicle.truck": "truck",
}


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    generate(out, num_scenes=3, samples_per_scene=4, seed=3, image_wh=(160, 90), workers=1, verbose=False)
    return out


@pytest.fixture(scope="module")
def nusc(root):
    return NuScenes(VERSION, str(root), verbose=False)


def test_synth_devkit_loads_every_sensor(nusc, root):
    assert len(nusc.scene) == 3
    assert [s["name"] for s in nusc.scene] == ["scene-0061", "scene-0553", "scene-0103"]
    for sample in nusc.sample:
        assert set(sample["data"]) == {*CAMERAS, "LIDAR_TOP"}
        for sd_token in sample["data"].values():
            sd = nusc.get("sample_data", sd_token)
            assert (root / sd["filename"]).is_file(), sd["filename"]
            assert sd["timestamp"] == sample["timestamp"]
        pc = LidarPointCloud.from_file(
            str(root / nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["filename"])
        )
        assert pc.points.shape[0] == 4 and pc.points.shape[1] > 100
        if sample["prev"]:
            assert sample["timestamp"] - nusc.get("sample", sample["prev"])["timestamp"] == 500_000
    classes = {CATEGORY_TO_CLASS[a["category_name"]] for a in nusc.sample_annotation}
    assert classes == set(DET_CLASSES)


def test_synth_lidar_counts_match_cloud(nusc, root):
    sample = nusc.sample[2]
    sd = nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
    pc = LidarPointCloud.from_file(str(root / sd["filename"]))
    _, boxes, _ = nusc.get_sample_data(sd["token"])  # boxes in the lidar frame
    anns = {a: nusc.get("sample_annotation", a) for a in sample["anns"]}
    assert len(boxes) == len(anns)
    for box in boxes:
        inside = int(points_in_box(box, pc.points[:3]).sum())
        ann = anns[box.token]
        assert abs(inside - ann["num_lidar_pts"]) <= 2  # float32 storage may move a point across a face
        if np.linalg.norm(box.center[:2]) < 55.0:
            assert ann["num_lidar_pts"] >= 1


def test_synth_boxes_never_overlap(nusc):
    for sample in nusc.sample:
        boxes = [nusc.get_box(a) for a in sample["anns"]]
        c = np.array([b.center[:2] for b in boxes])
        yaw = np.array([b.orientation.yaw_pitch_roll[0] for b in boxes])
        half = np.array([[b.wlh[1] / 2, b.wlh[0] / 2] for b in boxes])
        ov = rects_overlap(c[:, None], yaw[:, None], half[:, None], c[None], yaw[None], half[None])
        np.fill_diagonal(ov, False)
        assert not ov.any()


def _hue(rgb) -> float:
    return colorsys.rgb_to_hsv(*(np.asarray(rgb, dtype=np.float64) / 255.0))[0]


def _first_hits(boxes, rays: np.ndarray) -> np.ndarray:
    """[R, 3] camera rays ``t * ray`` -> [R] index of the first box each hits (t > 0), -1 if none."""
    rot = np.stack([b.orientation.rotation_matrix for b in boxes])  # [B, 3, 3] box -> camera
    centre = np.stack([b.center for b in boxes])  # [B, 3]
    half = np.stack([[b.wlh[1], b.wlh[0], b.wlh[2]] for b in boxes]) / 2.0  # [B, 3] (l, w, h)
    o = np.einsum("bji,bj->bi", rot, -centre)[:, None, :]  # [B, 1, 3] ray origin in each box frame
    d = np.einsum("bji,rj->bri", rot, rays)  # [B, R, 3]
    with np.errstate(divide="ignore", invalid="ignore"):
        t1, t2 = (-half[:, None] - o) / d, (half[:, None] - o) / d  # [B, R, 3]
    t_near = np.nanmax(np.minimum(t1, t2), -1)  # [B, R]
    t_far = np.nanmin(np.maximum(t1, t2), -1)
    t_hit = np.where((t_near <= t_far) & (t_far > 0), np.maximum(t_near, 0.0), np.inf)
    return np.where(np.isfinite(t_hit).any(0), t_hit.argmin(0), -1)


def _unoccluded_centres(boxes, k: np.ndarray, width: int, height: int):
    """(box, pixel) for boxes whose projected centre and the pixels 2 px around it all see that box first."""
    k_inv = np.linalg.inv(k)
    offsets = np.array([(du, dv) for du in (-2, 0, 2) for dv in (-2, 0, 2)])  # [9, 2]
    for i, box in enumerate(boxes):
        if box.corners()[2].min() < 1.0:
            continue
        uv = view_points(box.center[:, None], k, normalize=True)[:2, 0]
        px = np.round(uv).astype(int)
        if not (3 <= px[0] < width - 3 and 3 <= px[1] < height - 3):
            continue
        pix = np.concatenate([px[None] + offsets, np.ones((len(offsets), 1))], 1)  # [9, 3]
        if (_first_hits(boxes, pix @ k_inv.T) == i).all():
            yield box, px


def test_synth_box_centre_lands_on_its_class_colour(nusc, root):
    class_hues = {c: _hue(col) for c, col in CLASS_COLOURS.items()}
    checked = []
    for sample in nusc.sample:
        for cam in CAMERAS:
            sd = nusc.get("sample_data", sample["data"][cam])
            # every box, also those with all corners off-screen (they may still cover the view)
            _, boxes, k = nusc.get_sample_data(sd["token"], box_vis_level=BoxVisibility.NONE)  # camera frame
            img = np.asarray(Image.open(root / sd["filename"]).convert("RGB"))
            for box, uv in _unoccluded_centres(boxes, np.array(k), sd["width"], sd["height"]):
                cls = CATEGORY_TO_CLASS[box.name]
                patch = img[uv[1] - 1 : uv[1] + 2, uv[0] - 1 : uv[0] + 2].reshape(-1, 3)  # rows, cols
                h = _hue(patch.mean(0))
                nearest = min(
                    class_hues, key=lambda c: min(abs(class_hues[c] - h), 1 - abs(class_hues[c] - h))
                )
                assert nearest == cls, (sample["token"], cam, cls, patch.mean(0))
                checked.append(cls)
    assert len(checked) >= 15 and len(set(checked)) >= 2  # many boxes, several classes seen unoccluded


def test_synth_gt_as_predictions_scores_perfectly(nusc, root, tmp_path):
    val_scenes = {"scene-0103"}
    results = {}
    for sample in nusc.sample:
        if nusc.get("scene", sample["scene_token"])["name"] not in val_scenes:
            continue
        preds = []
        for ann_token in sample["anns"]:
            ann = nusc.get("sample_annotation", ann_token)
            box = nusc.get_box(ann_token)
            attrs = [nusc.get("attribute", t)["name"] for t in ann["attribute_tokens"]]
            preds.append(
                {
                    "sample_token": sample["token"],
                    "translation": box.center.tolist(),
                    "size": box.wlh.tolist(),
                    "rotation": box.orientation.elements.tolist(),
                    "velocity": nusc.box_velocity(ann_token)[:2].tolist(),
                    "detection_name": CATEGORY_TO_CLASS[ann["category_name"]],
                    "detection_score": 1.0,
                    "attribute_name": attrs[0] if attrs else "",
                }
            )
        results[sample["token"]] = preds
    path = tmp_path / "results.json"
    meta = {
        "use_camera": True,
        "use_lidar": False,
        "use_radar": False,
        "use_map": False,
        "use_external": False,
    }
    path.write_text(json.dumps({"meta": meta, "results": results}))
    ev = DetectionEval(
        nusc, config_factory("detection_cvpr_2019"), str(path), "mini_val", str(tmp_path), verbose=False
    )
    metrics, _ = ev.evaluate()
    summary = metrics.serialize()
    assert summary["mean_ap"] == pytest.approx(1.0, abs=1e-6)
    assert summary["nd_score"] == pytest.approx(1.0, abs=1e-6)


def test_synth_map_masks_follow_the_roads(nusc, root):
    locations = {nusc.get("log", s["log_token"])["location"] for s in nusc.scene}
    assert locations == {"singapore-onenorth", "boston-seaport"}
    assert {m["token"] for m in nusc.map} == {
        "53992ee3023e5494b90c316c183be829",
        "36092f0b03a857c6a3403e25b4b7aab3",
    }
    for scene in nusc.scene[:2]:
        log = nusc.get("log", scene["log_token"])
        nmap = NuScenesMap(str(root), log["location"])
        sample = nusc.get("sample", scene["first_sample_token"])
        pose = nusc.get("ego_pose", nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["ego_pose_token"])
        x, y = pose["translation"][:2]
        yaw_deg = math.degrees(Quaternion(pose["rotation"]).yaw_pitch_roll[0])
        layers = ["drivable_area", "ped_crossing", "lane_divider"]
        masks = nmap.get_map_mask((x, y, 100.0, 100.0), yaw_deg, layers, canvas_size=(200, 200))
        assert masks.shape == (3, 200, 200)
        assert masks[0, 95:105, 95:105].all()  # the ego stands on drivable area
        assert masks[0].mean() > 0.1 and masks[2].any()
        # the semantic-prior PNG of the log's map agrees at the ego position (10 px/m, row 0 = north)
        png = np.asarray(Image.open(root / nusc.get("map", log["map_token"])["filename"]))
        assert png[png.shape[0] - int(y * 10), int(x * 10)] == 255
        assert nmap.get_closest_lane(x, y, radius=5.0) != ""


def test_synth_can_bus_pose_covers_the_samples(nusc, root):
    can = NuScenesCanBus(dataroot=str(root))
    scene = nusc.scene[0]
    pose = can.get_messages(scene["name"], "pose")
    assert list(pose[0]) == ["accel", "orientation", "pos", "rotation_rate", "utime", "vel"]
    first = nusc.get("sample", scene["first_sample_token"])["timestamp"]
    last = nusc.get("sample", scene["last_sample_token"])["timestamp"]
    utimes = [m["utime"] for m in pose]
    assert utimes[0] < first and utimes[-1] > last
    assert np.allclose(np.diff(utimes), 20_000, atol=1)
    imu = can.get_messages(scene["name"], "ms_imu")
    assert set(imu[0]) == {"linear_accel", "q", "rotation_rate", "utime"}
    assert len(can.get_messages(scene["name"], "route")) > 2
