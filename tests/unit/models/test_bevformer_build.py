"""build_model: every recipe builds with the official structure; config mistakes give clear errors."""

from __future__ import annotations

import pytest
import torch

from bevforge.config import ConfigError, load_config
from bevforge.models.build import build_model


@pytest.mark.parametrize(
    ("recipe", "levels", "layers", "bev"),
    [("bevformer_tiny", 1, 3, 50), ("bevformer_small_seg", 1, 3, 150), ("bevformer_base", 4, 6, 200)],
)
def test_recipes_build_official_structure(recipe: str, levels: int, layers: int, bev: int):
    torch.manual_seed(0)
    model = build_model(load_config(recipe, ["model.backbone.pretrained="]))
    enc = model.encoder
    assert (enc.num_levels, len(enc.layers), enc.bev_h, enc.bev_w) == (levels, layers, bev, bev)
    assert enc.layers[0].spatial_attn.deformable_attention.num_points == 8
    assert enc.layers[0].temporal_attn.num_points == 4
    assert (model.seg_head is not None) == recipe.endswith("_seg")
    assert model.grid_mask is not None


def test_build_rejects_inconsistent_config():
    cfg = load_config("bevformer_debug", ["model.num_classes=3"])
    with pytest.raises(ConfigError, match="num_classes"):
        build_model(cfg)
    cfg = load_config("bevformer_debug", ["model.with_det=false"])
    with pytest.raises(ConfigError, match="with_seg"):
        build_model(cfg)
    cfg = load_config("bevformer_debug", ["model.neck.out_channels=32"])
    with pytest.raises(ConfigError, match="embed_dims"):
        build_model(cfg)


@pytest.mark.parametrize(
    ("overrides", "backbone_cp", "encoder_cp"),
    [
        ([], False, False),
        (["train.grad_ckpt=true"], True, True),  # --grad-ckpt: the backbone (its largest share) too
        (["model.backbone.with_cp=true"], True, False),
    ],
)
def test_grad_ckpt_switches(overrides, backbone_cp, encoder_cp):
    model = build_model(load_config("bevformer_debug", overrides))
    assert (model.backbone.with_cp, model.encoder.grad_ckpt) == (backbone_cp, encoder_cp)


def test_bad_sca_recompute_names_the_key():
    cfg = load_config("configs/bevformer_debug.py", ["model.sca_recompute=sometimes"])
    with pytest.raises(ConfigError, match="model.sca_recompute='sometimes'"):
        build_model(cfg)


def test_sca_fuse_cameras_reaches_every_layer_and_a_bad_value_names_the_key():
    model = build_model(load_config("bevformer_debug", ["model.sca_fuse_cameras=off"]))
    assert [layer.spatial_attn.fuse_cameras for layer in model.encoder.layers] == ["off"] * len(
        model.encoder.layers
    )
    cfg = load_config("configs/bevformer_debug.py", ["model.sca_fuse_cameras=maybe"])
    with pytest.raises(ConfigError, match="model.sca_fuse_cameras='maybe'"):
        build_model(cfg)
