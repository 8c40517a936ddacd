"""can_bus semantics (official `_get_can_bus_info` + dataset overwrite) and split selection."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from pyquaternion import Quaternion

from bevforge.data.nuscenes.can_bus import get_can_bus, pose_can_values
from bevforge.data.nuscenes.splits import split_scene_names


def _msg(t: int, k: float) -> dict:
    return {"utime": t, "pos": [k, 0, 0], "orientation": [1, 0, 0, 0], "accel": [k, k, k],
            "rotation_rate": [2 * k] * 3, "vel": [3 * k] * 3}  # fmt: skip


def test_pose_message_choice_matches_official():
    msgs = [_msg(100, 1.0), _msg(200, 2.0), _msg(300, 3.0)]
    v = pose_can_values(msgs, 250)
    assert v[0] == 2.0 and v[7] == 3.0 and v[10] == 6.0 and v[13] == 9.0  # pos: last <= t; rest: next one
    assert pose_can_values(msgs, 250, official_next_message=False)[7] == 2.0
    assert pose_can_values(msgs, 50)[0] == 1.0  # before the first message: the first
    assert pose_can_values(msgs, 999)[7] == 3.0  # after the last: the last


class _Api:
    def __init__(self, msgs=None):
        self.msgs = msgs

    def get_messages(self, scene, name):
        if self.msgs is None:
            raise Exception(f"{scene} does not have any CAN bus data!")  # like the devkit blacklist
        return self.msgs


def test_overwrite_with_ego_pose_and_yaw():
    q = Quaternion(axis=[0, 0, 1], degrees=-30.0)
    can = get_can_bus(
        _Api([_msg(100, 1.0), _msg(200, 2.0)]), "scene-0001", 150, np.array([5.0, 6, 7]), q.elements
    )
    assert np.allclose(can[:3], [5, 6, 7]) and np.allclose(can[3:7], q.elements)
    assert math.isclose(can[17], 330.0) and math.isclose(can[16], math.radians(330.0))
    assert np.allclose(can[7:10], 2.0)
    none = get_can_bus(_Api(None), "scene-0161", 150, np.zeros(3), q.elements)
    assert np.all(none[7:16] == 0) and math.isclose(none[17], 330.0)
    assert np.all(get_can_bus(None, "x", 0, np.zeros(3), [1, 0, 0, 0])[7:] == 0)


def test_splits(tmp_path):
    mini = split_scene_names(tmp_path, "v1.0-mini")
    assert "scene-0061" in mini["train"] and mini["val"] == ["scene-0103", "scene-0916"]
    assert len(split_scene_names(tmp_path, "v1.0-trainval")["val"]) == 150
    assert list(split_scene_names(tmp_path, "v1.0-test")) == ["test"]
    (tmp_path / "v1.0-mini").mkdir()
    (tmp_path / "v1.0-mini" / "splits.json").write_text(json.dumps({"train": ["a"], "val": ["b"]}))
    assert split_scene_names(tmp_path, "v1.0-mini") == {"train": ["a"], "val": ["b"]}
    with pytest.raises(ValueError, match="unknown nuScenes version 'v2'"):
        split_scene_names(tmp_path, "v2")
