"""``torch.ops.bevforge.msda``: the Triton MSDA kernels as a ``torch.library`` custom op.

Registered with a fake (meta) implementation and an autograd formula, so ``torch.compile``,
``torch.export`` and AOTAutograd see one opaque op with known output shapes instead of tracing into
Triton launches. Shape letters as in :mod:`bevforge.ops.msda.reference` (B, S, M, D, Q, L, P).

The op runs on CUDA tensors, or on CPU tensors when ``TRITON_INTERPRET=1`` was set before Triton was
imported (the test path). The dispatch in ``bevforge.ops.msda`` decides when it is used.
"""

from __future__ import annotations

import torch

from bevforge.ops.dispatch import alert_not_deterministic
from bevforge.ops.msda import triton_msda
from bevforge.ops.msda.reference import output_dtype

__all__ = ["check_shapes", "msda_backward_op", "msda_op"]


def check_shapes(
    value: torch.Tensor, sampling_locations: torch.Tensor, attention_weights: torch.Tensor
) -> None:
    """Ranks and matching sizes (no device sync: the level sizes are checked by the reference only)."""
    if value.dim() != 4 or sampling_locations.dim() != 6 or attention_weights.dim() != 5:
        raise ValueError(
            f"msda: expected value [B, S, M, D], sampling_locations [B, Q, M, L, P, 2], attention_weights "
            f"[B, Q, M, L, P]; got {tuple(value.shape)}, {tuple(sampling_locations.shape)}, "
            f"{tuple(attention_weights.shape)}"
        )
    B, _, M, _ = value.shape
    if sampling_locations.shape[-1] != 2 or tuple(sampling_locations.shape[:-1]) != tuple(
        attention_weights.shape
    ):
        raise ValueError(
            f"msda: sampling_locations {tuple(sampling_locations.shape)} must be attention_weights "
            f"{tuple(attention_weights.shape)} + (2,)"
        )
    if attention_weights.shape[0] != B or attention_weights.shape[2] != M:
        raise ValueError(
            f"msda: batch/heads of attention_weights {tuple(attention_weights.shape)} differ from value "
            f"{tuple(value.shape)}"
        )


@torch.library.custom_op("bevforge::msda", mutates_args=())
def msda_op(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """``value [B, S, M, D]``, ``sampling_locations [B, Q, M, L, P, 2]``, ``attention_weights
    [B, Q, M, L, P]`` -> ``[B, Q, M * D]`` in the inputs' promoted dtype (fp32 accumulation)."""
    check_shapes(value, sampling_locations, attention_weights)
    return triton_msda.msda_forward(
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )


@msda_op.register_fake
def _msda_fake(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    check_shapes(value, sampling_locations, attention_weights)
    B, _, M, D = value.shape
    Q = sampling_locations.shape[1]
    dtype = output_dtype(value, sampling_locations, attention_weights)
    return value.new_empty(B, Q, M * D, dtype=dtype)


@torch.library.custom_op("bevforge::msda_backward", mutates_args=())
def msda_backward_op(
    grad_out: torch.Tensor,
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of (value, sampling_locations, attention_weights); value grads via fp32 atomics."""
    alert_not_deterministic("The Triton MSDA backward (bevforge::msda_backward)")
    return triton_msda.msda_backward(
        grad_out, value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )


@msda_backward_op.register_fake
def _msda_backward_fake(grad_out, value, spatial_shapes, level_start_index, sampling_locations, attn):
    return torch.empty_like(value), torch.empty_like(sampling_locations), torch.empty_like(attn)


def _setup_context(ctx, inputs, output) -> None:
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights = inputs
    ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)


def _backward(ctx, grad_out: torch.Tensor):
    value, spatial_shapes, level_start_index, sampling_locations, attention_weights = ctx.saved_tensors
    grad_value, grad_locs, grad_attn = msda_backward_op(
        grad_out.contiguous(), value, spatial_shapes, level_start_index, sampling_locations, attention_weights
    )
    # spatial_shapes and level_start_index are integer tensors: no gradient
    return grad_value, None, None, grad_locs, grad_attn


msda_op.register_autograd(_backward, setup_context=_setup_context)
