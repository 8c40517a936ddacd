"""Reasons a training run stops early; the message says what happened and what to try."""

from __future__ import annotations


class TrainingStopped(RuntimeError):
    """Training cannot go on; ``str(err)`` is the user-facing explanation (exit code 1)."""

    exit_code = 1


class NonFiniteLoss(TrainingStopped):
    """``train.max_nan_steps`` optimizer steps in a row had a non-finite loss or gradient."""

    exit_code = 3


class OutOfMemory(TrainingStopped):
    """CUDA ran out of memory; the last good checkpoint is kept, nothing half-written is saved."""

    exit_code = 4


def oom_advice(batch_size: int, amp: str, grad_ckpt: bool, img_scale: float) -> str:
    tips = []
    if batch_size > 1:
        tips.append(f"lower the batch size (--set data.batch_size={max(batch_size // 2, 1)})")
    if not grad_ckpt:
        tips.append(
            "recompute activations in backward with --grad-ckpt (encoder + backbone), or the backbone's "
            "alone with --set model.backbone.with_cp=true"
        )
    if amp not in ("bf16", "fp16"):
        tips.append("train in mixed precision with --amp bf16 (or fp16 on GPUs without bf16)")
    tips.append(f"shrink the images (--set data.img_scale={img_scale * 0.75:g})")
    tips.append("or keep fewer frames (--set data.queue_length=2)")
    return "CUDA out of memory. The last checkpoint was kept. Try: " + "; ".join(tips) + "."
