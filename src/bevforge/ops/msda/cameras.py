"""Deformable attention over cameras: the spatial cross-attention's sampling as one op (the spec here).

Shape letters: B batch, N cameras, S value tokens of a camera, M heads, D channels per head, Q BEV
queries, L levels, P points per level, Z pillar points per query.

``msda_cameras(value [B, N, S, M, D], spatial_shapes, level_start_index, reference [B, N, Q, Z, 2] fp32,
hit [B, N, Q] bool, offsets [B, Q, M, L, P, 2], attention_weights [B, Q, M, L, P])`` is, for each query,
the sum over the cameras it hits of :func:`~bevforge.ops.msda.msda_from_offsets` in that camera: the
query's offsets (cells of each level) and weights, shared by every camera, around its pillar points
projected into the camera (point p around pillar point ``p % Z``). ``[B, Q, M * D]`` in the promoted dtype
of value, reference and weights. No gradient for ``reference`` or ``hit``.

:func:`msda_cameras` dispatches: ``torch.ops.bevforge.msda_cameras`` (one Triton kernel over the cameras,
``triton_cameras.py``) where the MSDA kernel is eligible, else :func:`msda_cameras_reference` (each camera
attends every query: N times the work of the hit queries; the SCA takes its hit gather there).
"""

from __future__ import annotations

import torch

from bevforge.ops.dispatch import LazyOp, kernel_choice, placement_ineligible_reason, select_kernel
from bevforge.ops.msda.reference import msda_reference, output_dtype
from bevforge.ops.msda.shapes import SpatialShapes, offset_locations, shapes_tensor

#: the most cameras the kernel takes (a bit each in an int32, the sign bit left alone)
MAX_CAMERAS = 30
#: columns of a kernel program's tile of the BEV grid (``grid_w``; ``BLOCK_Q / TILE_W`` rows)
TILE_W = 8
_CAMERAS_OP = LazyOp("bevforge.ops.msda.cameras_op", "msda_cameras_op", "msda-cameras")


def check_cameras_shapes(
    value: torch.Tensor,
    reference: torch.Tensor,
    hit: torch.Tensor,
    offsets: torch.Tensor,
    attention_weights: torch.Tensor,
    grid_w: int = 0,
) -> None:
    """Ranks, matching sizes and dtypes, a grid width that divides Q (no device sync)."""
    if value.dim() != 5 or offsets.dim() != 6 or attention_weights.dim() != 5:
        raise ValueError(
            f"msda_cameras: expected value [B, N, S, M, D], offsets [B, Q, M, L, P, 2], attention_weights "
            f"[B, Q, M, L, P]; got {tuple(value.shape)}, {tuple(offsets.shape)}, "
            f"{tuple(attention_weights.shape)}"
        )
    B, N, _, M, _ = value.shape
    Q, L, P = offsets.shape[1], offsets.shape[3], offsets.shape[4]
    if offsets.shape[-1] != 2 or tuple(offsets.shape[:-1]) != tuple(attention_weights.shape):
        raise ValueError(
            f"msda_cameras: offsets {tuple(offsets.shape)} must be attention_weights "
            f"{tuple(attention_weights.shape)} + (2,)"
        )
    if (offsets.shape[0], offsets.shape[2]) != (B, M):
        raise ValueError(
            f"msda_cameras: batch/heads of offsets {tuple(offsets.shape)} differ from value "
            f"{tuple(value.shape)}"
        )
    if (
        reference.dim() != 5
        or tuple(reference.shape[:3]) != (B, N, Q)
        or reference.shape[-1] != 2
        or reference.shape[3] < 1
        or P % reference.shape[3] != 0
    ):
        raise ValueError(
            f"msda_cameras: reference {tuple(reference.shape)} must be [B, N, Q, Z, 2] with (B, N, Q) = "
            f"{(B, N, Q)} and Z dividing the {P} points of each of the {L} levels"
        )
    if reference.dtype != torch.float32:
        raise ValueError(f"msda_cameras: reference dtype {reference.dtype}, expected float32")
    if tuple(hit.shape) != (B, N, Q) or hit.dtype != torch.bool:
        raise ValueError(
            f"msda_cameras: hit {tuple(hit.shape)} {hit.dtype} must be [B, N, Q] = {(B, N, Q)} bool"
        )
    if grid_w < 0 or (grid_w > 0 and Q % grid_w != 0):
        raise ValueError(f"msda_cameras: grid_w={grid_w} must be 0 (no grid) or divide the {Q} queries")


def msda_cameras_reference(
    value: torch.Tensor,
    spatial_shapes: SpatialShapes,
    level_start_index: torch.Tensor,
    reference: torch.Tensor,
    hit: torch.Tensor,
    offsets: torch.Tensor,
    attention_weights: torch.Tensor,
    grid_w: int = 0,
) -> torch.Tensor:
    """The module docstring's sum, in PyTorch (``grid_w``: checked, else unused), one camera at a time (the
    memory of one camera's sampling, not N): every query in the camera (its own locations, the shared
    offsets and weights), the queries it misses sampling nowhere and dropped (``where``: nothing of theirs
    leaks, not even a NaN), the cameras summed in order."""
    check_cameras_shapes(value, reference, hit, offsets, attention_weights, grid_w)
    total = None
    for n in range(value.shape[1]):
        # [B, N, Q, Z, 2] -> [B, Q, 1, Z, 2]: one reference row for every level
        locations = offset_locations(reference[:, n, :, None], offsets, spatial_shapes)  # [B, Q, M, L, P, 2]
        # a miss samples far outside every level (whatever it projected to: a NaN never reaches grid_sample)
        hit_n = hit[:, n, :, None, None, None, None]  # [B, Q, 1, 1, 1, 1]
        locations = torch.where(hit_n, locations, locations.new_full((), -1.0))
        out = msda_reference(value[:, n], spatial_shapes, level_start_index, locations, attention_weights)
        out = torch.where(hit[:, n, :, None], out, out.new_zeros(()))  # [B, Q, M*D]
        total = out if total is None else total + out
    if total is None:  # no cameras
        B, Q, M = offsets.shape[:3]
        dtype = output_dtype(value, reference, attention_weights)
        return value.new_zeros(B, Q, M * value.shape[-1], dtype=dtype)
    return total


def cameras_ineligible_reason(
    value: torch.Tensor,
    reference: torch.Tensor,
    hit: torch.Tensor,
    offsets: torch.Tensor,
    weights: torch.Tensor,
) -> str | None:
    """None when the camera kernel can run these inputs, else why not: the MSDA kernel's rules on one
    camera's slice (device, dtypes, sizes) and at most :data:`MAX_CAMERAS` cameras."""
    from bevforge.ops.msda import MAX_NUMEL, triton_ineligible_reason  # the package imports this module

    if value.dim() != 5:
        return f"value {tuple(value.shape)} is not [B, N, S, M, D]"
    if value.shape[1] > MAX_CAMERAS:
        return f"{value.shape[1]} cameras (the kernel takes at most {MAX_CAMERAS})"
    if len({t.device for t in (value, reference, hit, offsets, weights)}) != 1:
        return "inputs on several devices"
    if max(value.numel(), reference.numel()) > MAX_NUMEL:
        return "more than 2**31 elements (the kernel indexes with int32)"
    return triton_ineligible_reason(value[:, 0], offsets, weights)


def msda_cameras(
    value: torch.Tensor,
    spatial_shapes: SpatialShapes,
    level_start_index: torch.Tensor,
    reference: torch.Tensor,
    hit: torch.Tensor,
    offsets: torch.Tensor,
    attention_weights: torch.Tensor,
    grid_w: int = 0,
) -> torch.Tensor:
    """The module docstring's op: the kernel where :func:`cameras_ineligible_reason` allows (and
    ``BEVFORGE_KERNELS`` is not ``reference``), else :func:`msda_cameras_reference`. ``[B, Q, M * D]``.
    ``grid_w``: the width of the queries' grid (``q = row * grid_w + col``: the BEV's ``bev_w``), which
    the kernel walks in tiles (cells of a tile see the same cameras); 0 for none."""
    choice = kernel_choice()
    if choice != "reference":
        reason = cameras_ineligible_reason(value, reference, hit, offsets, attention_weights)
        op = select_kernel(choice, _CAMERAS_OP, reason, "Triton MSDA camera kernel")
        if op is not None:
            shapes = shapes_tensor(spatial_shapes, value.device)  # [L, 2] int64 (the op takes tensors)
            return op(value, shapes, level_start_index, reference, hit, offsets, attention_weights, grid_w)
    return msda_cameras_reference(
        value, spatial_shapes, level_start_index, reference, hit, offsets, attention_weights, grid_w
    )


def cameras_kernel_runs(device_tensor: torch.Tensor) -> bool:
    """Whether :func:`msda_cameras` would take the kernel for tensors on ``device_tensor``'s device (as far
    as the device and ``BEVFORGE_KERNELS`` decide: the SCA's ``fuse_cameras="auto"``)."""
    if kernel_choice() == "reference":
        return False
    return placement_ineligible_reason([device_tensor], "reference") is None and _CAMERAS_OP.get() is not None
