"""Checkpoint files: weights_only loading, RNG state round trip, auto-resume choice, retention."""

from __future__ import annotations

import os
import random
import time

import numpy as np
import pytest
import torch

from bevforge.train import checkpoint as ck


def _draw() -> tuple:
    return (
        random.random(),
        random.gauss(0, 1),
        float(np.random.rand()),
        float(np.random.randn()),
        float(torch.rand(1)),
    )


def test_rng_state_round_trip_through_weights_only_file(tmp_path) -> None:
    torch.manual_seed(0)
    random.seed(1)
    np.random.seed(2)
    random.gauss(0, 1)  # leaves a cached gaussian in python's state
    np.random.randn()
    state = ck.get_rng_state()
    ck.save_checkpoint(tmp_path / "r.pth", {"rng": [state], "global_iter": 0})
    expected = _draw()
    _draw()
    loaded = ck.load_checkpoint(tmp_path / "r.pth")
    assert loaded["format"] == ck.FORMAT
    ck.set_rng_state(loaded["rng"][0])
    assert _draw() == expected


def _save(path, it: int) -> None:
    body = {"global_iter": it, "epoch": 0, "iter_in_epoch": it, "optimizer": {}, "scheduler": {}}
    ck.save_checkpoint(path, {**body, "model": {"w": torch.full((2,), float(it))}})


def test_find_resume_skips_torn_files_and_picks_most_progress(tmp_path) -> None:
    assert ck.find_resume_checkpoint(tmp_path) is None
    _save(tmp_path / "epoch_1.pth", 10)
    _save(tmp_path / "latest.pth", 15)
    time.sleep(0.01)
    (tmp_path / "epoch_2.pth").write_bytes(b"PK\x03\x04 torn")  # newest file, but broken
    (tmp_path / ".latest.pth.abc.tmp").write_bytes(b"partial")
    assert ck.find_resume_checkpoint(tmp_path) == tmp_path / "latest.pth"
    with pytest.raises(ck.CheckpointError, match=r"epoch_2\.pth.*--resume auto"):
        ck.load_checkpoint(tmp_path / "epoch_2.pth")
    with pytest.raises(ck.CheckpointError, match="missing.pth"):
        ck.load_checkpoint(tmp_path / "missing.pth")
    assert ck.remove_stale_temp_files(tmp_path) == [tmp_path / ".latest.pth.abc.tmp"]
    torch.save({"state_dict": {"w": torch.ones(1)}}, tmp_path / "latest.pth")  # weights only
    assert ck.find_resume_checkpoint(tmp_path) == tmp_path / "epoch_1.pth"
    with pytest.raises(ck.CheckpointError, match="use --load-from"):
        ck.check_resumable(ck.load_checkpoint(tmp_path / "latest.pth"), tmp_path / "latest.pth")


def test_retention_and_copy(tmp_path) -> None:
    for e in (1, 2, 3, 10):
        _save(tmp_path / f"epoch_{e}.pth", e)
    removed = ck.apply_retention(tmp_path, keep_last=2)
    assert sorted(p.name for p in removed) == ["epoch_1.pth", "epoch_2.pth"]
    assert sorted(p.name for p in tmp_path.glob("epoch_*.pth")) == ["epoch_10.pth", "epoch_3.pth"]
    ck.copy_checkpoint(tmp_path / "epoch_10.pth", tmp_path / "latest.pth")
    assert ck.load_checkpoint(tmp_path / "latest.pth")["global_iter"] == 10
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_model_state_from_accepts_plain_and_mmcv_dicts(tmp_path) -> None:
    w = {"module.a": torch.ones(1)}
    assert list(ck.model_state_from({"state_dict": w}, "x")) == ["a"]
    assert list(ck.model_state_from(w, "x")) == ["a"]
    with pytest.raises(ValueError, match="no model weights"):
        ck.model_state_from({"meta": "x"}, "x.pth")
