"""Same seed -> byte-identical tables; scene names come from the devkit split lists; CLI wiring."""

from __future__ import annotations

import json

import pytest
from nuscenes.utils.splits import create_splits_scenes

from bevforge.cli.main import main
from bevforge.data.synthetic import generate, scene_names
from bevforge.data.synthetic.generate import TABLES

TINY = {"num_scenes": 2, "samples_per_scene": 2, "image_wh": (32, 18), "workers": 1, "verbose": False}


def _table_bytes(root, version="v1.0-mini") -> dict[str, bytes]:
    files = {f"{version}/{t}.json": (root / version / f"{t}.json").read_bytes() for t in TABLES}
    files["expansion"] = (root / "maps" / "expansion" / "singapore-onenorth.json").read_bytes()
    files["pose"] = (root / "can_bus" / "scene-0061_pose.json").read_bytes()
    return files


def test_synth_same_seed_same_bytes(tmp_path):
    a = _table_bytes(generate(tmp_path / "a", seed=7, **TINY))
    b = _table_bytes(generate(tmp_path / "b", seed=7, **{**TINY, "workers": 2}))  # worker processes too
    assert a == b
    c = _table_bytes(generate(tmp_path / "c", seed=8, **TINY))
    assert c["v1.0-mini/sample_annotation.json"] != a["v1.0-mini/sample_annotation.json"]
    # tokens are 32 lowercase hex and unique across all tables
    tokens = [r["token"] for t in TABLES if t != "visibility" for r in json.loads(a[f"v1.0-mini/{t}.json"])]
    assert len(tokens) == len(set(tokens))
    assert all(len(t) == 32 and int(t, 16) >= 0 and t == t.lower() for t in tokens)


def test_synth_scene_names_follow_devkit_splits():
    splits = create_splits_scenes()
    train, val = scene_names("v1.0-mini", 10)
    assert train == splits["mini_train"] and val == splits["mini_val"]
    train, val = scene_names("v1.0-trainval", 10)
    assert len(train) == 8 and len(val) == 2
    assert set(train) <= set(splits["train"]) and set(val) <= set(splits["val"])
    with pytest.raises(ValueError, match="v1.0-trainval"):
        scene_names("v1.0-mini", 11)
    with pytest.raises(ValueError, match=r"version \(--version\) must be one of"):
        scene_names("v1.0-test", 2)


def test_synth_cli_writes_a_trainval_dataset(tmp_path, capsys):
    out = tmp_path / "ds"
    rc = main(
        [
            "synth",
            "--out",
            str(out),
            "--scenes",
            "2",
            "--samples-per-scene",
            "2",
            "--size",
            "32x18",
            "--version",
            "v1.0-trainval",
            "--workers",
            "1",
        ]
    )
    assert rc == 0
    scenes = json.loads((out / "v1.0-trainval" / "scene.json").read_text())
    assert [s["name"] for s in scenes] == ["scene-0001", "scene-0003"]
    assert "wrote 2 scenes" in capsys.readouterr().out
    assert main(["synth", "--out", str(out), "--scenes", "20"]) == 2  # mini has only 10 scene names
    assert "v1.0-trainval" in capsys.readouterr().err
