"""Every recipe dumps to exactly its golden JSON (a changed hyperparameter must be a deliberate change).

Regenerate after an intended change: ``BEVFORGE_UPDATE_GOLDEN=1 pytest tests/configs``.
"""

import json
import os
from pathlib import Path

import pytest

from bevforge.config import config_to_dict, list_recipes, load_config

GOLDEN = Path(__file__).parent / "golden"


def test_recipes_exist():
    recipes = set(list_recipes())
    for name in ("bevformer_debug", "bevformer_tiny", "bevformer_small", "bevformer_base"):
        assert name in recipes


@pytest.mark.parametrize("name", list_recipes())
def test_recipe_matches_golden(name):
    dumped = config_to_dict(load_config(name))
    path = GOLDEN / f"{name}.json"
    if os.environ.get("BEVFORGE_UPDATE_GOLDEN"):
        path.write_text(json.dumps(dumped, indent=2) + "\n")
    assert path.exists(), f"no golden dump for {name}: run BEVFORGE_UPDATE_GOLDEN=1 pytest tests/configs"
    assert dumped == json.loads(path.read_text()), f"{name} differs from {path}"


def test_official_hyperparameters():
    tiny, small, base = (load_config(f"bevformer_{n}") for n in ("tiny", "small", "base"))
    assert (tiny.model.bev_h, small.model.bev_h, base.model.bev_h) == (50, 150, 200)
    assert (tiny.model.encoder_layers, small.model.encoder_layers, base.model.encoder_layers) == (3, 3, 6)
    assert (tiny.data.queue_length, small.data.queue_length, base.data.queue_length) == (3, 3, 4)
    assert (tiny.data.img_scale, small.data.img_scale, base.data.img_scale) == (0.5, 0.8, 1.0)
    for cfg in (tiny, small, base):
        assert cfg.train.lr == 2e-4 and cfg.train.weight_decay == 0.01 and cfg.train.grad_clip == 35
        assert cfg.train.backbone_lr_mult == 0.1 and cfg.train.warmup_iters == 500 and cfg.train.epochs == 24
        assert cfg.model.num_queries == 900 and cfg.model.decoder_layers == 6
    assert tiny.model.backbone.depth == 50 and base.model.backbone.depth == 101
    assert base.model.backbone.dcn_stages == (False, False, True, True)
    assert base.model.neck.num_outs == 4 and tiny.model.neck.num_outs == 1
