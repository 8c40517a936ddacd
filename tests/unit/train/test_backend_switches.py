"""Process-wide backend switches: ``train.tf32`` -> TF32 for matmuls and cuDNN; inference takes the
training's kernel choices (TF32, cuDNN autotuning unless deterministic); every run gives them back."""

import pytest
import torch

from bevforge.config import TrainConfig
from bevforge.train.setup import backend_switches, inference_backends, set_tf32


def _switches() -> tuple[bool, ...]:
    return (
        torch.are_deterministic_algorithms_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    )


def test_set_tf32_flips_both_switches() -> None:
    with backend_switches():
        set_tf32(True)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        set_tf32(False)
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32


def test_tf32_is_on_by_default() -> None:
    assert TrainConfig().tf32 is True


def test_backend_switches_give_everything_back_even_on_error() -> None:
    before = _switches()
    with pytest.raises(RuntimeError, match="boom"), backend_switches():
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = not before[1]
        torch.backends.cudnn.deterministic = not before[2]
        set_tf32(not before[3])
        raise RuntimeError("boom")
    assert _switches() == before


@pytest.mark.parametrize("deterministic", [False, True])
@pytest.mark.parametrize("tf32", [False, True])
def test_inference_takes_the_training_kernel_choices(deterministic: bool, tf32: bool) -> None:
    """cuDNN autotuning (the fixed-size convs of a recipe) unless deterministic, TF32 as configured;
    the caller's switches back afterwards."""
    before = _switches()
    with inference_backends(TrainConfig(tf32=tf32, deterministic=deterministic)):
        assert torch.backends.cudnn.benchmark is (not deterministic)
        assert torch.backends.cuda.matmul.allow_tf32 is tf32 and torch.backends.cudnn.allow_tf32 is tf32
    assert _switches() == before
