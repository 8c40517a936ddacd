"""Graph breaks of the BEVFormer-debug parts that ``train.compile`` compiles (``torch._dynamo.explain``,
training mode, CPU): the encoder and the detection head trace as one graph each (static level shapes, no
host reads in TSA / SCA / MSDA); the whole model's ``forward`` (Batch, TemporalState, scene tokens) has a
few breaks, bounded here so that new ones show up."""

from __future__ import annotations

import pytest
import torch

from bevforge.bench.train import FakeLoader, explain_graph_breaks
from bevforge.config import load_config
from bevforge.models.build import build_model


@pytest.mark.slow
def test_debug_recipe_graph_breaks():
    torch.manual_seed(0)
    cfg = load_config("bevformer_debug")
    rows = {r["part"]: r for r in explain_graph_breaks(build_model(cfg), next(iter(FakeLoader(cfg, num=1))))}
    for part in ("backbone", "neck", "encoder", "det_head"):
        assert rows[part]["breaks"] == 0, (part, rows[part]["reasons"])
    assert rows["model"]["breaks"] <= 6, rows["model"]["reasons"]  # 55 before static level shapes
