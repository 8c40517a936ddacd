"""BEV pooling (Lift-Splat "splat", BEVPoolv2 style): one dispatch function over the reference and the kernel.

``plan_bev_pool(cell_index, bev_h, bev_w)`` sorts the frustum points by BEV cell once (cacheable while
the calibration is fixed); ``bev_pool(depth, context, plan)`` sums ``depth * context`` per cell into
``[B, C, bev_h, bev_w]``. See :mod:`bevforge.ops.bev_pool.plan` and :mod:`bevforge.ops.bev_pool.reference`
(the spec).

``BEVFORGE_KERNELS=reference|triton|auto`` (default ``auto``) as for MSDA: ``auto`` takes the Triton
kernel (``torch.ops.bevforge.bev_pool``, see ``op.py``) when it is eligible (CUDA tensors, or CPU under
``TRITON_INTERPRET=1``; fp32/fp16/bf16; fewer than 2**31 elements; not inside an ONNX export) and the
reference otherwise; ``triton`` raises a clear error when it is not eligible. Importing this module never
fails: a kernel whose import fails is simply not eligible (``triton_import_error()`` says why).
"""

from __future__ import annotations

import torch

from bevforge.ops.bev_pool.plan import BEVPoolPlan, plan_bev_pool
from bevforge.ops.bev_pool.reference import bev_pool_reference, check_inputs, promote
from bevforge.ops.dispatch import LazyOp, kernel_choice, placement_ineligible_reason, select_kernel

__all__ = [
    "BEVPoolPlan",
    "bev_pool",
    "bev_pool_reference",
    "kernel_choice",
    "plan_bev_pool",
    "triton_import_error",
    "triton_ineligible_reason",
]

_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_NUMEL = 2**31 - 1  # the kernels index with int32
_OP = LazyOp("bevforge.ops.bev_pool.op", "bev_pool_plan_op", "bev-pool")


def triton_import_error() -> str | None:
    """Why the Triton op could not be imported (None when it can)."""
    _OP.get()
    return _OP.error


def triton_ineligible_reason(depth: torch.Tensor, context: torch.Tensor, plan: BEVPoolPlan) -> str | None:
    """None when the Triton kernel can run these inputs, else why not (for errors and logs)."""
    tensors = [depth, context, plan.ranks_bev]
    reason = placement_ineligible_reason(tensors, "scatter_add reference", " (move the plan with plan.to())")
    if reason is not None:
        return reason
    for name, t in (("depth", depth), ("context", context)):
        if t.dtype not in _SUPPORTED_DTYPES:
            return f"{name} dtype {t.dtype} (supported: fp32, fp16, bf16)"
    out_numel = plan.batch_size * context.shape[-1] * plan.bev_h * plan.bev_w
    if max(depth.numel(), context.numel(), out_numel) > MAX_NUMEL:
        return "more than 2**31 elements (the kernel indexes with int32)"
    return None


def bev_pool(depth: torch.Tensor, context: torch.Tensor, plan: BEVPoolPlan) -> torch.Tensor:
    """``depth [B, N, D, fH, fW]``, ``context [B, N, fH, fW, C]`` -> ``[B, C, bev_h, bev_w]``.

    Depth and context of different dtypes are promoted (fp32 depth x bf16 context -> fp32)."""
    check_inputs(depth, context, plan)
    depth, context = promote(depth, context)  # a no-op unless the dtypes differ (autocast)
    choice = kernel_choice()
    if choice == "reference":
        return bev_pool_reference(depth, context, plan)
    # the cheap checks first, so CPU runs never import Triton
    reason = triton_ineligible_reason(depth, context, plan)
    op = select_kernel(choice, _OP, reason, "Triton BEV pooling kernel")
    if op is not None:
        return op(depth, context, plan)
    return bev_pool_reference(depth, context, plan)
