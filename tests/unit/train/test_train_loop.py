"""The training loop with the contract stand-in: NaN skipping, OOM, accumulation, retention, resume."""

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


def _run(tmp_path, overrides=(), model=None, **kw):
    torch.manual_seed(0)
    cfg = si.tiny_config(list(overrides))
    return train(
        cfg, tmp_path, model=model or si.StandInModel(), criterion=si.StandInCriterion(),
        train_loader=si.make_loader(8, 2), progress=False, tensorboard=False, **kw,
    )  # fmt: skip


def _metrics(work_dir) -> list[dict]:
    return [json.loads(x) for x in (Path(work_dir) / "metrics.jsonl").read_text().splitlines()]


def test_nan_steps_are_skipped_then_stop(tmp_path) -> None:
    model = si.StandInModel(nan_after=2)
    with pytest.raises(NonFiniteLoss, match="3 optimizer steps in a row.*Lower the LR"):
        _run(tmp_path, ["train.max_nan_steps=3"], model=model)
    assert all(torch.isfinite(p).all() for p in model.parameters())  # no update from a NaN step
    recs = _metrics(tmp_path)
    assert recs[-1]["skipped_steps"] == 3 and recs[1]["skipped_steps"] == 0


class _OomModel(si.StandInModel):
    def forward(self, batch, state=None):
        if self.calls == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return super().forward(batch, state)


def test_oom_gives_advice_and_keeps_last_checkpoint(tmp_path) -> None:
    with pytest.raises(OutOfMemory, match="--grad-ckpt.*--amp bf16.*img_scale"):
        _run(tmp_path, ["train.ckpt_iter_interval=2"], model=_OomModel())
    assert load_checkpoint(tmp_path / "latest.pth")["global_iter"] == 2
    assert not list(tmp_path.glob(".*.tmp"))


def test_accumulation_retention_and_max_iters(tmp_path) -> None:
    out = _run(tmp_path, ["train.accum_steps=2", "train.epochs=3", "train.keep_last=1"])
    assert out["global_iter"] == 12 and out["skipped_steps"] == 0
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == ["epoch_3.pth", "latest.pth"]
    ck = load_checkpoint(
        tmp_path / "latest.pth",
    )
    assert ck["epoch"] == 3 and ck["iter_in_epoch"] == 0
    assert ck["scheduler"]["last_epoch"] == 6  # one schedule step per 2 batches
    assert json.loads(ck["config_json"])["train"]["accum_steps"] == 2
    assert json.loads((tmp_path / "config.json").read_text())["name"] == "standin"
    # more epochs from the finished run: resume continues the iteration count
    out2 = _run(tmp_path, ["train.accum_steps=2", "train.epochs=3", "train.max_iters=14"], resume="auto")
    assert out2["global_iter"] == 12  # already done: nothing to train
    assert "train.max_iters: 0 -> 14" in (tmp_path / "output.log").read_text()  # drift is reported


def test_max_iters_stops_mid_epoch_with_resumable_checkpoint(tmp_path) -> None:
    out = _run(tmp_path, ["train.max_iters=3"])
    assert out["global_iter"] == 3
    ck = load_checkpoint(tmp_path / "latest.pth")
    assert (ck["epoch"], ck["iter_in_epoch"], ck["global_iter"]) == (0, 3, 3)
    assert [r["iter"] for r in _metrics(tmp_path)] == [1, 2, 3]


def test_load_from_initialises_weights(tmp_path) -> None:
    _run(tmp_path / "a", ["train.max_iters=1"])
    model = si.StandInModel()
    _run(
        tmp_path / "b",
        ["train.max_iters=1", "train.lr=0"],
        model=model,
        load_from=str(tmp_path / "a/latest.pth"),
    )
    ref = load_checkpoint(tmp_path / "a/latest.pth")["model"]
    assert torch.equal(model.cls.weight, ref["cls.weight"])


def test_resume_with_longer_schedule_uses_new_lr_from_first_step(tmp_path) -> None:
    from bevforge.train.optim import lr_factor

    _run(tmp_path, ["train.max_iters=3"])
    _run(tmp_path, ["train.max_iters=5"], resume="auto")
    recs = {r["iter"]: r for r in _metrics(tmp_path)}
    assert sorted(recs) == [1, 2, 3, 4, 5]
    expected = 0.01 * lr_factor(3, 5, warmup_iters=2, warmup_ratio=1 / 3, min_lr_ratio=1e-3)
    assert recs[4]["lr"] == pytest.approx(expected, rel=1e-9)


class _WarningModel(si.StandInModel):
    def forward(self, batch, state=None):
        if self.calls == 1:
            import warnings

            warnings.warn("eval.cuda_graph: a frame hit more BEV queries than the bound", stacklevel=1)
        return super().forward(batch, state)


def test_the_models_warnings_are_in_output_log(tmp_path) -> None:
    _run(tmp_path, ["train.max_iters=3"], model=_WarningModel())
    log = (tmp_path / "output.log").read_text()
    assert "WARNING: eval.cuda_graph: a frame hit more BEV queries than the bound (UserWarning" in log


def test_batches_are_prefetched_to_the_gpu_only_with_worker_processes(monkeypatch) -> None:
    """On CUDA with loader workers the trainer takes ``device_prefetch`` (the next batch's copy overlapping
    the step); otherwise the batches come as they are, without pulling the next one first (the main
    process's RNG draws keep their order with ``num_workers=0``), and the loop moves each itself."""
    import bevforge.train.trainer as trainer

    seen = []
    monkeypatch.setattr(
        trainer, "device_prefetch", lambda batches, device: seen.append(device) or "prefetched"
    )
    workers = torch.utils.data.DataLoader(list(range(4)), num_workers=2)
    assert trainer.prefetched(iter([]), workers, torch.device("cuda")) == "prefetched" and seen
    pulled = []

    def source():
        for i in range(3):
            pulled.append(i)
            yield i

    inline = torch.utils.data.DataLoader(list(range(4)), num_workers=0)
    for device, loader in (("cuda", inline), ("cpu", workers), ("cuda", object())):
        pulled.clear()
        batches = iter(trainer.prefetched(source(), loader, torch.device(device)))
        assert next(batches) == 0 and pulled == [0], "no lookahead"
    assert len(seen) == 1
