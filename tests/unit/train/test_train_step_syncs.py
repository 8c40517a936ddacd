"""The training hot loop (forward/backward, optimizer step, loss accumulation) never waits for the GPU
between log steps: ``torch.cuda.set_sync_debug_mode("error")`` turns any synchronising call into an
error (skipped on CPU)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from bevforge.train.monitor import TrainMonitor
from bevforge.train.optim import build_optimizer, build_scheduler
from bevforge.train.step import Stepper

sys.path.insert(0, str(Path(__file__).parent))
import train_standin as si  # noqa: E402

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.mark.parametrize("amp", ["bf16", "off"])
def test_steps_between_log_steps_do_not_sync(tmp_path, amp) -> None:
    torch.manual_seed(0)
    device = torch.device("cuda")
    cfg = si.tiny_config([f"train.amp={amp}"])
    model = si.StandInModel().to(device)
    optimizer = build_optimizer(model, cfg.train, device, lr=1e-3)
    assert optimizer.defaults["fused"]  # the found_inf flag path: no host read of the NaN check
    stepper = Stepper(model, si.StandInCriterion(), optimizer, build_scheduler(optimizer, cfg.train, 10),
                      device=device, amp=amp, grad_clip=35.0, accum_steps=1, max_nan_steps=3)  # fmt: skip
    monitor = TrainMonitor(
        tmp_path, is_main=True, device=device, total_iters=8, progress=False, tensorboard=False
    )
    batches = [b.to(device) for b in si.make_loader(8, 2)]
    stepper.forward_backward(batches[0])
    stepper.optimizer_step()  # warm-up: optimizer state, kernels, autocast caches
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for batch in batches[1:]:
            monitor.update(stepper.forward_backward(batch), 0.0, batch.batch_size)
            stepper.optimizer_step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    stepper.check_non_finite()  # the log step: one sync
    assert int(stepper.skipped_steps) == 0
    monitor.close()
