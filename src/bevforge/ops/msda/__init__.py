"""Multi-scale deformable attention: one dispatch function over the reference and the kernels.

``BEVFORGE_KERNELS=reference|triton|auto`` (default ``auto``) forces a choice; ``auto`` takes the Triton
kernel (``torch.ops.bevforge.msda``, see ``op.py``) when it is eligible (CUDA tensors, fp32/fp16/bf16,
sizes within the kernel's limits, not inside an ONNX export) and the pure-PyTorch reference otherwise;
``triton`` raises a clear error when the kernel is not eligible. Importing this module never fails:
a kernel whose import fails is simply not eligible (the reason is kept in ``triton_import_error()``).
:func:`msda_from_offsets` is the same attention with the sampling points given as offsets in cells around
reference points; on the kernel path the locations are formed inside the kernel
(``torch.ops.bevforge.msda_offsets``: no fp32 locations tensor written, read or kept for backward).
``spatial_shapes`` may be static (H, W) int pairs (:mod:`bevforge.ops.msda.shapes`): the reference then
never reads a tensor back, and the kernel gets them as a device tensor.
"""

from __future__ import annotations

import torch

from bevforge.ops.dispatch import LazyOp, kernel_choice, placement_ineligible_reason, select_kernel
from bevforge.ops.msda.reference import msda_reference
from bevforge.ops.msda.shapes import LevelShapes, SpatialShapes, level_shapes, offset_locations, shapes_tensor

__all__ = [
    "LevelShapes",
    "SpatialShapes",
    "kernel_choice",
    "level_shapes",
    "msda_cameras",
    "msda_from_offsets",
    "msda_reference",
    "multi_scale_deformable_attention",
    "triton_ineligible_reason",
    "triton_import_error",
]

_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
#: the largest channels per head / levels / points the Triton kernel is used for (unrolled loops, one
#: register tile of D channels) and the int32 index limit of the kernel
MAX_HEAD_DIM = 256
MAX_LEVELS = 8
MAX_POINTS = 32
MAX_NUMEL = 2**31 - 1
_OP = LazyOp("bevforge.ops.msda.op", "msda_op", "msda")
_OFFSETS_OP = LazyOp("bevforge.ops.msda.op", "msda_offsets_op", "msda-offsets")
#: :func:`msda_from_offsets` forms the locations inside the kernel where it can (False: always with
#: ``addcdiv`` first, then the kernel on the locations; the same numbers). The offsets kernels do a little
#: more per sampling point (the reference load, two IEEE divisions; the backward takes 144 registers
#: where the locations one takes 124 at the default tile), the locations form writes and reads an fp32
#: tensor per layer: ``bench kernel``'s "from offsets" column times both on a GPU; not measured yet
FORM_LOCATIONS_IN_KERNEL = True


def triton_import_error() -> str | None:
    """Why the Triton op could not be imported (None when it can)."""
    _OP.get()
    return _OP.error


def triton_ineligible_reason(
    value: torch.Tensor, sampling_locations: torch.Tensor, attention_weights: torch.Tensor
) -> str | None:
    """None when the Triton kernel can run these inputs, else why not (for errors and logs)."""
    tensors = [value, sampling_locations, attention_weights]
    reason = placement_ineligible_reason(tensors, "grid_sample reference")
    if reason is not None:
        return reason
    named = (
        ("value", value),
        ("sampling_locations", sampling_locations),
        ("attention_weights", attention_weights),
    )
    for name, t in named:
        if t.dtype not in _SUPPORTED_DTYPES:
            return f"{name} dtype {t.dtype} (supported: fp32, fp16, bf16)"
    D, L, P = value.shape[3], sampling_locations.shape[3], sampling_locations.shape[4]
    if D > MAX_HEAD_DIM or L > MAX_LEVELS or P > MAX_POINTS:
        return (
            f"sizes D={D}, L={L}, P={P} beyond the kernel limits (D<={MAX_HEAD_DIM}, "
            f"L<={MAX_LEVELS}, P<={MAX_POINTS})"
        )
    out_numel = value.shape[0] * sampling_locations.shape[1] * value.shape[2] * D
    if max(value.numel(), sampling_locations.numel(), out_numel) > MAX_NUMEL:
        return "more than 2**31 elements (the kernel indexes with int32)"
    return None


def multi_scale_deformable_attention(
    value: torch.Tensor,
    spatial_shapes: SpatialShapes,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """See :mod:`bevforge.ops.msda.reference` for the contract (``spatial_shapes``: an ``[L, 2]`` int64
    tensor or static (H, W) int pairs). Returns ``[B, Q, M * D]``."""
    choice = kernel_choice()
    if choice == "reference":
        return msda_reference(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
    # the cheap checks first, so CPU runs never import Triton
    reason = triton_ineligible_reason(value, sampling_locations, attention_weights)
    op = select_kernel(choice, _OP, reason, "Triton MSDA kernel")
    if op is not None:
        shapes = shapes_tensor(spatial_shapes, value.device)  # [L, 2] int64 (the op takes tensors)
        return op(value, shapes, level_start_index, sampling_locations, attention_weights)
    return msda_reference(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)


def msda_from_offsets(
    value: torch.Tensor,
    spatial_shapes: SpatialShapes,
    level_start_index: torch.Tensor,
    reference: torch.Tensor,
    offsets: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """:func:`multi_scale_deformable_attention` at the fp32 locations
    :func:`~bevforge.ops.msda.shapes.offset_locations` of ``offsets [B, Q, M, L, P, 2]`` (cells of each
    level) around ``reference [B, Q, L_r, Z, 2]`` (``L_r`` 1 or L; point p takes reference ``p % Z``).

    Where the kernel is eligible, ``reference`` is fp32 and needs no gradient, one op forms the locations
    inside the kernel, forward and backward (``bevforge::msda_offsets``: the same numbers, bitwise, as the
    kernel on the locations); otherwise the locations are formed here and take the dispatch above (a
    reference point that trains, as the decoder's, takes this path). Returns ``[B, Q, M * D]``."""
    choice = kernel_choice()
    if (
        FORM_LOCATIONS_IN_KERNEL
        and choice != "reference"
        and reference.dtype == torch.float32
        and not (reference.requires_grad and torch.is_grad_enabled())
        and triton_ineligible_reason(value, offsets, attention_weights) is None
    ):
        op = _OFFSETS_OP.get()
        if op is not None:
            shapes = shapes_tensor(spatial_shapes, value.device)  # [L, 2] int64 (the op takes tensors)
            return op(value, shapes, level_start_index, reference, offsets, attention_weights)
    locations = offset_locations(reference, offsets, spatial_shapes)  # [B, Q, M, L, P, 2] fp32
    return multi_scale_deformable_attention(
        value, spatial_shapes, level_start_index, locations, attention_weights
    )


from bevforge.ops.msda.cameras import msda_cameras  # noqa: E402  (imports this package's submodules)
