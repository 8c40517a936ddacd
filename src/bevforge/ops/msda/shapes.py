"""Level shapes of a multi-scale value map, as a tensor or as static Python ints.

Shape letters: L levels.

The MSDA contract takes ``spatial_shapes`` as an ``[L, 2]`` int64 tensor of (H, W). The shapes are
static per recipe, and reading such a tensor back to the host (``tolist()``) is a device sync on CUDA
and a graph break under ``torch.compile``. So every MSDA entry point also accepts them as L (H, W) int
pairs (:data:`SpatialShapes`); with those, nothing is read back. The helpers below give the pairs, the
``[L, 2]`` tensor or the (W, H) normaliser of the sampling offsets from either form, and never read a
tensor back unless the caller asks for the pairs of a tensor (:func:`level_shapes`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bevforge.ops.constants import device_constant

#: L (H, W) pairs of Python ints
LevelShapes = tuple[tuple[int, int], ...]
#: ``[L, 2]`` int64 tensor of (H, W), or L (H, W) int pairs (static: no device read-back)
SpatialShapes = torch.Tensor | Sequence[Sequence[int]]


def static_level_shapes(spatial_shapes: SpatialShapes) -> LevelShapes | None:
    """The (H, W) pairs when ``spatial_shapes`` is given as Python ints (checked), None for a tensor."""
    if isinstance(spatial_shapes, torch.Tensor):
        return None
    pairs = []
    for lvl, hw in enumerate(spatial_shapes):
        if len(hw) != 2 or any(isinstance(v, torch.Tensor) or int(v) != v or int(v) < 1 for v in hw):
            raise ValueError(
                f"spatial_shapes[{lvl}] = {hw!r}: expected an (H, W) pair of positive ints (or pass an "
                "[L, 2] int64 tensor)"
            )
        pairs.append((int(hw[0]), int(hw[1])))
    if not pairs:
        raise ValueError("spatial_shapes is empty: expected L >= 1 (H, W) pairs")
    return tuple(pairs)


def level_shapes(spatial_shapes: SpatialShapes) -> LevelShapes:
    """(H, W) pairs; a tensor is read back to the host (a device sync, a graph break when compiling)."""
    static = static_level_shapes(spatial_shapes)
    if static is not None:
        return static
    assert isinstance(spatial_shapes, torch.Tensor)
    return tuple((int(h), int(w)) for h, w in spatial_shapes.tolist())


def num_levels(spatial_shapes: SpatialShapes) -> int:
    """L, without reading a tensor's values."""
    return spatial_shapes.shape[0] if isinstance(spatial_shapes, torch.Tensor) else len(spatial_shapes)


def shapes_tensor(spatial_shapes: SpatialShapes, device: torch.device) -> torch.Tensor:
    """``[L, 2]`` int64 (H, W) on ``device`` (a given tensor is only moved)."""
    static = static_level_shapes(spatial_shapes)
    if static is None:
        assert isinstance(spatial_shapes, torch.Tensor)
        return spatial_shapes.to(device)
    return device_constant(static, torch.long, device)  # [L, 2] (copied to the device once)


def level_start_index(spatial_shapes: torch.Tensor) -> torch.Tensor:
    """``[L]`` int64: the first token of each level in the flattened value, from ``[L, 2]`` (H, W)."""
    sizes = spatial_shapes[:, 0] * spatial_shapes[:, 1]  # [L] tokens per level
    return torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])  # [L]


def wh_normaliser(spatial_shapes: SpatialShapes, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``[L, 2]`` (W, H) per level in ``dtype`` on ``device``: divides cell offsets into normalised
    (x, y) offsets. The same values from either form (a division by a tensor, never by a Python scalar,
    which CUDA turns into a multiplication by the reciprocal)."""
    static = static_level_shapes(spatial_shapes)
    if static is None:
        assert isinstance(spatial_shapes, torch.Tensor)
        return torch.stack((spatial_shapes[:, 1], spatial_shapes[:, 0]), dim=-1).to(device, dtype)  # [L, 2]
    return device_constant([(w, h) for h, w in static], dtype, device)  # [L, 2] (W, H)


def sampling_locations(
    reference: torch.Tensor, offsets: torch.Tensor, normaliser: torch.Tensor
) -> torch.Tensor:
    """``reference + offsets / normaliser`` in fp32, broadcast, as one ``torch.addcdiv``: offsets in the
    dtype their projection left them (bf16 under autocast) are divided in fp32, with no fp32 copy of them
    and no quotient tensor (one pass over the locations instead of two or three, forward and backward).
    ``reference`` fp32; ``normaliser`` (:func:`wh_normaliser`, fp32) viewed to broadcast. An ONNX export
    takes the plain form (the exporter has no ``addcdiv``)."""
    if torch.onnx.is_in_onnx_export():
        return reference + offsets.to(reference.dtype) / normaliser
    return torch.addcdiv(reference, offsets, normaliser)


def offset_locations(
    reference: torch.Tensor, offsets: torch.Tensor, spatial_shapes: SpatialShapes
) -> torch.Tensor:
    """fp32 sampling locations ``[B, Q, M, L, P, 2]`` of ``offsets [B, Q, M, L, P, 2]`` (cells of each
    level) around ``reference [B, Q, L_r, Z, 2]`` fp32 (``L_r``: 1 or L): point ``p = outer * Z + z`` of
    level l around reference z of level l (or of the one row). :func:`sampling_locations`, one pass; the
    MSDA kernel forms the same numbers itself (``bevforge.ops.msda.msda_from_offsets``)."""
    B, Q, M, L, P, _ = offsets.shape
    Z = reference.shape[3]
    normaliser = wh_normaliser(spatial_shapes, torch.float32, offsets.device)  # [L, 2] (W, H)
    # [B, Q, 1, L_r, 1, Z, 2] + [B, Q, M, L, P/Z, Z, 2] / [L, 1, 1, 2]
    ref = reference[:, :, None, :, None]
    locations = sampling_locations(ref, offsets.view(B, Q, M, L, P // Z, Z, 2), normaliser[:, None, None, :])
    return locations.view(B, Q, M, L, P, 2)


def check_num_tokens(spatial_shapes: SpatialShapes, num_tokens: int, name: str) -> None:
    """``sum_l H_l * W_l == num_tokens`` without a host sync: a Python check for static shapes, a
    device-side assert (``torch._assert_async``, no graph break) for a tensor."""
    static = static_level_shapes(spatial_shapes)
    if static is not None:
        total = sum(h * w for h, w in static)
        if total != num_tokens:
            raise ValueError(
                f"{name}: spatial_shapes {static} hold {total} tokens but the value map has {num_tokens}"
            )
        return
    assert isinstance(spatial_shapes, torch.Tensor)
    total_t = (spatial_shapes[:, 0] * spatial_shapes[:, 1]).sum()
    torch._assert_async(total_t == num_tokens, f"{name}: spatial_shapes do not add up to the value map")
