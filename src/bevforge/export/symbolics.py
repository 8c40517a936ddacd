"""ONNX symbolics for ops the TorchScript exporter (torch 2.14) lacks or gets wrong for our graph.

- ``deg2rad``: missing.
- ``index_add`` (dim 0, repeated indices): the stock export has none; ``ScatterElements`` with
  ``reduction="add"`` (opset >= 16). Not ``ScatterND(reduction="add")``: onnxruntime 1.32 runs that on
  several CPU threads and loses updates on repeated indices (O(1) errors, varying from run to run).
- ``atan2``: the stock one is NaN at the origin and float64 has no ``Atan`` in onnxruntime.
"""

from __future__ import annotations

import math

import torch


def _deg2rad_symbolic(g, x):
    return g.op("Mul", x, g.op("Constant", value_t=torch.tensor(math.pi / 180.0, dtype=torch.float32)))


def _index_add_symbolic(g, x, dim, index, source, alpha=None):
    """``x.index_add(0, index [K], source [K, ...])`` with repeated indices, race-free in onnxruntime."""
    from torch.onnx._internal.torchscript_exporter import symbolic_helper

    if symbolic_helper._parse_arg(dim, "i") != 0:
        raise torch.onnx.errors.OnnxExporterError("index_add export supports dim=0 only")
    if alpha is not None and symbolic_helper._maybe_get_const(alpha, "f") not in (1, 1.0, None):
        raise torch.onnx.errors.OnnxExporterError("index_add export supports alpha=1 only")
    rank = symbolic_helper._get_tensor_rank(source)
    if rank is None:
        raise torch.onnx.errors.OnnxExporterError("index_add export needs a source of known rank")
    # [K] -> [K, 1, ..., 1] -> expand to source's shape [K, ...]: one index per source element
    axes = g.op("Constant", value_t=torch.arange(1, rank, dtype=torch.long))
    idx = g.op("Unsqueeze", index, axes) if rank > 1 else index
    idx = g.op("Expand", idx, g.op("Shape", source))
    return g.op("ScatterElements", x, idx, source, axis_i=0, reduction_s="add")


def _atan2_symbolic(g, y, x):
    """``torch.atan2`` in float32, exact at the axes: ``atan2(0, 0) = 0`` and ``atan2(+0, x < 0) = pi``.

    The stock symbolic computes ``Atan(y / x)``, i.e. NaN at ``(0, 0)``: a frame that did not move (every
    scene start, where :func:`bevforge.geometry.ego_motion.can_bus_deltas` zeroes the translation) got a
    NaN BEV shift. Also float32 because onnxruntime has no float64 ``Atan`` (the shift is float64).
    """
    from torch.onnx._internal.torchscript_exporter import _type_utils

    f32 = _type_utils.JitScalarType.FLOAT.onnx_type()
    out_type = _type_utils.JitScalarType.from_value(y)
    y, x = g.op("Cast", y, to_i=f32), g.op("Cast", x, to_i=f32)
    zero = g.op("Constant", value_t=torch.tensor(0.0, dtype=torch.float32))
    one = g.op("Constant", value_t=torch.tensor(1.0, dtype=torch.float32))
    pi = g.op("Constant", value_t=torch.tensor(math.pi, dtype=torch.float32))
    origin = g.op("And", g.op("Equal", x, zero), g.op("Equal", y, zero))
    atan = g.op("Atan", g.op("Div", y, g.op("Where", origin, one, x)))  # x = 0, y != 0: Atan(+-inf)
    # left half-plane: +pi above the x axis (and on it), -pi below
    left = g.op("Where", g.op("GreaterOrEqual", y, zero), g.op("Add", atan, pi), g.op("Sub", atan, pi))
    out = g.op("Where", g.op("Less", x, zero), left, atan)
    return g.op("Cast", out, to_i=out_type.onnx_type())


SYMBOLICS = {
    "aten::deg2rad": _deg2rad_symbolic,
    "aten::index_add": _index_add_symbolic,
    "aten::atan2": _atan2_symbolic,
}


def register_symbolics(opset: int) -> None:
    """Register :data:`SYMBOLICS` for ``opset`` (>= 16) with ``torch.onnx``."""
    if opset < 16:
        raise ValueError(f"opset {opset}: GridSample and ScatterElements(reduction) need opset 16 or newer")
    for name, fn in SYMBOLICS.items():
        torch.onnx.register_custom_op_symbolic(name, fn, opset)
