"""It learns: the BEVDet debug architecture overfits two synthetic samples on the CPU.

End-to-end check of the LSS geometry (calibration -> frustum -> lidar -> BEV cells) and the CenterPoint
targets/decoding: with a wrong projection or grid convention the boxes cannot be memorised at their
positions from the pixels. The recipe's architecture (stride-8 features, lidar depth supervision) at a
smaller grid (BEV 32 x 32 over +-25.6 m, 1.6 m cells, depth bins to 36 m) so 140 iterations fit in about
a minute and a half on 2 cores.

Both samples go in one batch of 2 with a one-cycle LR: alternating batch-1 steps left the BatchNorm running
statistics (used in eval) a mix of two very different samples, so the eval-mode detections of one sample
swung between 0.35 and 1.0 of the boxes near from one machine (or seed) to the next. With the batch fixed,
the running statistics converge to exactly the training batch statistics; over seeds 0-5, 0.935-1.0 of the
boxes of each sample are near at the end.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

ITERS = 140


@pytest.fixture(scope="module")
def two_samples(synthetic_data) -> Path:
    return synthetic_data("bevdet_overfit", num_scenes=2, samples_per_scene=2, image_wh=(160, 90))


@pytest.mark.slow
def test_bevdet_debug_overfits_two_samples(two_samples) -> None:
    from bevforge.config import load_config
    from bevforge.data.loader import build_dataloader
    from bevforge.losses.build import build_criterion
    from bevforge.models.build import build_model

    torch.manual_seed(0)
    cfg = load_config(
        "bevdet_debug",
        [
            f"data.data_root={two_samples}",
            f"data.info_dir={two_samples / 'infos'}",
            "data.img_scale=1.0",  # 160 x 90 -> 160 x 96: 20 x 12 feature cells per camera
            "data.num_workers=0",
            "data.point_cloud_range=(-25.6, -25.6, -5.0, 25.6, 25.6, 3.0)",
            "model.bev_h=32",
            "model.bev_w=32",
            "model.bevdet.depth_bins=(1.0, 37.0, 1.0)",
        ],
    )
    loader = build_dataloader(cfg, "train", train=True, batch_size=2, shuffle=False)
    batch = next(iter(loader))
    assert len(batch.gt_boxes) == 2 and all(len(b) >= 10 for b in batch.gt_boxes)
    model, criterion = build_model(cfg), build_criterion(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=ITERS, pct_start=0.1)
    model.train()
    losses = []
    for _ in range(ITERS):
        preds, _ = model(batch)
        loss = criterion(preds, batch.gt_boxes, batch.gt_labels, None)["loss"]
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    # the very first steps are dominated by the untrained heatmap on empty cells: compare with 2..5
    early, last = sum(losses[2:6]) / 4, sum(losses[-2:]) / 2
    assert last <= 0.2 * early, f"loss fell only from {early:.3f} to {last:.3f}"

    model.eval()
    with torch.no_grad():
        near_fracs = []
        dets = model.decode(model(batch)[0], max_boxes=300, post_center_range=None)
        for det, gt_boxes, gt_label in zip(dets, batch.gt_boxes, batch.gt_labels):
            gt_xy = gt_boxes[:, :2]
            keep = det["scores"] > 0.3
            assert keep.sum() >= 0.8 * len(gt_xy), (int(keep.sum()), len(gt_xy))
            # GT boxes with a confident prediction of their class within 2 m (1.25 BEV cells)
            dist = torch.cdist(gt_xy, det["boxes"][keep][:, :2])  # [M, K]
            same = gt_label[:, None] == det["labels"][keep][None, :]
            nearest = torch.where(same, dist, torch.full_like(dist, float("inf"))).min(dim=1).values
            near_fracs.append((nearest < 2.0).float().mean().item())
    assert min(near_fracs) >= 0.8, near_fracs
