"""``train.tf32`` -> TF32 switches for matmuls and cuDNN; the trainer gives the old values back."""

import torch

from bevforge.config import TrainConfig
from bevforge.train.setup import set_tf32


def test_set_tf32_flips_both_switches() -> None:
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        set_tf32(True)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        set_tf32(False)
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_tf32_is_on_by_default() -> None:
    assert TrainConfig().tf32 is True
