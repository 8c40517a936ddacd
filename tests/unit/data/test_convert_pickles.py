"""convert-infos: small pickles in the BEVFormer / mmdet3d v1 / v2 layouts round-trip to our infos."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
from pyquaternion import Quaternion

from bevforge.cli.main import main as cli_main
from bevforge.data.nuscenes.convert import InfoConvertError, convert_infos, load_pickle
from bevforge.data.nuscenes.infos import load_infos
from bevforge.structures.boxes import to_mmdet3d_v0, to_mmdet3d_v1, wrap_angle

MMDET3D_CLASSES = ("car", "truck", "trailer", "bus", "construction_vehicle", "bicycle", "motorcycle")
MMDET3D_CLASSES += ("pedestrian", "traffic_cone", "barrier")


@pytest.fixture(scope="module")
def samples(synthetic_data):
    root = synthetic_data("syn", num_scenes=3, samples_per_scene=3, seed=1, image_wh=(64, 36))
    return load_infos(root / "infos" / "infos_train.json").samples


def _q(m) -> list[float]:
    return Quaternion(matrix=np.asarray(m)[:3, :3], atol=1e-6, rtol=1e-6).elements.tolist()


def _gt_arrays(s):
    gt = s["gt"]
    boxes = np.array(gt["boxes"]).reshape(-1, 9)
    vel = (
        np.where(np.array(gt["velocity_valid"])[:, None], boxes[:, 7:9], np.nan)
        if len(boxes)
        else boxes[:, 7:9]
    )
    return boxes, vel, np.array(gt["names"])


def _v0_v1(samples, layout: str) -> dict:
    infos = []
    for s in samples:
        e2g, l2e = np.array(s["ego2global"]), np.array(s["lidar2ego"])
        boxes, vel, names = _gt_arrays(s)
        info = {
            "token": s["token"],
            "lidar_path": "./data/nuscenes/" + s["lidar_path"],
            "sweeps": [],
            "lidar2ego_translation": l2e[:3, 3],
            "lidar2ego_rotation": _q(l2e),
            "ego2global_translation": e2g[:3, 3],
            "ego2global_rotation": _q(e2g),
            "timestamp": s["timestamp"],
            "cams": {},
            "gt_boxes": to_mmdet3d_v0(boxes) if layout == "v0" else to_mmdet3d_v1(boxes),
            "gt_names": names,
            "gt_velocity": vel,
            "num_lidar_pts": np.array(s["gt"]["num_lidar_pts"]),
            "num_radar_pts": np.array(s["gt"]["num_radar_pts"]),
            "valid_flag": np.array(s["gt"]["valid"]),
        }
        if layout == "v0":
            raw_can = np.array(s["can_bus"])
            raw_can[:7], raw_can[16:] = 0.0, 0.0  # the pickle holds the raw CAN vector
            info.update(can_bus=raw_can, frame_idx=s["frame_idx"], scene_token=s["scene_token"])
            info.update(prev=s["prev"], next=s["next"])
        for cam, c in s["cams"].items():
            s2l, s2e = np.array(c["sensor2lidar"]), np.array(c["sensor2ego"])
            info["cams"][cam] = {
                "data_path": "./data/nuscenes/" + c["path"],
                "type": cam,
                "sensor2ego_translation": s2e[:3, 3].tolist(),
                "sensor2ego_rotation": _q(s2e),
                "sensor2lidar_rotation": s2l[:3, :3],
                "sensor2lidar_translation": s2l[:3, 3],
                "cam_intrinsic": np.array(c["intrinsics"]),
                "timestamp": c["timestamp"],
            }
        infos.append(info)
    return {"infos": infos, "metadata": {"version": "v1.0-mini"}}


def _v2(samples) -> dict:
    data_list = []
    for s in samples:
        boxes, vel, names = _gt_arrays(s)
        v1 = to_mmdet3d_v1(boxes)
        instances = [
            {
                "bbox_3d": v1[i].tolist(),
                "bbox_label_3d": MMDET3D_CLASSES.index(n) if n in MMDET3D_CLASSES else -1,
                "velocity": vel[i].tolist(),
                "num_lidar_pts": s["gt"]["num_lidar_pts"][i],
                "num_radar_pts": s["gt"]["num_radar_pts"][i],
                "bbox_3d_isvalid": s["gt"]["valid"][i],
            }
            for i, n in enumerate(names)
        ]
        images = {
            cam: {
                "img_path": c["path"].split("/")[-1],
                "cam2img": c["intrinsics"],
                "cam2ego": c["sensor2ego"],
                "lidar2cam": np.linalg.inv(np.array(c["sensor2lidar"])).astype(np.float32).tolist(),
                "timestamp": c["timestamp"] / 1e6,
            }
            for cam, c in s["cams"].items()
        }
        data_list.append(
            {
                "token": s["token"],
                "timestamp": s["timestamp"] / 1e6,
                "ego2global": s["ego2global"],
                "lidar_points": {"lidar_path": s["lidar_path"].split("/")[-1], "lidar2ego": s["lidar2ego"]},
                "images": images,
                "instances": instances,
            }
        )
    cats = {c: i for i, c in enumerate(MMDET3D_CLASSES)}
    return {"metainfo": {"categories": cats, "version": "v1.0-mini"}, "data_list": data_list}


@pytest.mark.parametrize("layout", ["v0", "v1", "v2"])
def test_round_trip(samples, tmp_path, layout):
    obj = _v2(samples) if layout == "v2" else _v0_v1(samples, layout)
    pkl = tmp_path / "nuscenes_infos_temporal_train.pkl"
    pkl.write_bytes(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
    out = tmp_path / "infos_train.json"
    assert cli_main(["convert-infos", str(pkl), "--out", str(out), "--image-size", "64,36"]) == 0
    info = load_infos(out)
    expected = {"v0": "bevforge-v0", "v1": "mmdet3d-v1", "v2": "mmdet3d-v2"}[layout]
    assert info.source == f"convert-infos:{expected}" and info.split == "train"
    assert [s["token"] for s in info.samples] == [s["token"] for s in samples]
    tol = {"rtol": 1e-4, "atol": 1e-3} if layout == "v2" else {"atol": 1e-6}  # v2 stores lidar2cam float32
    scene_map: dict[str, str] = {}
    for got, ref in zip(info.samples, samples, strict=True):
        assert got["timestamp"] == ref["timestamp"] and got["lidar_path"] == ref["lidar_path"]
        assert scene_map.setdefault(got["scene_token"], ref["scene_token"]) == ref["scene_token"]
        assert got["frame_idx"] == ref["frame_idx"] and bool(got["prev"]) == bool(ref["prev"])
        assert np.allclose(got["ego2global"], ref["ego2global"]) and np.allclose(
            got["lidar2ego"], ref["lidar2ego"]
        )
        cb, rcb = np.array(got["can_bus"]), np.array(ref["can_bus"])
        assert np.allclose(cb[:7], rcb[:7]) and np.allclose(cb[16:], rcb[16:])
        assert np.allclose(cb[7:16], rcb[7:16] if layout == "v0" else 0.0)
        for cam, c in ref["cams"].items():
            g = got["cams"][cam]
            assert g["path"] == c["path"] and g["timestamp"] == c["timestamp"]
            assert np.allclose(g["lidar2img"], c["lidar2img"], **tol)
        gb, rb = np.array(got["gt"]["boxes"]).reshape(-1, 9), np.array(ref["gt"]["boxes"]).reshape(-1, 9)
        assert np.allclose(gb[:, :6], rb[:, :6]) and np.allclose(gb[:, 7:], rb[:, 7:])
        assert np.allclose(wrap_angle(gb[:, 6] - rb[:, 6]), 0.0, atol=1e-9)
        assert got["gt"]["labels"] == ref["gt"]["labels"] and got["gt"]["valid"] == ref["gt"]["valid"]
        assert got["gt"]["velocity_valid"] == ref["gt"]["velocity_valid"]
    assert len(scene_map) == len({s["scene_token"] for s in samples})  # scenes rebuilt from time (v1/v2)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_restricted_unpickler_and_bad_pickles(tmp_path):
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps({"infos": [_Evil()]}))
    with pytest.raises(InfoConvertError, match="evil.pkl.*(posix|os).system.*refusing"):
        load_pickle(evil)
    ok = tmp_path / "ok.pkl"
    ok.write_bytes(pickle.dumps({"a": np.arange(3, dtype=np.float32), "b": np.array(["car"]), "c": {1, 2}}))
    assert load_pickle(ok)["a"].tolist() == [0.0, 1.0, 2.0]
    trunc = tmp_path / "trunc.pkl"
    trunc.write_bytes(ok.read_bytes()[:20])
    with pytest.raises(InfoConvertError, match="trunc.pkl.*truncated or corrupt"):
        load_pickle(trunc)
    other = tmp_path / "other.pkl"
    other.write_bytes(pickle.dumps({"foo": 1}))
    with pytest.raises(InfoConvertError, match="other.pkl: unknown info layout"):
        convert_infos(other, log=lambda _: None)
    nokey = tmp_path / "nokey.pkl"
    nokey.write_bytes(pickle.dumps({"infos": [{"token": "x", "can_bus": np.zeros(18)}]}))
    with pytest.raises(InfoConvertError, match="nokey.pkl: an info lacks key 'lidar2ego_rotation'"):
        convert_infos(nokey, log=lambda _: None)
