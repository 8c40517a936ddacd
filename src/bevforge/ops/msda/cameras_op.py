"""``torch.ops.bevforge.msda_cameras``: the camera kernels (``triton_cameras.py``) as a custom op.

Registered with a fake (meta) implementation and an autograd formula, as ``op.py``'s MSDA ops, so
``torch.compile``, ``torch.export`` and AOTAutograd see one opaque op. Shape letters and semantics:
:mod:`bevforge.ops.msda.cameras` (the dispatch there decides when the op is used). CUDA tensors, or CPU
tensors under ``TRITON_INTERPRET=1`` (the tests).
"""

from __future__ import annotations

import torch

from bevforge.ops.dispatch import alert_not_deterministic
from bevforge.ops.msda import triton_cameras
from bevforge.ops.msda.cameras import check_cameras_shapes
from bevforge.ops.msda.reference import output_dtype

__all__ = ["msda_cameras_backward_op", "msda_cameras_op"]


@torch.library.custom_op("bevforge::msda_cameras", mutates_args=())
def msda_cameras_op(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    reference: torch.Tensor,
    hit: torch.Tensor,
    offsets: torch.Tensor,
    attention_weights: torch.Tensor,
    grid_w: int = 0,
) -> torch.Tensor:
    """``value [B, N, S, M, D]``, ``reference [B, N, Q, Z, 2]`` fp32, ``hit [B, N, Q]`` bool, ``offsets
    [B, Q, M, L, P, 2]`` (cells), ``attention_weights [B, Q, M, L, P]`` -> ``[B, Q, M * D]``: each query's
    attention summed over the cameras it hits. ``grid_w``: the width of the queries' grid (the kernel
    works in tiles of it; the result does not depend on it), 0 for none."""
    check_cameras_shapes(value, reference, hit, offsets, attention_weights, grid_w)
    return triton_cameras.msda_cameras_forward(
        value, spatial_shapes, level_start_index, reference, hit, offsets, attention_weights, grid_w
    )


@msda_cameras_op.register_fake
def _msda_cameras_fake(
    value, spatial_shapes, level_start_index, reference, hit, offsets, attention_weights, grid_w=0
):
    check_cameras_shapes(value, reference, hit, offsets, attention_weights, grid_w)
    B, _, _, M, D = value.shape
    dtype = output_dtype(value, reference, attention_weights)
    return value.new_empty(B, offsets.shape[1], M * D, dtype=dtype)


@torch.library.custom_op("bevforge::msda_cameras_backward", mutates_args=())
def msda_cameras_backward_op(
    grad_out: torch.Tensor,
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    reference: torch.Tensor,
    hit: torch.Tensor,
    offsets: torch.Tensor,
    attention_weights: torch.Tensor,
    grid_w: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradients of (value, offsets, attention_weights); value grads via fp32 atomics."""
    alert_not_deterministic("The Triton MSDA camera backward (bevforge::msda_cameras_backward)")
    return triton_cameras.msda_cameras_backward(
        grad_out, value, spatial_shapes, level_start_index, reference, hit, offsets, attention_weights, grid_w
    )


@msda_cameras_backward_op.register_fake
def _msda_cameras_backward_fake(
    grad_out, value, spatial_shapes, level_start_index, reference, hit, offsets, attn, grid_w=0
):
    return torch.empty_like(value), torch.empty_like(offsets), torch.empty_like(attn)


def _setup_context(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs[:7])
    ctx.grid_w = inputs[7]


def _backward(ctx, grad_out: torch.Tensor):
    value, spatial_shapes, level_start_index, reference, hit, offsets, attention_weights = ctx.saved_tensors
    if ctx.needs_input_grad[3]:
        raise RuntimeError(
            "bevforge::msda_cameras has no gradient for its reference points (the pillars projected into "
            "the cameras): pass them detached"
        )
    grad_value, grad_offsets, grad_attn = msda_cameras_backward_op(
        grad_out.contiguous(), value, spatial_shapes, level_start_index, reference, hit, offsets,
        attention_weights, ctx.grid_w,
    )  # fmt: skip
    return grad_value, None, None, None, None, grad_offsets, grad_attn, None


msda_cameras_op.register_autograd(_backward, setup_context=_setup_context)
