"""Where a BEVFormer-debug training step waits for the GPU (skipped on CPU).

``torch.cuda.set_sync_debug_mode("warn")`` reports every synchronising call; each is attributed to the
innermost bevforge frame of the Python stack. The hot loop (``train/``), the attention blocks (``nn/``)
and the kernels (``ops/``) must not sync at all (SCA on its static path); the criterion syncs only in the
matcher (the cost copy for the Hungarian assignment and the labels copy after it). The other sync
points (model composition, ...) are listed as a warning in the pytest summary for the record.
"""

from __future__ import annotations

import traceback
import warnings
from collections import Counter

import pytest
import torch

from bevforge.bench.train import FakeLoader
from bevforge.config import load_config
from bevforge.losses.build import build_criterion
from bevforge.models.build import build_model
from bevforge.nn.spatial_cross_attn import SpatialCrossAttention
from bevforge.train.optim import build_optimizer, build_scheduler
from bevforge.train.step import Stepper

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

STEPS = 2


def sync_points(fn) -> Counter[str]:
    """``fn()`` under the sync debug mode: ``{"path/in/bevforge.py:line": count}`` of synchronising calls
    (``"<no bevforge frame>"`` for those with none, e.g. in the autograd engine's threads)."""
    found: Counter[str] = Counter()

    def record(message, category, filename, lineno, file=None, line=None) -> None:
        if "synchroniz" not in str(message):
            return
        frames = [f for f in traceback.extract_stack() if "/bevforge/" in f.filename.replace("\\", "/")]
        if frames:
            where = frames[-1].filename.replace("\\", "/").split("/bevforge/", 1)[1]
            found[f"{where}:{frames[-1].lineno}"] += 1
        else:
            found["<no bevforge frame>"] += 1

    torch.cuda.synchronize()
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = record
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return found


def test_debug_training_step_sync_points():
    torch.manual_seed(0)
    device = torch.device("cuda")
    cfg = load_config("bevformer_debug")
    model = build_model(cfg).to(device).train()
    for m in model.modules():
        if isinstance(m, SpatialCrossAttention):
            m.query_bound = "all"
    optimizer = build_optimizer(model, cfg.train, device, cfg.train.lr)
    scheduler = build_scheduler(optimizer, cfg.train, 10)
    stepper = Stepper(model, build_criterion(cfg).to(device), optimizer, scheduler, device=device, amp="bf16",
                      grad_clip=cfg.train.grad_clip, accum_steps=1, max_nan_steps=0)  # fmt: skip
    batches = [b.to(device) for b in FakeLoader(cfg, num=STEPS + 1).batches]
    stepper.forward_backward(batches[0])
    stepper.optimizer_step()  # warm-up: Triton compiles, optimizer state

    def steps() -> None:
        for batch in batches[1:]:
            stepper.forward_backward(batch)
            stepper.optimizer_step()

    found = sync_points(steps)
    ours = {k: v for k, v in found.items() if k.startswith(("train/", "nn/", "ops/", "losses/criterion"))}
    # (a sync inside autograd's backward shows up at step.py's ``backward()`` line)
    assert not ours, f"host syncs in the hot loop / attention / kernels / criterion: {ours}; all: {found}"
    matcher = sum(v for k, v in found.items() if k.startswith("losses/matcher"))
    assert matcher <= 2 * STEPS, found
    warnings.warn(
        f"sync points of {STEPS} BEVFormer-debug training steps (bf16): {dict(found)}", stacklevel=1
    )
