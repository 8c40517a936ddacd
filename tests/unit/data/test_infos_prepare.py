"""`bevforge prepare` on a tiny synthetic dataset: header, keys, geometry against the devkit, bad input."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
from pyquaternion import Quaternion

from bevforge.cli.main import main as cli_main
from bevforge.data.nuscenes.infos import SAMPLE_KEYS, InfoFile, InfoFormatError, load_infos, save_infos
from bevforge.data.nuscenes.prepare import TABLES, DatasetError, create_infos, open_nuscenes
from bevforge.structures.boxes import BOX_CONVENTION, lidar_to_global


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from bevforge.data.synthetic import generate

    root = tmp_path_factory.mktemp("syn")
    generate(root, num_scenes=3, samples_per_scene=4, seed=0, image_wh=(160, 90), verbose=False)
    assert (
        cli_main(
            ["prepare", "--data-root", str(root), "--version", "v1.0-mini", "--out", str(root / "infos")]
        )
        == 0
    )
    return root


def test_header_keys_and_round_trip(prepared, tmp_path):
    info = load_infos(prepared / "infos" / "infos_train.json", expect_version="v1.0-mini")
    assert info.split == "train" and info.box_convention == BOX_CONVENTION and info.created
    assert len(info.samples) == 8 and len({s["scene_token"] for s in info.samples}) == 2
    assert len(load_infos(prepared / "infos" / "infos_val.json").samples) == 4
    s = info.samples[0]
    assert set(SAMPLE_KEYS) <= set(s) and s["frame_idx"] == 0 and s["prev"] == ""
    assert [x["timestamp"] for x in info.samples] == sorted(x["timestamp"] for x in info.samples)
    out = save_infos(info, tmp_path / "again.json")
    again = load_infos(out)
    assert again.samples == info.samples and again.header()["classes"] == info.header()["classes"]


def test_geometry_matches_devkit(prepared):
    nusc = open_nuscenes(prepared, "v1.0-mini")
    info = load_infos(prepared / "infos" / "infos_train.json")
    s = info.samples[1]
    sample = nusc.get("sample", s["token"])
    ego2global, lidar2ego = np.array(s["ego2global"]), np.array(s["lidar2ego"])
    # every GT box maps back onto its annotation in the global frame
    for box, tok in zip(s["gt"]["boxes"], sample["anns"], strict=True):
        ann = nusc.get("sample_annotation", tok)
        centre, wlh, rot, vel = lidar_to_global(np.array(box), ego2global, lidar2ego)
        assert np.allclose(centre, ann["translation"], atol=1e-6) and np.allclose(wlh, ann["size"])
        assert abs((rot.inverse * Quaternion(ann["rotation"])).angle) < 1e-6
        dv = nusc.box_velocity(tok)[:2]
        assert np.allclose(vel, np.nan_to_num(dv), atol=1e-6)
    # can_bus: ego pose overwrite, yaw in rad/deg in [0, 360)
    pose = nusc.get("ego_pose", nusc.get("sample_data", sample["data"]["LIDAR_TOP"])["ego_pose_token"])
    cb = np.array(s["can_bus"])
    assert np.allclose(cb[:3], pose["translation"]) and np.allclose(cb[3:7], pose["rotation"])
    assert 0 <= cb[17] < 360 and math.isclose(cb[16], math.radians(cb[17]))
    assert np.any(cb[7:16] != 0)  # the synthetic set has CAN data
    # lidar2img = K_pad @ inv(sensor2lidar)
    cam = s["cams"]["CAM_FRONT"]
    k = np.eye(4)
    k[:3, :3] = cam["intrinsics"]
    assert np.allclose(cam["lidar2img"], k @ np.linalg.inv(np.array(cam["sensor2lidar"])))
    assert (prepared / cam["path"]).is_file() and cam["width"] == 160 and cam["height"] == 90
    # independent check of lidar2img: the devkit's chain global -> ego(cam time) -> camera -> pixels
    sd = nusc.get("sample_data", sample["data"]["CAM_FRONT"])
    cs, cam_pose = (
        nusc.get("calibrated_sensor", sd["calibrated_sensor_token"]),
        nusc.get("ego_pose", sd["ego_pose_token"]),
    )
    checked = 0
    for box, tok in zip(s["gt"]["boxes"], sample["anns"], strict=True):
        p = np.array(nusc.get("sample_annotation", tok)["translation"], dtype=np.float64)
        p = Quaternion(cam_pose["rotation"]).inverse.rotate(p - cam_pose["translation"])
        p = Quaternion(cs["rotation"]).inverse.rotate(p - cs["translation"])
        if p[2] < 1.0:
            continue  # behind the camera
        uv_devkit = (np.array(cs["camera_intrinsic"]) @ p)[:2] / p[2]
        q = np.array(cam["lidar2img"]) @ np.array([*box[:3], 1.0])
        assert np.allclose(q[:2] / q[2], uv_devkit, atol=1e-6)
        checked += 1
    assert checked > 0


def test_bad_info_files(prepared, tmp_path):
    good = (prepared / "infos" / "infos_val.json").read_text()
    trunc = tmp_path / "infos_trunc.json"
    trunc.write_text(good[: len(good) // 2])
    with pytest.raises(InfoFormatError, match="infos_trunc.json.*not valid JSON.*bevforge prepare"):
        load_infos(trunc)
    with pytest.raises(InfoFormatError, match="v1.0-mini.*v1.0-trainval"):
        load_infos(prepared / "infos" / "infos_val.json", expect_version="v1.0-trainval")
    obj = json.loads(good)
    obj["format_version"] = 99
    (tmp_path / "v99.json").write_text(json.dumps(obj))
    with pytest.raises(InfoFormatError, match="v99.json.*format_version 99"):
        load_infos(tmp_path / "v99.json")
    del obj["samples"][0]["gt"]
    obj["format_version"] = 1
    (tmp_path / "nogt.json").write_text(json.dumps(obj))
    with pytest.raises(InfoFormatError, match="nogt.json: sample 0.*lacks keys \\['gt'\\]"):
        load_infos(tmp_path / "nogt.json")
    with pytest.raises(InfoFormatError, match="not found"):
        load_infos(tmp_path / "missing.json")
    with pytest.raises(InfoFormatError, match="NaN"):
        save_infos(
            InfoFile(samples=[{**obj["samples"][1], "can_bus": [math.nan] * 18}]), tmp_path / "nan.json"
        )


def _tables_copy(prepared, tmp_path):
    root = tmp_path / "root"
    shutil.copytree(prepared / "v1.0-mini", root / "v1.0-mini")
    shutil.copytree(prepared / "maps", root / "maps")
    return root


def test_missing_table_and_dangling_token(prepared, tmp_path):
    root = _tables_copy(prepared, tmp_path)
    (root / "v1.0-mini" / "ego_pose.json").unlink()
    with pytest.raises(DatasetError, match="missing table.*ego_pose.json"):
        create_infos(root, "v1.0-mini", tmp_path / "out", log=lambda _: None)
    shutil.copy(prepared / "v1.0-mini" / "ego_pose.json", root / "v1.0-mini" / "ego_pose.json")
    anns = json.loads((root / "v1.0-mini" / "sample_annotation.json").read_text())
    anns[0]["attribute_tokens"] = ["no-such-attribute"]
    (root / "v1.0-mini" / "sample_annotation.json").write_text(json.dumps(anns))
    with pytest.raises(DatasetError, match="attribute.json: no record with token 'no-such-attribute'"):
        create_infos(root, "v1.0-mini", tmp_path / "out", log=lambda _: None)
    with pytest.raises(DatasetError, match="v1.0-trainval.*not found"):
        open_nuscenes(root, "v1.0-trainval")
    assert len(TABLES) == 13


def test_record_missing_a_field(prepared, tmp_path):
    root = _tables_copy(prepared, tmp_path)
    anns = json.loads((root / "v1.0-mini" / "sample_annotation.json").read_text())
    del anns[0]["size"]
    (root / "v1.0-mini" / "sample_annotation.json").write_text(json.dumps(anns))
    with pytest.raises(DatasetError, match="lacks the field 'size'"):
        create_infos(root, "v1.0-mini", tmp_path / "out", log=lambda _: None)
