"""model.aux_heatmap: a training-only CenterPoint head on the BEV, its loss added by build_criterion."""

from __future__ import annotations

import torch
from test_bevformer_forward import BEV, random_batch

from bevforge.config import load_config
from bevforge.losses.build import build_criterion
from bevforge.models.build import build_model


def _cfg(aux: bool):
    cfg = load_config("bevformer_debug", [f"model.bev_h={BEV}", f"model.bev_w={BEV}", "model.num_queries=20"])
    cfg.model.aux_heatmap = aux
    cfg.data.point_cloud_range = (-12.0, -12.0, -5.0, 12.0, 12.0, 3.0)
    return cfg


def test_aux_head_only_in_training_and_its_loss_reaches_the_encoder():
    torch.manual_seed(0)
    cfg = _cfg(aux=True)
    model, criterion = build_model(cfg), build_criterion(cfg)
    batch = random_batch([["a", "a"], ["b", "b"]])
    batch.gt_boxes = [torch.tensor([[3.0, -4.0, 0.0, 4.0, 2.0, 1.5, 0.3, 1.0, 0.0]]), torch.zeros(0, 9)]
    batch.gt_labels = [torch.tensor([0]), torch.zeros(0, dtype=torch.int64)]
    model.train()
    preds, _ = model(batch)
    assert preds["aux.t0.heatmap"].shape == (2, 1, BEV, BEV)  # task 0 = car
    losses = criterion(preds, batch.gt_boxes, batch.gt_labels, None)
    assert {"aux.loss_heatmap", "aux.loss_bbox", "loss_cls", "loss_bbox"} <= set(losses)
    main_only = build_criterion(_cfg(aux=False))(preds, batch.gt_boxes, batch.gt_labels, None)
    expected = main_only["loss"] + cfg.loss.aux_heatmap_weight * (
        losses["aux.loss_heatmap"] + losses["aux.loss_bbox"]
    )
    torch.testing.assert_close(losses["loss"], expected)
    # the aux loss alone gives the BEV encoder a gradient (dense supervision of every BEV cell)
    (losses["aux.loss_heatmap"]).backward()
    assert model.encoder.bev_embedding.weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        preds_eval, _ = model(random_batch([["a"]]))
    assert not any(k.startswith("aux.") for k in preds_eval)
    assert model.decode(preds_eval) is not None


def test_without_aux_no_aux_parameters():
    cfg = _cfg(aux=False)
    assert not any(k.startswith("aux_head.") for k in build_model(cfg).state_dict())
