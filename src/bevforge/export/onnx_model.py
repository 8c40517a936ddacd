"""BEVFormer as a pure per-frame function, exported to ONNX and checked with onnxruntime.

Shape letters: N cameras, H/W padded network input, Q = bev_h * bev_w BEV queries, C channels,
D decoder layers, K classes, R = num_queries (detection queries).

The exported graph is ``(images [1, N, 3, H, W], prev_bev [1, Q, C], prev_bev_exists [1] bool,
can_bus [1, 18], lidar2img [1, N, 4, 4]) -> (cls_logits [D, 1, R, K], box_code [D, 1, R, 10],
bev [1, Q, C])`` with static shapes. ``can_bus`` is already the delta form the encoder takes
(:func:`bevforge.geometry.ego_motion.can_bus_deltas`: translation and yaw-deg relative to the previous
frame, zeros at a scene start); the caller keeps the temporal state (feeds ``bev`` back as ``prev_bev``).
Deformable attention goes through the grid_sample reference (ONNX ``GridSample``, opset >= 16): the
dispatch in ``bevforge.ops.msda`` never picks the Triton op during an export.

Spatial cross-attention gathers, per camera, only the queries it hits and pads to the largest count,
a number that depends on ``lidar2img``. The TorchScript tracer would freeze that count, so the graph
is traced with a ``lidar2img`` that puts every pillar point inside every image (count = Q): the exported
graph then runs all Q queries per camera, which is exact for any camera rig (misses are masked out).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bevforge.config import Config

INPUT_NAMES = ("images", "prev_bev", "prev_bev_exists", "can_bus", "lidar2img")
OUTPUT_NAMES = ("cls_logits", "box_code", "bev")
#: nuScenes camera images (width, height); the synthetic set renders 400 x 225
NUSCENES_RAW_WH = (1600, 900)
SYNTHETIC_RAW_WH = (400, 225)


class BEVFormerFrame(nn.Module):
    """One frame of a :class:`bevforge.models.bevformer.BEVFormer` as a function of plain tensors."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        if getattr(model, "det_head", None) is None:
            raise ValueError("ONNX export needs a model with a detection head (model.with_det=True)")
        self.model = model

    def forward(
        self,
        images: torch.Tensor,
        prev_bev: torch.Tensor,
        prev_bev_exists: torch.Tensor,
        can_bus: torch.Tensor,
        lidar2img: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        assert images.dim() == 5 and prev_bev.dim() == 3 and lidar2img.dim() == 4, "see the module docstring"
        feats = self.model.extract_features(images)  # L x [1, N, C, h, w]
        pad_hw = (int(images.shape[-2]), int(images.shape[-1]))
        bev = self.model.encoder(feats, lidar2img, pad_hw, can_bus, prev_bev, prev_bev_exists.bool())
        preds = self.model._heads(bev)  # the same heads as BEVFormer.forward
        return preds["cls_logits"], preds["box_code"], preds["bev"]


def input_hw(cfg: Config, raw_wh: tuple[int, int] | None = None) -> tuple[int, int]:
    """(H, W) of the padded network input: raw camera size x ``data.img_scale``, padded up to the divisor."""
    if raw_wh is None:
        raw_wh = SYNTHETIC_RAW_WH if "synthetic" in cfg.data.data_root else NUSCENES_RAW_WH
    div = cfg.data.pad_divisor
    w, h = (int(round(v * cfg.data.img_scale)) for v in raw_wh)
    return int(math.ceil(h / div) * div), int(math.ceil(w / div) * div)


#: (yaw from the car's forward axis in degrees, focal / image width) of the six nuScenes cameras
_RING = ((0.0, 0.791), (-55.0, 0.791), (55.0, 0.791), (180.0, 0.506), (110.0, 0.791), (-110.0, 0.791))


def rig_lidar2img(cfg: Config, raw_wh: tuple[int, int] | None = None) -> torch.Tensor:
    """``[1, N, 4, 4]`` lidar -> input pixels for a nuScenes-like camera ring (for checks and benchmarks).

    LIDAR_TOP convention: x right, y forward, z up; cameras (x right, y down, z forward) sit 0.3 m below
    the lidar, looking ``yaw`` degrees ccw from forward.
    """
    if raw_wh is None:
        raw_wh = SYNTHETIC_RAW_WH if "synthetic" in cfg.data.data_root else NUSCENES_RAW_WH
    w, h = raw_wh
    scale = cfg.data.img_scale
    mats = []
    for i in range(len(cfg.data.cameras)):
        yaw_deg, focal_ratio = _RING[i % len(_RING)]
        a = math.radians(yaw_deg)
        forward = np.array([-math.sin(a), math.cos(a), 0.0])
        right = np.array([math.cos(a), math.sin(a), 0.0])
        cam2lidar = np.eye(4)
        cam2lidar[:3, :3] = np.stack([right, [0.0, 0.0, -1.0], forward], axis=1)  # columns: cam x, y, z
        cam2lidar[:3, 3] = (0.0, 0.0, -0.3)
        k = np.eye(4)
        f = focal_ratio * w
        k[:3, :3] = ((f, 0.0, w / 2.0), (0.0, f, h / 2.0), (0.0, 0.0, 1.0))
        k[:2] *= scale  # the resize scales pixel rows u, v
        mats.append(k @ np.linalg.inv(cam2lidar))  # [4, 4]
    return torch.tensor(np.stack(mats), dtype=torch.float32)[None]  # [1, N, 4, 4]


def example_inputs(
    cfg: Config, raw_wh: tuple[int, int] | None = None, seed: int = 0
) -> tuple[torch.Tensor, ...]:
    """Random images/prev BEV, a small ego motion and the rig's ``lidar2img`` (the five graph inputs)."""
    g = torch.Generator().manual_seed(seed)
    h, w = input_hw(cfg, raw_wh)
    m = cfg.model
    images = torch.randn(1, len(cfg.data.cameras), 3, h, w, generator=g)  # [1, N, 3, H, W]
    prev_bev = torch.randn(1, m.bev_h * m.bev_w, m.embed_dims, generator=g)  # [1, Q, C]
    can_bus = torch.zeros(1, 18)
    can_bus[0, :3] = torch.tensor([0.8, 0.1, 0.0])  # metres moved since the previous frame
    can_bus[0, 16], can_bus[0, 17] = 0.3, 1.5  # yaw rad (absolute), yaw-deg delta
    exists = torch.ones(1, dtype=torch.bool)
    return images, prev_bev, exists, can_bus, rig_lidar2img(cfg, raw_wh)


def all_hit_lidar2img(num_cams: int, hw: tuple[int, int]) -> torch.Tensor:
    """``[1, N, 4, 4]`` mapping every point to the image centre at depth 1 (every camera hits every query)."""
    h, w = hw
    mat = torch.zeros(4, 4)
    mat[0, 3], mat[1, 3], mat[2, 3], mat[3, 3] = w / 2.0, h / 2.0, 1.0, 1.0  # u = w/2, v = h/2, depth 1
    return mat.expand(1, num_cams, 4, 4).clone()


def _deg2rad_symbolic(g, x):
    return g.op("Mul", x, g.op("Constant", value_t=torch.tensor(math.pi / 180.0, dtype=torch.float32)))


def _stable_sort_symbolic(g, x, stable, dim, descending):
    """``torch.sort(x, stable=True, dim=, descending=)`` as ONNX TopK over the whole axis.

    TopK breaks ties by the lower index (ONNX spec), i.e. it is a stable sort. Computed in float (TopK
    lacks small integer types in onnxruntime); the values are cast back to the input type.
    """
    from torch.onnx._internal.torchscript_exporter import _type_utils, symbolic_helper

    dim_i = symbolic_helper._parse_arg(dim, "i")
    desc_i = symbolic_helper._parse_arg(descending, "i")
    x_type = _type_utils.JitScalarType.from_value(x)
    xf = g.op("Cast", x, to_i=_type_utils.JitScalarType.FLOAT.onnx_type())
    size = g.op("Gather", g.op("Shape", x), g.op("Constant", value_t=torch.tensor([dim_i])), axis_i=0)  # [1]
    values, indices = g.op("TopK", xf, size, axis_i=dim_i, largest_i=desc_i, sorted_i=1, outputs=2)
    return g.op("Cast", values, to_i=x_type.onnx_type()), indices


def _index_add_symbolic(g, x, dim, index, source, alpha=None):
    """``x.index_add(0, index, source)`` with repeated indices: ONNX ScatterND with ``reduction="add"``."""
    from torch.onnx._internal.torchscript_exporter import symbolic_helper

    if symbolic_helper._parse_arg(dim, "i") != 0:
        raise torch.onnx.errors.OnnxExporterError("index_add export supports dim=0 only")
    if alpha is not None and symbolic_helper._maybe_get_const(alpha, "f") not in (1, 1.0, None):
        raise torch.onnx.errors.OnnxExporterError("index_add export supports alpha=1 only")
    idx = g.op("Unsqueeze", index, g.op("Constant", value_t=torch.tensor([-1])))  # [K] -> [K, 1]
    return g.op("ScatterND", x, idx, source, reduction_s="add")


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


# ops the TorchScript exporter lacks or refuses (torch 2.14): deg2rad; sort with ``stable=True``;
# index_add with repeated indices (opset >= 16 has ScatterND reduction="add"); atan2 (NaN at the
# origin, no float64 in onnxruntime)
_SYMBOLICS = {
    "aten::deg2rad": _deg2rad_symbolic,
    "aten::sort": _stable_sort_symbolic,
    "aten::index_add": _index_add_symbolic,
    "aten::atan2": _atan2_symbolic,
}


def _register_symbolics(opset: int) -> None:
    for name, fn in _SYMBOLICS.items():
        torch.onnx.register_custom_op_symbolic(name, fn, opset)


def export_onnx(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], out_path: str | Path, opset: int = 17
) -> Path:
    """Trace ``BEVFormerFrame(model)`` on ``inputs`` (lidar2img replaced by the all-hit rig) to ONNX."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    frame = BEVFormerFrame(model).eval()
    images = inputs[0]
    trace_inputs = (*inputs[:4], all_hit_lidar2img(images.shape[1], tuple(images.shape[-2:])))
    _register_symbolics(opset)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            frame,
            trace_inputs,
            str(out_path),
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )
    return out_path


def run_onnxruntime(onnx_path: str | Path, inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feeds = {name: t.numpy() for name, t in zip(INPUT_NAMES, inputs, strict=True)}
    return sess.run(list(OUTPUT_NAMES), feeds)


def compare_with_pytorch(
    model: nn.Module, onnx_path: str | Path, inputs: tuple[torch.Tensor, ...]
) -> dict[str, float]:
    """Max abs difference per output between onnxruntime (CPU) and PyTorch on the same inputs."""
    frame = BEVFormerFrame(model).eval()
    with torch.no_grad():
        want = frame(*inputs)
    got = run_onnxruntime(onnx_path, inputs)
    return {
        name: float(np.abs(g - w.numpy()).max()) for name, g, w in zip(OUTPUT_NAMES, got, want, strict=True)
    }


#: onnxruntime (CPU, fp32) vs PyTorch (CPU, fp32), max abs difference per output; measured ~3e-5 on the
#: debug recipe (box_code, metres), ~2e-6 on logits and BEV features
ORT_TOLERANCE = 5e-4


def export_recipe(
    cfg: Config,
    checkpoint: str | Path | None,
    out_path: str | Path,
    opset: int = 17,
    raw_wh: tuple[int, int] | None = None,
    check: bool = True,
) -> dict:
    """Build the recipe's model, load ``checkpoint`` (None: random init), export, check with onnxruntime.

    Writes ``out_path`` and ``out_path + ".json"`` (input/output names and shapes, the check) atomically
    beside it; returns that JSON's content. Raises ``ValueError`` when onnxruntime disagrees beyond
    :data:`ORT_TOLERANCE`.
    """
    from bevforge.io import atomic_write_json
    from bevforge.models.build import build_model

    model = build_model(cfg).eval()
    if checkpoint is not None:
        from bevforge.eval.pipeline import load_checkpoint

        load_checkpoint(model, checkpoint)
    inputs = example_inputs(cfg, raw_wh)
    out_path = export_onnx(model, inputs, out_path, opset)
    with torch.no_grad():
        outputs = BEVFormerFrame(model).eval()(*inputs)
    info: dict = {
        "config": cfg.name,
        "checkpoint": str(checkpoint) if checkpoint is not None else None,
        "opset": opset,
        "inputs": {n: list(t.shape) for n, t in zip(INPUT_NAMES, inputs, strict=True)},
        "outputs": {n: list(t.shape) for n, t in zip(OUTPUT_NAMES, outputs, strict=True)},
    }
    if check:
        diffs = compare_with_pytorch(model, out_path, inputs)
        info["onnxruntime_max_abs_diff"] = diffs
        info["tolerance"] = ORT_TOLERANCE
        if max(diffs.values()) > ORT_TOLERANCE:
            raise ValueError(
                f"{out_path}: onnxruntime differs from PyTorch by {diffs} (> {ORT_TOLERANCE}); "
                "the export is wrong, please report it with the config"
            )
    atomic_write_json(f"{out_path}.json", info, indent=2)
    return info
