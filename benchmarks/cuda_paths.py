"""What the census scripts share: a CUDA training step's kernel paths, taken on the CPU.

The custom ops (``bevforge::msda``, ``msda_offsets``, ``msda_cameras`` and, for the op census, their
backwards, ``dcn_columns`` and ``dcn_backward``) get CPU kernels and the dispatch takes them as it would
on CUDA: the forwards are computed by the references, the backwards return zeros of the gradients' shapes
(they run below autograd, where a reference cannot be differentiated; the censuses count operators and
saved bytes, not values). The recompute regions (``nn/recompute.py``) are active as where the kernel runs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

_REGISTERED: set[str] = set()
#: called with each output of the MSDA forward computed here (the memory census counts the ones a
#: recompute region keeps)
MSDA_OUTPUT_HOOKS: list[Callable[[torch.Tensor], None]] = []


def _register(name: str, kernel: Callable) -> None:
    if name not in _REGISTERED:
        torch.library.register_kernel(name, "cpu")(kernel)
        _REGISTERED.add(name)


def msda_as_on_cuda(backward: bool = False) -> None:
    """The MSDA dispatches to ``bevforge::msda`` / ``bevforge::msda_offsets`` and the SCA to
    ``bevforge::msda_cameras`` (``model.sca_fuse_cameras`` as on CUDA; their autograd saves what the CUDA
    path saves); with ``backward`` their backward ops run too."""
    import bevforge.nn.spatial_cross_attn as sca_module
    import bevforge.ops.msda as msda
    from bevforge.ops.msda import cameras
    from bevforge.ops.msda.reference import msda_reference
    from bevforge.ops.msda.shapes import offset_locations

    def forward(value, spatial_shapes, level_start_index, locations, weights):
        with torch.no_grad():
            out = msda_reference(value, spatial_shapes, level_start_index, locations, weights)
        for hook in MSDA_OUTPUT_HOOKS:
            hook(out)
        return out

    def offsets_forward(value, spatial_shapes, level_start_index, reference, offsets, weights):
        with torch.no_grad():
            locations = offset_locations(reference, offsets, spatial_shapes)
        return forward(value, spatial_shapes, level_start_index, locations, weights)

    def cameras_forward(value, spatial_shapes, level_start_index, reference, hit, offsets, weights, grid_w=0):
        with torch.no_grad():
            return cameras.msda_cameras_reference(
                value, spatial_shapes, level_start_index, reference, hit, offsets, weights, grid_w
            )

    def backward_zeros(grad_out, value, *args):
        """The backward ops: ``(..., points, weights)`` last (locations or offsets; the camera op's a
        grid width after them), zero gradients."""
        points, weights = [a for a in args if isinstance(a, torch.Tensor)][-2:]
        return torch.zeros_like(value), torch.zeros_like(points), torch.zeros_like(weights)

    for lazy in (msda._OP, msda._OFFSETS_OP, cameras._CAMERAS_OP):
        if lazy.get() is None:
            raise RuntimeError(f"the MSDA custom ops cannot be imported: {lazy.error}")
    _register("bevforge::msda", forward)
    _register("bevforge::msda_offsets", offsets_forward)
    _register("bevforge::msda_cameras", cameras_forward)
    if backward:
        _register("bevforge::msda_backward", backward_zeros)
        _register("bevforge::msda_offsets_backward", backward_zeros)
        _register("bevforge::msda_cameras_backward", backward_zeros)
    msda.triton_ineligible_reason = lambda *args, **kwargs: None
    cameras.cameras_ineligible_reason = lambda *args, **kwargs: None
    sca_module.cameras_kernel_runs = lambda device_tensor: True  # fuse_cameras="auto" takes the op


def dcn_as_on_cuda() -> None:
    """The DCNv2 forward columns and backward dispatch to ``bevforge::dcn_columns`` / ``dcn_backward``."""
    from bevforge.ops.dcn import sampled
    from bevforge.ops.dispatch import kernels

    def columns(x, offset, mask, kernel, stride, padding, dilation, out_dtype, pixel_major=False):
        geo = sampled._Geometry(tuple(kernel), tuple(stride), tuple(padding), tuple(dilation))
        K = kernel[0] * kernel[1]
        with torch.no_grad(), kernels("reference"):  # the sampled path's columns
            cols = sampled._forward_columns(x, offset, mask, geo, offset.shape[1] // (2 * K), out_dtype)
        return sampled.to_pixel_major(cols, x.shape[1], K) if pixel_major else cols

    def backward_zeros(
        grad_cols, x, offset, mask, kernel, stride, padding, dilation, need_x, pixel_major=False
    ):
        f32 = dict(dtype=torch.float32, device=x.device)
        grad_x = torch.zeros_like(x, dtype=torch.float32) if need_x else torch.empty(0, **f32)
        grad_mask = torch.zeros(mask.shape, **f32) if mask is not None else torch.empty(0, **f32)
        return grad_x, torch.zeros(offset.shape, **f32), grad_mask

    for lazy in (sampled._COLUMNS_OP, sampled._BACKWARD_OP):
        if lazy.get() is None:
            raise RuntimeError(f"the DCN custom ops cannot be imported: {lazy.error}")
    _register("bevforge::dcn_columns", columns)
    _register("bevforge::dcn_backward", backward_zeros)
    sampled.columns_ineligible_reason = lambda *args, **kwargs: None


def recompute_as_on_cuda() -> None:
    """Recompute regions active wherever their setting is not "off" (as where the MSDA kernel runs)."""
    import bevforge.nn.recompute as recompute

    recompute.recompute_active = lambda mode, tensor, draws_random=False: (
        mode != "off" and torch.is_grad_enabled()
    )
