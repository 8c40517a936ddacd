"""Typed configuration: a recipe is a Python function returning a :class:`Config` dataclass tree.

Overrides use dotted keys (``--set train.lr=1e-4 model.bev_h=100``); the value is parsed to the
field's annotated type, and an unknown key fails with a did-you-mean suggestion. The resolved config
is written as JSON into the work dir (:func:`dump_config`).

Every section lives here so a recipe reads top to bottom; modules never receive a config object:
``build_*`` functions read the config and pass primitives (see DESIGN.md, habit 2).
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bevforge.errors import InputError

CAMERAS: tuple[str, ...] = (
    "CAM_FRONT",
    "CAM_FRONT_RIGHT",
    "CAM_FRONT_LEFT",
    "CAM_BACK",
    "CAM_BACK_LEFT",
    "CAM_BACK_RIGHT",
)
#: The 10 nuScenes detection classes in the official BEVFormer order (label index = position).
DET_CLASSES: tuple[str, ...] = (
    "car",
    "truck",
    "construction_vehicle",
    "bus",
    "trailer",
    "barrier",
    "motorcycle",
    "bicycle",
    "pedestrian",
    "traffic_cone",
)
SEG_CLASSES: tuple[str, ...] = ("drivable_area", "ped_crossing", "lane_divider")


@dataclass
class DataConfig:
    """Where the data is and how a sample becomes a tensor."""

    data_root: str = "data/synthetic"  # nuScenes-format root (synthetic or real)
    version: str = "v1.0-mini"
    info_dir: str = "data/synthetic/infos"  # written by `bevforge prepare`
    train_split: str = "train"
    val_split: str = "val"
    cameras: tuple[str, ...] = CAMERAS
    classes: tuple[str, ...] = DET_CLASSES
    point_cloud_range: tuple[float, ...] = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)  # metres, lidar frame
    img_scale: float = 0.5  # resize factor applied to the raw camera images
    pad_divisor: int = 32  # images are padded (bottom/right) to a multiple of this
    img_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)  # in the channel order below
    img_std: tuple[float, float, float] = (58.395, 57.12, 57.375)
    to_rgb: bool = True  # False: BGR order (official small/base)
    queue_length: int = 3  # frames per training sample incl. the current one (official semantics)
    photometric_aug: bool = True
    # training: the loader ships uint8 images (+ each image's photometric draw) and the training step
    # distorts, normalises and zero-pads them on the device (data/device_images.py): a quarter of the bytes
    # through worker IPC, pinning and the host->device copy, and no float passes on the CPU workers
    images_on_device: bool = False
    batch_size: int = 1  # per process
    num_workers: int = 4
    # threads per loader worker decoding an item's T x N images at once (data/nuscenes/decode_pool.py;
    # decoding runs outside the GIL): 0 = one after the other. For a machine with more cores than workers
    decode_threads: int = 0
    image_cache: str = ""  # optional pre-resized uint8 cache built by `bevforge cache`
    with_seg: bool = False  # produce BEV map-segmentation targets
    seg_classes: tuple[str, ...] = SEG_CLASSES
    # -- image-space augmentation per camera, folded into lidar2img (data/augment_image.py, BEVDet) --
    input_size: tuple[int, ...] = ()  # (H, W) final image, e.g. (256, 704): resize+crop; () = img_scale+pad
    img_aug: bool = False  # training: random resize/crop/flip/rotate (input_size () = the img_scale size)
    resize_lim: tuple[float, float] = (-0.06, 0.11)  # added to the base scale input W / raw W (official)
    crop_h_lim: tuple[float, float] = (0.0, 0.0)  # fraction of the resized height cut at the bottom
    rot_lim_deg: tuple[float, float] = (-5.4, 5.4)  # image rotation about the crop centre, degrees
    img_flip: bool = True  # random horizontal flip (p = 0.5) under img_aug
    resize_test: float = 0.0  # added to the base scale in evaluation / without img_aug
    # -- BEV-space augmentation (BDA) per training sample, same for all its frames (data/augment_bev.py) --
    bev_aug: bool = False
    bda_rot_lim_deg: tuple[float, float] = (-22.5, 22.5)  # rotation about lidar z, degrees (official)
    bda_scale_lim: tuple[float, float] = (0.95, 1.05)  # isotropic scale of the lidar frame
    bda_flip_ratio: float = 0.5  # probability of each of the x and y flips


@dataclass
class BackboneConfig:
    depth: int = 50  # 50 or 101 (torchvision ResNet)
    out_indices: tuple[int, ...] = (3,)  # 0..3 = C2..C5
    frozen_stages: int = 1  # stem + first `frozen_stages` stages get no gradient
    norm_eval: bool = True  # BN stays frozen (eval mode) during training
    dcn_stages: tuple[bool, bool, bool, bool] = (False, False, False, False)
    pretrained: str = ""  # "" (random), "torchvision" (local torch cache) or a path to a state dict
    with_cp: bool = False  # activation checkpointing of the backbone's trainable blocks (train.grad_ckpt: on)
    style: str = "pytorch"  # "caffe": stride in the bottleneck's 1x1 conv (official small/base R101-DCN init)
    # DCNv2 op of the dcn_stages convs: "torchvision" (fp32 im2col + GEMM even under autocast) or "sampled"
    # (ops/dcn: one grid_sample + a GEMM in the autocast dtype; same function and state dict; the default:
    # 1.3x the op, 1.10x BEVFormer-base bf16 training and less memory on an H100, benchmarks/results)
    dcn_impl: str = "sampled"
    # each frozen BN (eval mode, affine not training: norm_eval, frozen stages) folded into the conv before it
    # (models/frozen_bn.py): the same function and state dict, one activation fewer kept per conv in training
    # and no BN backward
    fold_bn: bool = True
    # the DCN's offset/mask conv (27 output channels) run zero-padded to 32 (tensor cores tile channels by
    # 8): the same function and state dict; off until a GPU shows it pays (`bevforge bench kernel --shape
    # dcn-stage3` times the two convs)
    dcn_offset_pad: bool = False
    # with fold_bn, on CUDA: each frozen conv -> BN -> ReLU (-> residual add) as one cuDNN call, not a conv
    # plus a broadcast bias pass, a ReLU and an add (models/fused_conv.py; in training with the plain ops'
    # backward); the same function to rounding. Off until a GPU shows it pays (gpu_check's fused rows)
    fuse_conv_relu: bool = False


@dataclass
class NeckConfig:
    out_channels: int = 256
    num_outs: int = 1
    add_extra_convs: bool = True  # extra levels from the last output (official 'on_output')


@dataclass
class BEVDetConfig:
    """BEVDet (Lift-Splat-Shoot view transformer + CenterPoint head); read when ``model.arch == "bevdet"``.

    Image backbone/neck sizes come from ``model.backbone`` / ``model.neck``; ``model.bev_h/bev_w`` are the
    BEV grid over ``data.point_cloud_range``."""

    # -- view transformer + BEV encoder (models/bevdet.py, nn/lss.py) --
    depth_bins: tuple[float, float, float] = (1.0, 60.0, 1.0)  # start, stop, step in metres (official)
    context_channels: int = 64  # official numC_Trans
    feat_downsample: int = 16  # image stride of the features the depth net reads
    bev_backbone_layers: tuple[int, ...] = (2, 2, 2)  # BasicBlocks per BEV stage (official CustomResNet)
    bev_backbone_channels: tuple[int, ...] = ()  # per stage; () = official [2, 4, 8] x context_channels
    # -- CenterPoint head + losses (models/centerpoint_head.py, losses/centerpoint.py) --
    # class groups, one heatmap head each; names from data.classes joined with "+" (official 6 tasks)
    head_tasks: tuple[str, ...] = (
        "car",
        "truck+construction_vehicle",
        "bus+trailer",
        "barrier",
        "motorcycle+bicycle",
        "pedestrian+traffic_cone",
    )
    head_in_channels: int = 256  # channels of the BEV feature the head reads (official FPN_LSS out)
    head_share_channels: int = 64  # official share_conv_channel
    head_channels: int = 64  # official head_conv of each SeparateHead branch
    head_final_kernel: int = 3
    head_init_bias: float = -2.19  # heatmap logit bias at init (sigmoid ~ 0.1)
    head_heatmap_init_std: float = 0.0  # 0: official Kaiming heatmap conv; > 0: N(0, std) (calm start)
    gaussian_overlap: float = 0.1  # CenterPoint gaussian_radius min_overlap
    min_radius: int = 2  # heatmap Gaussian radius floor, cells
    max_objs: int = 500  # regression targets per sample and task
    heatmap_weight: float = 1.0  # Gaussian focal loss weight
    bbox_weight: float = 0.25  # L1 weight on the regression at object centres
    # BEVDepth-style depth supervision (losses/depth.py): BCE of the LSS depth distribution against the
    # one-hot nearest-lidar depth per feature cell (data/depth_targets.py); 0 = off (official BEVDet)
    depth_loss_weight: float = 0.0
    # (reg x, reg y, z, log l, log w, log h, sin, cos, vx, vy)
    head_code_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2)
    score_threshold: float = 0.1  # decode: heatmap score floor before NMS (eval.score_threshold adds to it)
    max_per_task: int = 500  # decode: top-k peaks per task (official bbox_coder max_num)
    pre_max_size: int = 1000  # decode: boxes per task entering rotated NMS
    post_max_size: int = 83  # decode: boxes per task kept by NMS
    nms_type: tuple[str, ...] = ("rotate", "rotate", "rotate", "circle", "rotate", "rotate")  # per task
    nms_thr: tuple[float, ...] = (0.2, 0.2, 0.2, 0.2, 0.2, 0.5)  # per task, BEV IoU ("rotate")
    circle_radius: tuple[float, ...] = (4.0, 12.0, 10.0, 1.0, 0.85, 0.175)  # per task, m^2 ("circle")
    # Scale-NMS: per class (data.classes order) size factor applied only while NMS compares boxes
    nms_rescale_factor: tuple[float, ...] = (1.0, 0.7, 0.7, 0.4, 0.55, 1.1, 1.0, 1.0, 4.5, 9.0)


@dataclass
class ModelConfig:
    arch: str = "bevformer"  # "bevformer" | "bevdet": which model family build_model/build_criterion make
    bevdet: BEVDetConfig = field(default_factory=BEVDetConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    neck: NeckConfig = field(default_factory=NeckConfig)
    embed_dims: int = 256
    ffn_dims: int = 512
    dropout: float = 0.1
    bev_h: int = 50
    bev_w: int = 50
    encoder_layers: int = 3
    num_points_in_pillar: int = 4
    tsa_heads: int = 8
    tsa_points: int = 4
    sca_heads: int = 8
    sca_points: int = 8
    # the SCA's projections and sampling locations recomputed in backward instead of kept (nn/recompute.py):
    # "auto" where the MSDA runs as the kernel (CUDA; ~1.4 GiB less at base), "on", "off"; off for a layer
    # that train.grad_ckpt recomputes whole
    sca_recompute: str = "auto"
    # the same for the TSA (its value projection, offsets, weights, locations; ~54 MiB less per layer)
    tsa_recompute: str = "auto"
    # the SCA as one kernel over the cameras (ops/msda/cameras.py: each BEV query's offsets and weights once,
    # every camera it hits sampled in one program; no per-camera gather/scatter, no host sync, static
    # shapes): "auto" where the MSDA kernel runs, "on" (its reference elsewhere: N times the work), "off"
    sca_fuse_cameras: str = "auto"
    # each encoder layer's FFN recomputed in backward (its input kept): ~0.15 GiB less per layer at base for
    # its two GEMMs again; off for a layer that train.grad_ckpt recomputes whole
    ffn_recompute: bool = False
    decoder_layers: int = 6
    decoder_heads: int = 8
    decoder_points: int = 4
    num_queries: int = 900
    num_classes: int = 10
    use_grid_mask: bool = True
    use_can_bus: bool = True
    use_shift: bool = True
    rotate_prev_bev: bool = True
    official_compat: bool = False  # rotate about (100,100) and in-place shift_ref_2d (released ckpts)
    with_det: bool = True
    with_seg: bool = False
    seg_classes: tuple[str, ...] = SEG_CLASSES
    # training-only CenterPoint heatmap head on the BEV (settings: model.bevdet head_* fields, loss:
    # loss.aux_heatmap_weight): dense supervision that speeds up learning from scratch; not official
    aux_heatmap: bool = False


@dataclass
class LossConfig:
    cls_weight: float = 2.0
    focal_gamma: float = 2.0
    focal_alpha: float = 0.25
    bbox_weight: float = 0.25
    code_weights: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2)
    match_cls_cost: float = 2.0
    match_bbox_cost: float = 0.25
    seg_weight: float = 1.0
    aux_heatmap_weight: float = 1.0  # weight of the auxiliary heatmap loss (model.aux_heatmap)


@dataclass
class TrainConfig:
    epochs: int = 24
    max_iters: int = 0  # >0 stops after this many iterations (debug/benchmarks)
    lr: float = 2e-4
    weight_decay: float = 0.01
    backbone_lr_mult: float = 0.1
    grad_clip: float = 35.0
    warmup_iters: int = 500
    warmup_ratio: float = 1.0 / 3
    min_lr_ratio: float = 1e-3
    accum_steps: int = 1
    amp: str = "auto"  # auto | bf16 | fp16 | off  (auto: bf16 on GPUs that support it, else off)
    # activation checkpointing of the BEV encoder's layers and (as model.backbone.with_cp) the image
    # backbone's trainable blocks: BEVFormer-base keeps ~8 GiB for backward in its backbone, ~4.5 in its
    # encoder (benchmarks/memory_census.py); with_cp alone checkpoints only the backbone
    grad_ckpt: bool = False
    sync_bn: bool = False
    seed: int = 0
    deterministic: bool = False
    log_interval: int = 10
    ckpt_interval: int = 1  # epochs
    keep_last: int = 3
    eval_interval: int = 0  # epochs; 0 = no periodic evaluation
    max_nan_steps: int = 5  # consecutive non-finite steps before stopping
    base_batch_size: int = 8  # global batch size the lr was tuned for (--auto-scale-lr)
    ckpt_iter_interval: int = 0  # >0: also write latest.pth every this many iterations (mid-epoch resume)
    auto_scale_lr: bool = False  # scale lr by global batch / base_batch_size
    find_unused_parameters: bool = False  # DDP; only for models with parameters unused in some steps
    # image backbone + neck (and their input) in channels-last memory format, in training and in
    # `bevforge test` (the DCN then takes its pixel-major columns: ops/dcn/sampled.py)
    channels_last: bool = False
    compile: str = ""  # torch.compile of each model part: "" (off) | default | reduce-overhead | max-autotune
    # BEVFormer's history pass (eval, no grad) captured as a CUDA graph and replayed: no launch cost for a
    # quarter of a base step's operators (models/history_graph.py); CUDA only, not with compile
    history_graph: bool = False
    # the current frame of a BEVFormer training step (backbone, neck, encoder, heads; forward and backward)
    # captured as two CUDA graphs and replayed (models/frame_graph.py): most of the rest of a base step's
    # operators; CUDA, not with compile, SyncBN or gradient accumulation; off until a GPU shows it pays
    frame_graph: bool = False
    tf32: bool = True  # TF32 for fp32 matmuls/convs on CUDA (what autocast leaves in fp32: DCN, losses)


@dataclass
class EvalConfig:
    max_boxes: int = 300
    score_threshold: float = 0.0
    post_center_range: tuple[float, ...] = (-61.2, -61.2, -10.0, 61.2, 61.2, 10.0)
    # BEVFormer inference frames replayed as a CUDA graph (models/infer_graph.py: no per-kernel launch cost,
    # which dominates batch-1 inference on an H100/H200); CUDA only, the same numbers as eager frames
    cuda_graph: bool = False


@dataclass
class Config:
    name: str = "unnamed"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    load_from: str = ""  # checkpoint to initialise from (not a resume)


# --------------------------------------------------------------------------------------------------
# overrides


class ConfigError(InputError, ValueError):
    """A config key or value is wrong; the message names it and the fix."""


def _field_types(obj: Any) -> dict[str, Any]:
    return typing.get_type_hints(type(obj))


def _parse_scalar(text: str, typ: Any, key: str) -> Any:
    if typ is bool:
        low = text.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{key}: expected a bool (true/false), got {text!r}")
    if typ is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"{key}: expected an int, got {text!r}") from None
    if typ is float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"{key}: expected a float, got {text!r}") from None
    if typ is str:
        return text
    raise ConfigError(f"{key}: cannot parse values of type {typ!r}")


def parse_value(text: str, typ: Any, key: str) -> Any:
    """Parse the command-line string ``text`` into ``typ`` (int/float/bool/str/tuple[...])."""
    origin = typing.get_origin(typ)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if text.strip().lower() in ("none", "null"):
            return None
        return parse_value(text, args[0], key)
    if origin is tuple:
        args = typing.get_args(typ)
        body = text.strip()
        if body.startswith(("(", "[")):
            body = body[1:-1]
        parts = [p.strip() for p in body.split(",") if p.strip()]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_parse_scalar(p, args[0], key) for p in parts)
        if len(parts) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} comma-separated values, got {text!r}")
        return tuple(_parse_scalar(p, a, key) for p, a in zip(parts, args, strict=True))
    return _parse_scalar(text, typ, key)


def _did_you_mean(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=3, cutoff=0.5)
    if close:
        return f" Did you mean: {', '.join(close)}?"
    if not options:
        return " There is nothing to choose from."
    return f" Valid choices: {', '.join(sorted(options))}."


def all_keys(cfg: Any, prefix: str = "") -> list[str]:
    """Every dotted leaf key of a config tree."""
    keys: list[str] = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            keys += all_keys(value, f"{prefix}{f.name}.")
        else:
            keys.append(f"{prefix}{f.name}")
    return keys


def apply_override(cfg: Config, assignment: str) -> None:
    """Apply one ``a.b.c=value`` override in place."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like key=value (e.g. train.lr=1e-4)")
    key, text = assignment.split("=", 1)
    key = key.strip()
    node: Any = cfg
    parts = key.split(".")
    for depth, part in enumerate(parts):
        names = [f.name for f in dataclasses.fields(node)]
        if part not in names:
            scope = ".".join(parts[:depth])
            full = [f"{scope}.{n}" if scope else n for n in names]
            suggestions = difflib.get_close_matches(key, all_keys(cfg), n=3, cutoff=0.6)
            hint = f" Did you mean: {', '.join(suggestions)}?" if suggestions else _did_you_mean(part, full)
            raise ConfigError(f"unknown config key {key!r}.{hint}")
        if depth == len(parts) - 1:
            typ = _field_types(node)[part]
            if dataclasses.is_dataclass(getattr(node, part)):
                raise ConfigError(f"{key} is a section; set one of its fields, e.g. {key}.<field>=...")
            setattr(node, part, parse_value(text, typ, key))
        else:
            node = getattr(node, part)
            if not dataclasses.is_dataclass(node):
                raise ConfigError(f"{'.'.join(parts[: depth + 1])} is a value, not a section")


def apply_overrides(cfg: Config, assignments: list[str] | None) -> Config:
    for a in assignments or []:
        apply_override(cfg, a)
    return cfg


# --------------------------------------------------------------------------------------------------
# recipes


def configs_dir() -> Path:
    """The repository's ``configs/`` folder (recipes), also found from an installed package."""
    env = os.environ.get("BEVFORGE_CONFIGS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "configs"


def list_recipes() -> list[str]:
    return sorted(p.stem for p in configs_dir().glob("*.py") if not p.name.startswith("_"))


def load_config(name_or_path: str, overrides: list[str] | None = None) -> Config:
    """Load a recipe by name (``bevformer_tiny``) or path (``configs/bevformer_tiny.py``).

    A recipe file defines ``def config() -> Config``.
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = configs_dir() / f"{name_or_path}.py"
    if not path.exists():
        hint = _did_you_mean(path.stem, list_recipes())
        raise ConfigError(f"config {name_or_path!r} not found (looked at {path}).{hint}")
    spec = importlib.util.spec_from_file_location(f"bevforge_recipe_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "config"):
        raise ConfigError(f"{path} defines no `config()` function returning a bevforge Config")
    cfg = module.config()
    if not isinstance(cfg, Config):
        raise ConfigError(f"{path}: config() returned {type(cfg).__name__}, expected bevforge.config.Config")
    return apply_overrides(cfg, overrides)


def config_to_dict(cfg: Any) -> dict[str, Any]:
    def convert(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: convert(x) for k, x in v.items()}
        if isinstance(v, tuple | list):
            return [convert(x) for x in v]
        return v

    return convert(dataclasses.asdict(cfg))


def config_from_dict(data: dict[str, Any], cls: type = Config) -> Any:
    """Rebuild a config tree from :func:`config_to_dict` output (lists become tuples)."""
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    names = {f.name for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if key not in names:
            hint = _did_you_mean(key, list(names))
            raise ConfigError(f"unknown config key {key!r} for {cls.__name__}.{hint}")
        typ = hints[key]
        if dataclasses.is_dataclass(typ):
            kwargs[key] = config_from_dict(value, typ)
        elif isinstance(value, list):
            kwargs[key] = tuple(value)
        else:
            kwargs[key] = value
    return cls(**kwargs)


def dump_config(cfg: Config, path: str | Path) -> Path:
    """Write the resolved config as JSON, atomically."""
    from bevforge.io import atomic_write_text

    return atomic_write_text(path, json.dumps(config_to_dict(cfg), indent=2, sort_keys=False) + "\n")
