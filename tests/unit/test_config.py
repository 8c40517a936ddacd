"""Config overrides: types, did-you-mean, round trip, dump."""

import json

import pytest

from bevforge.config import (
    Config,
    ConfigError,
    apply_override,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    dump_config,
    load_config,
)


def test_override_parses_to_field_types():
    cfg = Config()
    apply_overrides(
        cfg,
        [
            "train.lr=1e-4",
            "model.bev_h=100",
            "train.grad_ckpt=true",
            "data.version=v1.0-trainval",
            "data.point_cloud_range=-10,-10,-2,10,10,2",
            "model.backbone.dcn_stages=(false,false,true,true)",
        ],
    )
    assert cfg.train.lr == pytest.approx(1e-4) and isinstance(cfg.train.lr, float)
    assert cfg.model.bev_h == 100 and isinstance(cfg.model.bev_h, int)
    assert cfg.train.grad_ckpt is True
    assert cfg.data.version == "v1.0-trainval"
    assert cfg.data.point_cloud_range == (-10.0, -10.0, -2.0, 10.0, 10.0, 2.0)
    assert cfg.model.backbone.dcn_stages == (False, False, True, True)


@pytest.mark.parametrize(
    "assignment, expected",
    [
        ("train.lrr=1", "train.lr"),
        ("model.bev_hh=3", "model.bev_h"),
        ("trian.epochs=3", "train.epochs"),
        ("model.backbone.dept=101", "model.backbone.depth"),
    ],
)
def test_unknown_key_suggests(assignment, expected):
    with pytest.raises(ConfigError, match=f"Did you mean: .*{expected}"):
        apply_override(Config(), assignment)


@pytest.mark.parametrize(
    "assignment, message",
    [
        ("model.bev_h=big", "expected an int"),
        ("train.lr=fast", "expected a float"),
        ("train.grad_ckpt=maybe", "expected a bool"),
        ("model.backbone.dcn_stages=true,false", "expected 4 comma-separated values"),
        ("model.backbone=3", "is a section"),
        ("train.lr", "key=value"),
    ],
)
def test_bad_values_fail_clearly(assignment, message):
    with pytest.raises(ConfigError, match=message):
        apply_override(Config(), assignment)


def test_round_trip_and_dump(tmp_path):
    cfg = Config()
    apply_override(cfg, "model.bev_w=77")
    path = dump_config(cfg, tmp_path / "work" / "config.json")
    data = json.loads(path.read_text())
    assert data["model"]["bev_w"] == 77
    assert config_from_dict(data) == cfg
    assert config_to_dict(config_from_dict(data)) == data


def test_missing_recipe_suggests(tmp_path, monkeypatch):
    (tmp_path / "bevformer_tiny.py").write_text(
        "from bevforge.config import Config\n\ndef config():\n    return Config(name='tiny')\n"
    )
    monkeypatch.setenv("BEVFORGE_CONFIGS", str(tmp_path))
    assert load_config("bevformer_tiny", ["train.epochs=2"]).train.epochs == 2
    with pytest.raises(ConfigError, match="Did you mean: bevformer_tiny"):
        load_config("bevformer_tiyn")
