"""Trainer on a CUDA device (skipped on CPU): bf16 autocast, fp16 GradScaler, NaN skip through the
fused AdamW ``found_inf`` flag (no host sync), a real CUDA OOM turned into advice, GPU metrics."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from bevforge.train.checkpoint import load_checkpoint
from bevforge.train.errors import NonFiniteLoss, OutOfMemory
from bevforge.train.trainer import train

sys.path.insert(0, str(Path(__file__).parent))
import train_standin as si  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def _run(tmp_path, overrides, model=None):
    torch.manual_seed(0)
    return train(si.tiny_config(overrides), tmp_path, model=model or si.StandInModel(),
                 criterion=si.StandInCriterion(), train_loader=si.make_loader(8, 2), progress=False,
                 tensorboard=False)  # fmt: skip


@pytest.mark.parametrize("amp", ["auto", "fp16"])
def test_mixed_precision_training_on_gpu(tmp_path, amp) -> None:
    out = _run(tmp_path, [f"train.amp={amp}"])
    assert out["global_iter"] == 8 and out["skipped_steps"] == 0
    log = (tmp_path / "output.log").read_text()
    assert f"amp {'bf16' if amp == 'auto' else 'fp16'}" in log
    rec = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert rec["loss"] == rec["loss"] and rec["mem_peak_mib"] > 0 and rec["mem_reserved_mib"] > 0
    ck = load_checkpoint(tmp_path / "latest.pth")
    assert "cuda" in ck["rng"][0]
    assert ck["optimizer"]["param_groups"][0]["fused"] is True
    if amp == "fp16":
        assert ck["stepper"]["scaler"]["scale"] > 0


def test_nan_skip_without_sync_on_fused_adamw(tmp_path) -> None:
    model = si.StandInModel(nan_after=2)
    with pytest.raises(NonFiniteLoss, match="3 optimizer steps in a row"):
        _run(tmp_path, ["train.max_nan_steps=3", "train.amp=off"], model=model)
    assert all(torch.isfinite(p).all() for p in model.parameters())


class _Hog(si.StandInModel):
    def forward(self, batch, state=None):
        if self.calls == 2:
            free, _ = torch.cuda.mem_get_info()
            torch.empty(int(free * 4), dtype=torch.uint8, device=batch.images.device)  # > the card
        return super().forward(batch, state)


def test_real_cuda_oom_gives_advice_and_keeps_checkpoint(tmp_path) -> None:
    with pytest.raises(OutOfMemory, match="--grad-ckpt"):
        _run(tmp_path, ["train.ckpt_iter_interval=1", "train.amp=off"], model=_Hog())
    assert load_checkpoint(tmp_path / "latest.pth")["global_iter"] == 2


def test_training_with_loader_workers_prefetches_the_batches(tmp_path, monkeypatch) -> None:
    """On CUDA with worker processes the trainer's batches come through ``device_prefetch`` (the next copy on
    a side stream) and the run trains as with the inline loader (augmentation noise aside)."""
    import bevforge.train.trainer as trainer

    used = []
    real = trainer.device_prefetch
    monkeypatch.setattr(trainer, "device_prefetch", lambda b, d: used.append(d) or real(b, d))
    inline = si.make_loader(8, 2)
    workers = torch.utils.data.DataLoader(
        inline.dataset, batch_size=2, sampler=inline.sampler, collate_fn=si.collate, num_workers=2,
        pin_memory=True,
    )  # fmt: skip
    torch.manual_seed(0)
    out = train(si.tiny_config(["train.amp=off"]), tmp_path / "w", model=si.StandInModel(),
                criterion=si.StandInCriterion(), train_loader=workers, progress=False,
                tensorboard=False)  # fmt: skip
    want = _run(tmp_path / "inline", ["train.amp=off"])
    assert used and out["global_iter"] == want["global_iter"] == 8 and out["skipped_steps"] == 0
    got_loss = out["last_metrics"]["loss"]
    assert abs(got_loss - want["last_metrics"]["loss"]) < 0.1 * abs(want["last_metrics"]["loss"]) + 1e-3
