"""``torch.ops.bevforge.msda``: the Triton MSDA kernels as a ``torch.library`` custom op.

Registered with a fake (meta) implementation and an autograd formula, so ``torch.compile``,
``torch.export`` and AOTAutograd see one opaque op with known output shapes instead of tracing into
Triton launches. Shape letters as in :mod:`bevforge.ops.msda.reference` (B, S, M, D, Q, L, P).

``bevforge::msda_offsets`` is the same attention with the sampling points given as offsets in cells
around reference points (:func:`msda_offsets_op`): the locations are formed in the kernel.

The ops run on CUDA tensors, or on CPU tensors when ``TRITON_INTERPRET=1`` was set before Triton was
imported (the test path). The dispatch in ``bevforge.ops.msda`` decides when it is used.
"""

from __future__ import annotations

import torch

from bevforge.ops.dispatch import alert_not_deterministic
from bevforge.ops.msda import triton_msda
from bevforge.ops.msda.reference import output_dtype

__all__ = ["check_offsets_shapes", "check_shapes", "msda_backward_op", "msda_offsets_op", "msda_op"]


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


def check_offsets_shapes(
    value: torch.Tensor, reference: torch.Tensor, offsets: torch.Tensor, attention_weights: torch.Tensor
) -> None:
    """:func:`check_shapes` of the offsets, and ``reference [B, Q, L_r, Z, 2]`` fp32 with ``L_r`` 1 or L
    and Z dividing P."""
    check_shapes(value, offsets, attention_weights)
    B, Q, _, L, P, _ = offsets.shape
    if (
        reference.dim() != 5
        or reference.shape[-1] != 2
        or tuple(reference.shape[:2]) != (B, Q)
        or reference.shape[2] not in (1, L)
        or reference.shape[3] < 1
        or P % reference.shape[3] != 0
    ):
        raise ValueError(
            f"msda_offsets: reference {tuple(reference.shape)} must be [B, Q, L_r, Z, 2] with (B, Q) = "
            f"{(B, Q)}, L_r 1 or {L} and Z dividing the {P} points (point p takes reference p % Z)"
        )
    if reference.dtype != torch.float32:
        raise ValueError(f"msda_offsets: reference dtype {reference.dtype}, expected float32")


@torch.library.custom_op("bevforge::msda_offsets", mutates_args=())
def msda_offsets_op(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    reference: torch.Tensor,
    offsets: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """``value [B, S, M, D]``, ``reference [B, Q, L_r, Z, 2]`` fp32, ``offsets [B, Q, M, L, P, 2]`` in
    cells of each level, ``attention_weights [B, Q, M, L, P]`` -> ``[B, Q, M * D]``: :func:`msda_op` at
    ``sampling_locations(reference, offsets, (W, H))``, point p of a level around reference ``p % Z``.
    No gradient for ``reference``."""
    check_offsets_shapes(value, reference, offsets, attention_weights)
    return triton_msda.msda_forward(
        value, spatial_shapes, level_start_index, offsets, attention_weights, reference
    )


@msda_offsets_op.register_fake
def _msda_offsets_fake(value, spatial_shapes, level_start_index, reference, offsets, attention_weights):
    check_offsets_shapes(value, reference, offsets, attention_weights)
    B, _, M, D = value.shape
    dtype = output_dtype(value, reference, attention_weights)
    return value.new_empty(B, offsets.shape[1], M * D, dtype=dtype)


@torch.library.custom_op("bevforge::msda_offsets_backward", mutates_args=())
def msda_offsets_backward_op(
    grad_out: torch.Tensor,
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    reference: torch.Tensor,
    offsets: torch.Tensor,
    attention_weights: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of (value, offsets, attention_weights); value grads via fp32 atomics."""
    alert_not_deterministic("The Triton MSDA backward (bevforge::msda_offsets_backward)")
    return triton_msda.msda_backward(
        grad_out, value, spatial_shapes, level_start_index, offsets, attention_weights, reference
    )


@msda_offsets_backward_op.register_fake
def _msda_offsets_backward_fake(grad_out, value, spatial_shapes, level_start_index, reference, offsets, attn):
    return torch.empty_like(value), torch.empty_like(offsets), torch.empty_like(attn)


def _offsets_setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _offsets_backward(ctx, grad_out: torch.Tensor):
    value, spatial_shapes, level_start_index, reference, offsets, attention_weights = ctx.saved_tensors
    if ctx.needs_input_grad[3]:
        raise RuntimeError(
            "bevforge::msda_offsets has no gradient for its reference points: pass them detached, or use "
            "bevforge.ops.msda.msda_from_offsets, which takes the locations path when they need one"
        )
    grad_value, grad_offsets, grad_attn = msda_offsets_backward_op(
        grad_out.contiguous(), value, spatial_shapes, level_start_index, reference, offsets, attention_weights
    )
    return grad_value, None, None, None, grad_offsets, grad_attn


msda_offsets_op.register_autograd(_offsets_backward, setup_context=_offsets_setup_context)
