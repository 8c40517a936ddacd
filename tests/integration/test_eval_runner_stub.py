"""run_inference with a stand-in model: state carried within a scene, shrinking scene lanes, completeness."""

from __future__ import annotations

import pytest
import torch

from bevforge.config import Config
from bevforge.eval.runner import IncompleteResultsError, run_inference
from bevforge.structures.batch import Batch
from bevforge.structures.temporal import TemporalState


class _CountingModel(torch.nn.Module):
    """Score of query 0 / class 0 grows with the number of frames already seen in the scene."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, batch: Batch, state: TemporalState | None = None):
        b = batch.batch_size
        scenes = [s[-1] for s in batch.scene_tokens]
        if state is None:
            seen = torch.zeros(b)
        else:
            same = torch.tensor([p == s for p, s in zip(state.scene_tokens, scenes)])
            seen = torch.where(same, state.prev_bev[:, 0, 0] + 1, torch.zeros(b))
        logits = torch.full((1, b, 4, 2), -5.0)
        logits[0, :, 0, 0] = seen - 3.0  # [D, B, Q, K]
        code = torch.zeros(1, b, 4, 10)
        code[..., 6] = 0.0  # sin
        code[..., 7] = 1.0  # cos
        new = TemporalState(seen.view(b, 1, 1), torch.zeros(b, 18), scenes)
        return {"cls_logits": logits, "box_code": code}, new

    def decode(self, preds, max_boxes=300, post_center_range=None, score_threshold=0.0):
        from bevforge.eval.postprocess import decode_predictions

        return decode_predictions(preds, max_boxes, post_center_range, score_threshold)


def _batch(tokens: list[str], scenes: list[str]) -> Batch:
    b = len(tokens)
    return Batch(
        images=torch.zeros(b, 1, 1, 3, 4, 4),
        lidar2img=torch.eye(4).expand(b, 1, 1, 4, 4),
        can_bus=torch.zeros(b, 1, 18),
        ego2global=torch.eye(4, dtype=torch.float64).expand(b, 1, 4, 4),
        lidar2ego=torch.eye(4, dtype=torch.float64).expand(b, 1, 4, 4),
        frame_valid=torch.ones(b, 1, dtype=torch.bool),
        scene_tokens=[[s] for s in scenes],
        sample_tokens=tokens,
        timestamps=torch.zeros(b, 1, dtype=torch.int64),
        img_hw=(4, 4),
        gt_boxes=[torch.zeros(0, 9)] * b,
        gt_labels=[torch.zeros(0, dtype=torch.long)] * b,
    )


def test_eval_runner_carries_state_per_lane_and_checks_tokens():
    torch.manual_seed(0)
    # lane 0: scene A (3 frames); lane 1: scene B (2 frames), then the batch shrinks to lane 0
    batches = [_batch(["a0", "b0"], ["A", "B"]), _batch(["a1", "b1"], ["A", "B"]), _batch(["a2"], ["A"])]
    out = run_inference(_CountingModel(), batches, Config(), tokens=["a0", "a1", "a2", "b0", "b1"])
    assert list(out) == ["a0", "a1", "a2", "b0", "b1"]
    top = {t: float(r["scores"][0]) for t, r in out.items()}
    sig = torch.sigmoid(torch.tensor([-3.0, -2.0, -1.0])).tolist()
    assert top["a0"] == pytest.approx(sig[0]) and top["a1"] == pytest.approx(sig[1])
    assert top["a2"] == pytest.approx(sig[2]) and top["b1"] == pytest.approx(sig[1])
    assert out["a0"]["boxes"].shape[1] == 9
    with pytest.raises(IncompleteResultsError, match="c0"):
        run_inference(_CountingModel(), batches, Config(), tokens=["a0", "c0"])
