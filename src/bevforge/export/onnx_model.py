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

Spatial cross-attention is exported in its dense form (:mod:`bevforge.export.dense_sca`): every camera
attends every query and misses are masked, so the graph holds no data-dependent size and no scatter, and
is valid for any camera rig. The model passed in keeps its faster hit-only path (the export uses a copy).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bevforge.config import Config
from bevforge.export.dense_sca import with_dense_sca
from bevforge.export.rig import (  # noqa: F401  (input_hw, rig_lidar2img: re-exported for callers)
    NUSCENES_RAW_WH,
    SYNTHETIC_RAW_WH,
    input_hw,
    rig_lidar2img,
)
from bevforge.export.symbolics import register_symbolics

INPUT_NAMES = ("images", "prev_bev", "prev_bev_exists", "can_bus", "lidar2img")
OUTPUT_NAMES = ("cls_logits", "box_code", "bev")


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
        pad_hw = (int(images.shape[-2]), int(images.shape[-1]))
        # projected (and the SCA's gather size read) before the backbone is queued (eager CUDA; None when
        # traced or captured)
        projections = self.model.encoder.project_frames(lidar2img[:, None], pad_hw, [0])  # [1, 1, N, 4, 4]
        projected = None if projections is None else projections.get(0)
        feats = self.model.extract_features(images)  # L x [1, N, C, h, w]
        exists = prev_bev_exists.bool()
        bev = self.model.encoder(feats, lidar2img, pad_hw, can_bus, prev_bev, exists, projected)
        preds = self.model._heads(bev)  # the same heads as BEVFormer.forward
        return preds["cls_logits"], preds["box_code"], preds["bev"]


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


def export_onnx(
    model: nn.Module, inputs: tuple[torch.Tensor, ...], out_path: str | Path, opset: int = 17
) -> Path:
    """Trace ``BEVFormerFrame`` of a dense-SCA copy of ``model`` (:func:`with_dense_sca`) to ONNX."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    frame = BEVFormerFrame(with_dense_sca(model)).eval()
    register_symbolics(opset)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            frame,
            inputs,
            str(out_path),
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )
    return out_path


def ort_session(onnx_path: str | Path):
    """An onnxruntime CPU session (default threading) on ``onnx_path``."""
    import onnxruntime as ort

    return ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])


def run_onnxruntime(onnx_path_or_session, inputs: tuple[torch.Tensor, ...]) -> list[np.ndarray]:
    """The three outputs from onnxruntime; pass a session (:func:`ort_session`) to run it again."""
    sess = onnx_path_or_session
    if isinstance(sess, (str, Path)):
        sess = ort_session(sess)
    feeds = {name: t.numpy() for name, t in zip(INPUT_NAMES, inputs, strict=True)}
    return sess.run(list(OUTPUT_NAMES), feeds)


def compare_with_pytorch(
    model: nn.Module, onnx_path_or_session, inputs: tuple[torch.Tensor, ...]
) -> dict[str, float]:
    """Max abs difference per output between onnxruntime (CPU) and PyTorch (``model`` as it is, i.e.
    the hit-only SCA) on the same inputs."""
    frame = BEVFormerFrame(model).eval()
    with torch.no_grad():
        want = frame(*inputs)
    got = run_onnxruntime(onnx_path_or_session, inputs)
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
    lidar2img: torch.Tensor | None = None,
    dynamic_rig: bool = False,
) -> dict:
    """Build the recipe's model, load ``checkpoint`` (None: random init), export, check with onnxruntime.

    ``lidar2img [1, N, 4, 4]``: the rig of the example inputs (None: :func:`rig_lidar2img`); BEVFormer's
    graph takes ``lidar2img`` as an input (any rig), BEVDet's bakes this rig in
    (:func:`bevforge.export.bevdet_onnx.export_bevdet_recipe`) unless ``dynamic_rig``.

    Writes ``out_path`` and ``out_path + ".json"`` (input/output names and shapes, the check) atomically
    beside it; returns that JSON's content. Raises ``ValueError`` when onnxruntime disagrees beyond
    :data:`ORT_TOLERANCE`.
    """
    from bevforge.io import atomic_write_json
    from bevforge.models.build import build_model

    if cfg.model.arch == "bevdet":
        from bevforge.export.bevdet_onnx import export_bevdet_recipe

        return export_bevdet_recipe(cfg, checkpoint, out_path, opset, raw_wh, check, lidar2img, dynamic_rig)
    if cfg.model.arch != "bevformer":
        raise ValueError(
            f"{cfg.name}: ONNX export supports model.arch 'bevformer' and 'bevdet', not {cfg.model.arch!r}"
        )
    model = build_model(cfg).eval()
    if checkpoint is not None:
        from bevforge.eval.pipeline import load_checkpoint

        load_checkpoint(model, checkpoint)
    inputs = example_inputs(cfg, raw_wh)
    if lidar2img is not None:
        inputs = (*inputs[:4], lidar2img.float())
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
