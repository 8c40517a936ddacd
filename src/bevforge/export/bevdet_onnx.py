"""BEVDet as a pure per-frame function of the images, for ONE camera rig, exported to ONNX.

Shape letters: N cameras, H/W padded network input, fH/fW image-feature map, D depth bins, C context
channels, bev_h/bev_w BEV grid, K_t classes of head task t.

The exported graph is ``images [1, N, 3, H, W] -> t{i}.heatmap [1, K_t, bev_h, bev_w], t{i}.reg,
t{i}.height, t{i}.dim, t{i}.rot, t{i}.vel`` (the CenterPoint head's outputs, in the head's order; decode
them with ``model.decode``) with static shapes. The rig's ``lidar2img [1, N, 4, 4]`` (calibration and
evaluation's image resize/crop, folded in as everywhere in bevforge) is fixed at export time: the frustum
geometry and the BEV pooling plan (which frustum point lands in which BEV cell) are computed once and
baked into the graph as constant index tables (:class:`~bevforge.export.static_bev_pool.StaticBEVPool`,
gathers and sums, no scatter), as BEVPoolv2 / TensorRT deployments of BEVDet do. **The exported model is
valid only for that rig** (the same cameras, intrinsics, extrinsics and input geometry): export again for
another vehicle or calibration. The rig is written to the ``.json`` beside the graph and into the graph's
metadata (``lidar2img``).

``dynamic=True`` (``bevforge export --dynamic-rig``) exports ``(images, lidar2img [1, N, 4, 4]) -> the
same outputs`` for any rig instead: the LSS geometry and a ``scatter_add`` pooling of all frustum points
run in the graph (:mod:`bevforge.export.dynamic_bev_pool`; more memory, relies on the runtime's
``ScatterElements(reduction="add")`` being exact with repeated indices, as onnxruntime's CPU kernel is).
Parity with the model's own forward: max abs difference ~3e-6 on the debug recipe, :data:`ORT_TOLERANCE`.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bevforge.export.dynamic_bev_pool import DynamicBEVPool
from bevforge.export.static_bev_pool import StaticBEVPool
from bevforge.ops.bev_pool import plan_bev_pool
from bevforge.structures.batch import Batch

INPUT_NAMES = ("images",)
DYNAMIC_INPUT_NAMES = ("images", "lidar2img")


def output_names(model: nn.Module) -> tuple[str, ...]:
    """The head's output keys in its order: ``t{i}.heatmap``, ``t{i}.reg``, ... (``CenterPointHead``)."""
    return tuple(f"t{t}.{name}" for t, head in enumerate(model.head.task_heads) for name in head.branches)


def single_frame_batch(
    images: torch.Tensor, lidar2img: torch.Tensor, can_bus: torch.Tensor | None = None
) -> Batch:
    """A ``Batch`` of one frame: ``images [B, N, 3, H, W]``, ``lidar2img [B, N, 4, 4]``, absolute ``can_bus
    [B, 18]`` (default zeros); one scene, no ground truth; ``frame_valid`` on the host as a loader's."""
    b = images.shape[0]
    eye = torch.eye(4, dtype=torch.float64, device=images.device).expand(b, 1, 4, 4)
    return Batch(
        images=images[:, None],  # [B, 1, N, 3, H, W]
        lidar2img=lidar2img[:, None],  # [B, 1, N, 4, 4]
        can_bus=images.new_zeros(b, 1, 18) if can_bus is None else can_bus[:, None],  # [B, 1, 18]
        ego2global=eye,
        lidar2ego=eye,
        frame_valid=torch.ones(b, 1, dtype=torch.bool),  # a host field (structures/batch.py)
        scene_tokens=[["export"]] * b,
        sample_tokens=["export"] * b,
        timestamps=torch.zeros(b, 1, dtype=torch.int64, device=images.device),
        img_hw=(int(images.shape[-2]), int(images.shape[-1])),
        gt_boxes=[],
        gt_labels=[],
    )


class BEVDetEager(nn.Module):
    """``forward(images [1, N, 3, H, W], lidar2img [1, N, 4, 4])`` -> the head outputs (tuple in
    :func:`output_names` order) through the model's own ``forward`` (LSS + the ``bev_pool`` dispatch; in
    eval mode the pooling plan is cached while ``lidar2img`` is unchanged). The PyTorch side of checks
    and benchmarks."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.names = output_names(model)

    def forward(self, images: torch.Tensor, lidar2img: torch.Tensor) -> tuple[torch.Tensor, ...]:
        preds, _ = self.model(single_frame_batch(images, lidar2img), None)
        return tuple(preds[n] for n in self.names)


class BEVDetFrame(nn.Module):
    """``forward(images [1, N, 3, H, W])`` -> the head outputs (tuple, :func:`output_names` order) for the
    rig ``lidar2img [1, N, 4, 4]`` baked in at construction (its pooling plan as constants).

    ``dynamic=True``: ``forward(images, lidar2img)`` for any rig instead, the geometry and a scatter_add
    pooling in the graph (:class:`~bevforge.export.dynamic_bev_pool.DynamicBEVPool`); ``lidar2img`` given
    here is then only checked for its shape."""

    def __init__(
        self, model: nn.Module, lidar2img: torch.Tensor, image_hw: tuple[int, int], dynamic: bool = False
    ) -> None:
        super().__init__()
        if lidar2img.dim() != 4 or lidar2img.shape[0] != 1 or lidar2img.shape[-2:] != (4, 4):
            raise ValueError(f"lidar2img must be [1, N, 4, 4] (one rig), got {tuple(lidar2img.shape)}")
        self.model = model
        self.names = output_names(model)
        vt = model.view_transformer
        stride = vt.feat_downsample
        if image_hw[0] % stride or image_hw[1] % stride:
            raise ValueError(
                f"input {image_hw} is not a multiple of model.bevdet.feat_downsample {stride}; "
                "set data.pad_divisor to a multiple of it"
            )
        feat_hw = (image_hw[0] // stride, image_hw[1] // stride)
        self.dynamic = dynamic
        if dynamic:
            self.pool: nn.Module = DynamicBEVPool(vt, feat_hw)
        else:
            cells = vt.cell_index(feat_hw, lidar2img.cpu().float())  # [1, N, D, fH, fW]
            self.pool = StaticBEVPool(plan_bev_pool(cells, vt.bev_h, vt.bev_w))

    def lift(self, feats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``feats [B, N, C_in, fH, fW]`` -> (``depth [B, N, D, fH, fW]`` softmax, ``context [B, N, fH, fW,
        C]``): the depth net of :class:`bevforge.nn.lss.LSSViewTransformer` (the parity tests compare
        the whole graph with the model's own forward, so a change there shows up)."""
        vt = self.model.view_transformer
        num_b, num_n, _, feat_h, feat_w = feats.shape
        x = vt.depth_net(feats.flatten(0, 1))  # [B*N, D + C, fH, fW]
        depth = x[:, : vt.num_depth].softmax(dim=1)  # [B*N, D, fH, fW]
        depth = depth.view(num_b, num_n, vt.num_depth, feat_h, feat_w)  # [B, N, D, fH, fW]
        context = x[:, vt.num_depth :].view(num_b, num_n, vt.context_channels, feat_h, feat_w)
        return depth, context.permute(0, 1, 3, 4, 2)  # [B, N, fH, fW, C]

    def forward(
        self, images: torch.Tensor, lidar2img: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        assert images.dim() == 5, f"images must be [1, N, 3, H, W], got {tuple(images.shape)}"
        assert (lidar2img is not None) == self.dynamic, "lidar2img is an input of the dynamic frame only"
        m = self.model
        depth, context = self.lift(m.extract_features(images))
        extra = (lidar2img,) if self.dynamic else ()
        bev = self.pool(depth, context, *extra)  # [1, C, bev_h, bev_w]
        preds = m.head(m.bev_neck(m.bev_backbone(bev)))
        return tuple(preds[n] for n in self.names)


def example_images(cfg, image_hw: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """``[1, N, 3, H, W]`` random normalised images."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, len(cfg.data.cameras), 3, *image_hw, generator=g)


def export_bevdet_onnx(
    model: nn.Module,
    lidar2img: torch.Tensor,
    images: torch.Tensor,
    out_path: str | Path,
    opset: int = 17,
    dynamic: bool = False,
) -> Path:
    """Trace :class:`BEVDetFrame` (``model`` in eval mode, the rig ``lidar2img``) to ONNX at ``out_path``;
    the rig goes into the graph's metadata (``lidar2img``, JSON). ``dynamic``: the graph takes
    ``(images, lidar2img)`` (:data:`DYNAMIC_INPUT_NAMES`) and works for any rig."""
    import onnx

    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    frame = BEVDetFrame(model, lidar2img, tuple(images.shape[-2:]), dynamic).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            frame,
            (images, lidar2img.float()) if dynamic else (images,),
            str(out_path),
            input_names=list(DYNAMIC_INPUT_NAMES if dynamic else INPUT_NAMES),
            output_names=list(frame.names),
            opset_version=opset,
            dynamo=False,
            do_constant_folding=True,
        )
    graph = onnx.load(str(out_path))
    if not dynamic:
        entry = graph.metadata_props.add()
        entry.key, entry.value = "lidar2img", json.dumps(lidar2img[0].tolist())
    onnx.save(graph, str(out_path))
    return out_path


def run_onnxruntime(
    session, images: torch.Tensor, lidar2img: torch.Tensor | None = None
) -> dict[str, np.ndarray]:
    """The graph's outputs by name from an onnxruntime ``session`` (``lidar2img`` is fed only to a graph
    that takes it: a dynamic-rig export)."""
    feeds = {"images": images.numpy()}
    if "lidar2img" in [i.name for i in session.get_inputs()]:
        if lidar2img is None:
            raise ValueError("this graph takes lidar2img [1, N, 4, 4] (a --dynamic-rig export); pass it")
        feeds["lidar2img"] = lidar2img.float().numpy()
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feeds), strict=True))


def pytorch_outputs(
    model: nn.Module, images: torch.Tensor, lidar2img: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The model's own outputs (its ``forward``) by name."""
    eager = BEVDetEager(model).eval()
    with torch.no_grad():
        return dict(zip(eager.names, eager(images, lidar2img), strict=True))


def compare_with_pytorch(
    model: nn.Module, session, images: torch.Tensor, lidar2img: torch.Tensor
) -> dict[str, float]:
    """Max abs difference per output between onnxruntime and the model's own forward on the rig."""
    got = run_onnxruntime(session, images, lidar2img)
    want = pytorch_outputs(model, images, lidar2img)
    return {n: float(np.abs(got[n] - want[n].numpy()).max()) for n in want}


#: onnxruntime (CPU, fp32) vs PyTorch (CPU, fp32), max abs difference per head output (logits, metres,
#: log sizes); measured <= 3e-6 on the debug recipe (random weights, several images)
ORT_TOLERANCE = 5e-5


def check_rigs(rig: torch.Tensor) -> list[torch.Tensor]:
    """``rig [1, N, 4, 4]``, the rig turned 25 degrees about the lidar z axis, and its principal points
    moved 20 px right: the rigs a dynamic-rig graph is checked on."""
    c, s = math.cos(math.radians(25.0)), math.sin(math.radians(25.0))
    turn = torch.eye(4)
    turn[:2, :2] = torch.tensor([[c, -s], [s, c]])  # lidar -> lidar
    shifted = rig.clone()
    shifted[..., 0, :] += 20.0 * rig[..., 2, :]  # u d += 20 d: u += 20 px
    return [rig, rig @ turn, shifted]


def export_bevdet_recipe(
    cfg,
    checkpoint: str | Path | None,
    out_path: str | Path,
    opset: int = 17,
    raw_wh: tuple[int, int] | None = None,
    check: bool = True,
    lidar2img: torch.Tensor | None = None,
    dynamic: bool = False,
) -> dict:
    """Build the BEVDet recipe's model, load ``checkpoint`` (None: random init), export it for the rig
    ``lidar2img [1, N, 4, 4]`` (None: the nuScenes-like ring of :func:`bevforge.export.rig.rig_lidar2img`)
    and check it with onnxruntime on three random image sets. ``dynamic``: the graph takes the rig as an
    input (:class:`~bevforge.export.dynamic_bev_pool.DynamicBEVPool`), checked on three rigs (this one,
    turned by 25 degrees, principal points moved by 20 pixels).

    Writes ``out_path`` and ``out_path + ".json"`` (names, shapes, the rig, the check); returns the JSON's
    content. ``ValueError`` when onnxruntime disagrees beyond :data:`ORT_TOLERANCE`."""
    from bevforge.export.onnx_model import ort_session
    from bevforge.export.rig import input_hw, rig_lidar2img
    from bevforge.io import atomic_write_json
    from bevforge.models.build import build_model

    model = build_model(cfg).eval()
    if checkpoint is not None:
        from bevforge.eval.pipeline import load_checkpoint

        load_checkpoint(model, checkpoint)
    image_hw = input_hw(cfg, raw_wh)
    rig = rig_lidar2img(cfg, raw_wh) if lidar2img is None else lidar2img.float()
    if rig.shape != (1, len(cfg.data.cameras), 4, 4):
        raise ValueError(f"rig lidar2img {tuple(rig.shape)} is not [1, {len(cfg.data.cameras)}, 4, 4]")
    images = example_images(cfg, image_hw)
    out_path = export_bevdet_onnx(model, rig, images, out_path, opset, dynamic)
    want = pytorch_outputs(model, images, rig)
    info: dict = {
        "config": cfg.name,
        "arch": "bevdet",
        "checkpoint": str(checkpoint) if checkpoint is not None else None,
        "opset": opset,
        "inputs": {"images": list(images.shape)},
        "outputs": {n: list(t.shape) for n, t in want.items()},
    }
    if dynamic:
        info["inputs"]["lidar2img"] = list(rig.shape)
        info["rig"] = {"note": "dynamic: lidar2img is a graph input (geometry and scatter_add pooling)"}
    else:
        info["rig"] = {
            "lidar2img": rig[0].tolist(),
            "note": "the BEV pooling plan of this rig is baked into the graph: valid for this rig only",
        }
    if check:
        session = ort_session(out_path)
        diffs: dict[str, float] = {}
        rigs = check_rigs(rig) if dynamic else [rig] * 3
        for seed, case_rig in enumerate(rigs):
            case = compare_with_pytorch(model, session, example_images(cfg, image_hw, seed), case_rig)
            diffs = {n: max(diffs.get(n, 0.0), v) for n, v in case.items()}
        info["onnxruntime_max_abs_diff"] = diffs
        info["tolerance"] = ORT_TOLERANCE
        if max(diffs.values()) > ORT_TOLERANCE:
            raise ValueError(
                f"{out_path}: onnxruntime differs from PyTorch by {max(diffs.values()):.3g} (> "
                f"{ORT_TOLERANCE}); the export is wrong, please report it with the config"
            )
    atomic_write_json(f"{out_path}.json", info, indent=2)
    return info
