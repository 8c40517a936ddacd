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


def test_explain_records_each_parts_first_inputs_without_replacing_later_ones():
    """The recording hooks of ``explain_graph_breaks`` must leave the forward's inputs alone: a part called
    twice (the backbone: history frames, then the current frame) gets its own inputs the second time.
    (A pre-hook that returned the recorded first inputs fed the history images to the current frame.)"""
    from torch import nn

    class Toy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.part = nn.Linear(2, 2)
            self.seen: list[torch.Tensor] = []

        def forward(self, batch, state):
            return self.part(batch[0]).sum() + self.part(batch[1]).sum()

    toy = Toy()
    toy.part.register_forward_hook(lambda m, args, out: toy.seen.append(args[0]))  # what forward got
    batch = (torch.zeros(3, 2), torch.ones(5, 2))
    rows = {r["part"]: r for r in explain_graph_breaks(toy, batch)}
    assert toy.seen[0] is batch[0] and toy.seen[1] is batch[1], [t.shape for t in toy.seen[:2]]
    assert rows["part"]["breaks"] == 0 and rows["model"]["breaks"] == 0, rows


@pytest.mark.slow
def test_explain_cli_on_a_uint8_images_recipe(capsys):
    """``bevforge bench train --explain`` on a recipe whose batches carry uint8 images (tiny: finished on
    the device) finishes them first, as training does, and reports every compiled part unbroken."""
    from bevforge.cli.main import main

    overrides = ["model.backbone.pretrained=", "data.img_scale=0.1", "model.bev_h=20", "model.bev_w=20"]
    assert main(["bench", "train", "bevformer_tiny", "--set", *overrides, "--explain"]) == 0
    out = capsys.readouterr().out
    for part in ("backbone", "neck", "encoder", "det_head"):
        assert f"{part}: 1 graphs, 0 breaks" in out, out
