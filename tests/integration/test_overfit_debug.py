"""It learns: the debug recipe overfits two synthetic samples on the CPU.

The loss must fall by >= 90 % and the confident decoded boxes must land on the ground truth. This is
the end-to-end check of the geometry (calibration -> reference points -> cameras -> BEV -> boxes): a
wrong projection or box convention cannot memorise box positions from the pixels.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ITERS = 400


@pytest.fixture(scope="module")
def two_samples(synthetic_data) -> Path:
    return synthetic_data("overfit", num_scenes=2, samples_per_scene=2, image_wh=(160, 90))


def test_debug_recipe_overfits_two_samples(two_samples) -> None:
    from bevforge.config import load_config
    from bevforge.data.loader import build_dataloader
    from bevforge.eval.postprocess import decode_predictions
    from bevforge.losses.build import build_criterion
    from bevforge.models.build import build_model

    torch.manual_seed(0)
    cfg = load_config(
        "bevformer_debug",
        [
            f"data.data_root={two_samples}",
            f"data.info_dir={two_samples / 'infos'}",
            "data.img_scale=1.0",
            "data.photometric_aug=false",
            "data.queue_length=1",  # no history frame: memorising needs none, and it halves the cost
            "data.num_workers=0",
            "model.dropout=0.0",
        ],
    )
    loader = build_dataloader(cfg, "train", train=True, batch_size=1, shuffle=False)
    batches = [b for _, b in zip(range(2), loader)]
    model, criterion = build_model(cfg), build_criterion(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    model.train()
    losses = []
    for it in range(ITERS):
        batch = batches[it % 2]
        preds, _ = model(batch)
        loss = criterion(preds, batch.gt_boxes, batch.gt_labels, batch.seg_target)["loss"]
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 35.0)
        optimizer.step()
        losses.append(loss.item())
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    assert last <= 0.1 * first, f"loss fell only from {first:.3f} to {last:.3f}"

    model.eval()
    with torch.no_grad():
        for batch in batches:
            det = decode_predictions(model(batch)[0], max_boxes=300)[0]
            gt_xy, gt_label = batch.gt_boxes[0][:, :2], batch.gt_labels[0]
            keep = det["scores"] > 0.5
            assert keep.sum() >= 0.8 * len(gt_xy), (int(keep.sum()), len(gt_xy))
            # every GT box has a confident prediction of its class within 1 m
            dist = torch.cdist(gt_xy, det["boxes"][keep][:, :2])  # [M, K]
            same = gt_label[:, None] == det["labels"][keep][None, :]
            nearest = torch.where(same, dist, torch.full_like(dist, float("inf"))).min(dim=1).values
            assert (nearest < 1.0).float().mean() >= 0.9, nearest
