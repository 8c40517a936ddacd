"""viz/results.py + `bevforge vis`: submission (global) -> lidar boxes -> pixels of the sample PNG."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pyquaternion import Quaternion

from bevforge.cli.main import main
from bevforge.config import CAMERAS
from bevforge.structures.boxes import BOX_CONVENTION, lidar_to_global
from bevforge.viz.bev import GT_COLOR, PRED_COLOR, BevView
from bevforge.viz.cameras import TITLE_H
from bevforge.viz.results import VisInputError, render_results, submission_to_lidar

IMG_WH = (160, 90)
YAW_OF_CAM = {"CAM_FRONT": 0.0, "CAM_FRONT_LEFT": 0.96, "CAM_FRONT_RIGHT": -0.96, "CAM_BACK": np.pi,
              "CAM_BACK_LEFT": 1.9, "CAM_BACK_RIGHT": -1.9}  # fmt: skip


def _pose(yaw: float, t: tuple[float, float, float]) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = Quaternion(axis=[0, 0, 1], radians=yaw).rotation_matrix
    m[:3, 3] = t
    return m


def _lidar2img(yaw: float) -> np.ndarray:
    cam2lidar = _pose(yaw, (0.0, 0.0, 0.0))
    cam2lidar[:3, :3] = cam2lidar[:3, :3] @ np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]])  # cam z -> heading
    k = np.eye(4)
    k[:3, :3] = [[80, 0, 80], [0, 80, 45], [0, 0, 1]]
    return k @ np.linalg.inv(cam2lidar)


def _make_dataset(root: Path, n: int = 2) -> tuple[Path, list[dict]]:
    samples = []
    for i in range(n):
        token = f"tok{i}"
        cams = {}
        for cam in CAMERAS:
            rel = f"samples/{cam}/{token}.jpg"
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", IMG_WH, (90, 90, 90)).save(root / rel)
            cams[cam] = {"path": rel, "width": IMG_WH[0], "height": IMG_WH[1], "timestamp": i,
                         "intrinsics": np.eye(3).tolist(), "sensor2ego": np.eye(4).tolist(),
                         "sensor2lidar": np.eye(4).tolist(),
                         "lidar2img": _lidar2img(YAW_OF_CAM[cam]).tolist()}  # fmt: skip
        gt = {"boxes": [[-10.0, 8.0, 0.0, 4.0, 2.0, 1.5, 0.0, 0.0, 0.0], [30.0, 30.0, 0.0, 1, 1, 1, 0, 0, 0]],
              "names": ["car", "animal"], "labels": [0, -1], "num_lidar_pts": [5, 5], "num_radar_pts": [0, 0],
              "valid": [True, True], "instance_tokens": ["a", "b"], "attribute_names": ["", ""]}  # fmt: skip
        samples.append({
            "token": token, "scene_token": "s0", "scene_name": "scene-0001", "frame_idx": i,
            "prev": "", "next": "", "timestamp": 1000 * (n - i), "location": "here", "lidar_path": "x.bin",
            "lidar2ego": _pose(0.1, (1.0, 0.0, 1.8)).tolist(),
            "ego2global": _pose(0.7, (300.0, 600.0, 0.0)).tolist(),
            "can_bus": [0.0] * 18, "cams": cams, "gt": gt,
        })  # fmt: skip
    info = {"format": "bevforge-infos", "format_version": 1, "split": "val", "nuscenes_version": "v1.0-mini",
            "box_convention": BOX_CONVENTION, "classes": [], "cameras": list(CAMERAS), "created": "",
            "source": "test", "num_samples": n, "samples": samples}  # fmt: skip
    path = root / "infos_val.json"
    path.write_text(json.dumps(info))
    return path, samples


PRED_LIDAR = np.array([10.0, -5.0, 0.5, 4.0, 2.0, 1.5, 0.4, 1.0, 0.0])


def _submission(samples: list[dict], path: Path) -> Path:
    results = {}
    for s in samples:
        c, wlh, q, v = lidar_to_global(PRED_LIDAR, np.asarray(s["ego2global"]), np.asarray(s["lidar2ego"]))
        box = {"sample_token": s["token"], "translation": c.tolist(), "size": wlh.tolist(),
               "rotation": list(q.elements), "velocity": v.tolist(), "detection_name": "car",
               "detection_score": 0.8, "attribute_name": ""}  # fmt: skip
        low = dict(box, detection_score=0.1, translation=[0.0, 0.0, 0.0])
        results[s["token"]] = [box, low]
    path.write_text(json.dumps({"meta": {"use_camera": True}, "results": results}))
    return path


def test_viz_submission_round_trip_to_lidar(tmp_path: Path) -> None:
    _, samples = _make_dataset(tmp_path, n=1)
    sub = json.loads(_submission(samples, tmp_path / "r.json").read_text())["results"]["tok0"]
    boxes, scores, names = submission_to_lidar(sub, samples[0], score_thr=0.3)
    assert boxes.shape == (1, 9) and names == ["car"]
    np.testing.assert_allclose(boxes[0], PRED_LIDAR, atol=1e-6)
    np.testing.assert_allclose(scores, [0.8])


def test_viz_render_results_boxes_at_expected_pixels(tmp_path: Path) -> None:
    info, samples = _make_dataset(tmp_path, n=2)
    results = _submission(samples, tmp_path / "results_nusc.json")
    paths = render_results(results, info, tmp_path, tmp_path / "vis", tokens=["tok1"], score_thr=0.3)
    assert paths == [tmp_path / "vis" / "tok1.png"]
    img = Image.open(paths[0]).convert("RGB")
    side = img.height - TITLE_H  # the BEV panel is square, as tall as the camera grid
    view = BevView(51.2, side)

    def color_near(xy: tuple[float, float], color) -> bool:
        u, v = view.to_px(np.array(xy))
        return any(img.getpixel((int(u) + du, int(v) + TITLE_H + dv)) == color
                   for du in (-1, 0, 1) for dv in (-1, 0, 1))  # fmt: skip

    # predicted box: the front-edge midpoint (heading line end) is green
    front = PRED_LIDAR[:2] + 2.0 * np.array([np.cos(0.4), np.sin(0.4)])
    assert color_near(tuple(front), PRED_COLOR)
    # GT car (front edge midpoint at (-8, 8)) is red; the non-detection GT (label -1) is not drawn
    assert color_near((-8.0, 8.0), GT_COLOR)
    assert not color_near((30.5, 30.0), GT_COLOR)
    # the low-score prediction at the global origin is hidden; the camera grid has green in it
    cams = np.asarray(img)[TITLE_H:, side:]
    assert (np.abs(cams.astype(int) - PRED_COLOR).sum(-1) < 120).any()


def test_viz_render_results_scene_video_and_errors(tmp_path: Path) -> None:
    info, samples = _make_dataset(tmp_path, n=2)
    results = _submission(samples, tmp_path / "results_nusc.json")
    paths = render_results(results, info, tmp_path, tmp_path / "v", scene="scene-0001", video=True)
    # time order: tok1 has the smaller timestamp
    assert [p.name for p in paths[:2]] == ["tok1.png", "tok0.png"]
    assert paths[2].suffix in (".mp4", ".gif") and paths[2].stat().st_size > 0
    with pytest.raises(VisInputError, match="not in this info file"):
        render_results(results, info, tmp_path, tmp_path / "v", tokens=["nope"])
    with pytest.raises(VisInputError, match="no scene named"):
        render_results(results, info, tmp_path, tmp_path / "v", scene="scene-9")


def test_viz_vis_cli(tmp_path: Path, capsys) -> None:
    info, samples = _make_dataset(tmp_path, n=1)
    results = _submission(samples, tmp_path / "results_nusc.json")
    args = ["vis", "--results", str(results), "--data-root", str(tmp_path), "--info-file", str(info)]
    assert main([*args, "--out", str(tmp_path / "o")]) == 0
    assert (tmp_path / "o" / "tok0.png").is_file()
    assert main([*args, "--out", str(tmp_path / "o"), "--sample", "missing"]) == 2
    assert "not in this info file" in capsys.readouterr().err
