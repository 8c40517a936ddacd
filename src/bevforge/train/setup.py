"""Run set-up helpers of the trainer: seeding, determinism, building and wrapping the parts."""

from __future__ import annotations

import contextlib
import os
import random
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from bevforge.config import Config, ConfigError, DataConfig, TrainConfig
from bevforge.data.device_images import finish_images
from bevforge.train.checkpoint import CheckpointError, load_checkpoint, model_state_from
from bevforge.train.distributed import DistInfo


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed python, numpy and torch (all devices); ``deterministic`` also fixes the kernel choice."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    else:
        torch.backends.cudnn.benchmark = True


def set_tf32(enabled: bool) -> None:
    """TF32 tensor cores for fp32 matmuls and convolutions (``train.tf32``; Ampere and newer GPUs only).

    Ops that autocast keeps in fp32 (torchvision's ``deform_conv2d`` with its im2col GEMMs, the losses)
    otherwise run as SIMT fp32 GEMMs: a quarter of a BEVFormer-base bf16 training step on an H100
    (benchmarks/results/profile.md).
    """
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


@contextlib.contextmanager
def backend_switches() -> Iterator[None]:
    """Give back on exit the process-wide switches a run sets (determinism, cuDNN autotuning, TF32), so
    an in-process caller (a test, the demo's evaluation after its training) finds them as it left them."""
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
        torch.backends.cudnn.deterministic,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    )
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[2], saved[3]
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[4], saved[5]


@contextlib.contextmanager
def inference_backends(tc: TrainConfig) -> Iterator[None]:
    """Inside: the kernel choices training makes, for inference (``bevforge test``/``eval``, ``bench
    infer``): TF32 as ``train.tf32``, and cuDNN's autotuned convolution algorithms (``cudnn.benchmark``;
    a recipe's fixed input size pays the tuning once, in the first frames) unless
    ``train.deterministic``. PyTorch's default is cuDNN's heuristic pick, which can be far from the
    fastest for the large channels-last bf16 convs of a 6-camera R101. Switches given back on exit."""
    with backend_switches():
        set_tf32(tc.tf32)
        torch.backends.cudnn.benchmark = not tc.deterministic
        yield


def build_parts(
    cfg: Config,
    dist_info: DistInfo,
    model: nn.Module | None,
    criterion: nn.Module | None,
    train_loader: DataLoader | Callable[[], DataLoader] | None,
) -> tuple[nn.Module, nn.Module, DataLoader]:
    """Model, criterion and training loader from the config unless given (tests, custom scripts)."""
    if model is None:
        from bevforge.models.build import build_model

        model = build_model(cfg)
    if criterion is None:
        from bevforge.losses.build import build_criterion

        criterion = build_criterion(cfg)
    if train_loader is None:
        from bevforge.data.loader import build_dataloader

        loader = build_dataloader(cfg, cfg.data.train_split, train=True, distributed=dist_info.distributed)
    elif callable(train_loader) and not isinstance(train_loader, DataLoader):
        loader = train_loader()
    else:
        loader = train_loader
    return model, criterion, loader


def load_weights(model: nn.Module, path: str | Path) -> tuple[list[str], list[str]]:
    """``--load-from``: initialise weights (not a resume); returns (missing, unexpected) key lists."""
    ckpt = load_checkpoint(path)
    state = model_state_from(ckpt, path)
    own = model.state_dict()
    shape_mismatch = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    if shape_mismatch:
        raise CheckpointError(
            f"{path}: {len(shape_mismatch)} tensors have other shapes than the model "
            f"(first: {shape_mismatch[0]} {tuple(state[shape_mismatch[0]].shape)} vs "
            f"{tuple(own[shape_mismatch[0]].shape)}); was it trained with another recipe? "
            "Convert official checkpoints with bevforge.models.checkpoint_adapter first."
        )
    result = model.load_state_dict(state, strict=False)
    return list(result.missing_keys), list(result.unexpected_keys)


def unused_parameters(
    model: nn.Module,
    criterion: nn.Module,
    loader: DataLoader,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    data_cfg: DataConfig | None = None,
) -> list[str]:
    """Trainable parameters that get no gradient from one probe step (first batch, no update; its uint8
    images finished as in training when ``data_cfg`` is given: ``data.images_on_device``).

    RNG states and buffers (BatchNorm statistics) are restored afterwards, so the run is unchanged.
    """
    from bevforge.train.checkpoint import get_rng_state, set_rng_state
    from bevforge.train.step import to_fp32

    rng = get_rng_state(device)
    buffers = {k: v.detach().clone() for k, v in model.named_buffers()}
    try:
        assert loader.batch_sampler is not None
        indices = next(iter(loader.batch_sampler))
        batch = loader.collate_fn([loader.dataset[i] for i in indices]).to(device)
        if data_cfg is not None:
            batch = finish_images(batch, data_cfg)
        was_training = model.training
        model.train()
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            preds, _ = model(batch, None)  # the same precision as training (memory)
        criterion.to(device)(to_fp32(preds), batch.gt_boxes, batch.gt_labels, batch.seg_target)[
            "loss"
        ].backward()
        model.train(was_training)
        unused = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    finally:
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            for k, v in model.named_buffers():
                v.copy_(buffers[k])
        set_rng_state(rng, device)
    return unused


def wrap_model(
    model: nn.Module,
    cfg: Config,
    dist_info: DistInfo,
    warn: Callable[[str], None],
    probe: Callable[[nn.Module], list[str]] | None = None,
) -> nn.Module:
    """Move to the device, the speed options (:func:`apply_speed_options`), SyncBN (GPU only) and DDP
    when distributed.

    ``find_unused_parameters`` is turned on only if needed: ``probe(model)`` lists parameters without
    gradient (every rank must agree, so the decision is all-reduced).
    """
    if (
        cfg.train.frame_graph
        and cfg.train.sync_bn
        and dist_info.distributed
        and dist_info.device.type == "cuda"
    ):
        raise ConfigError(
            "train.frame_graph with train.sync_bn: SyncBatchNorm all-reduces inside the captured forward "
            "(collectives in a CUDA graph: untested); set one of them false"
        )
    model = apply_speed_options(model.to(dist_info.device), cfg.train)
    if not dist_info.distributed:
        return model
    find_unused = cfg.train.find_unused_parameters
    unused: list[str] = []  # this rank's probe: parameters without a gradient
    if not find_unused and probe is not None:
        unused = probe(model)
        flag = torch.tensor([1 if unused else 0], device=dist_info.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        find_unused = bool(flag.item())
        if unused:
            warn(
                f"{len(unused)} trainable parameters get no gradient (e.g. {unused[0]}): DDP runs with "
                "find_unused_parameters=True (slower); freeze them (requires_grad=False) to avoid it"
            )
    if cfg.train.frame_graph and find_unused:  # DDP's search runs on the forward's autograd graph
        raise ConfigError(
            "train.frame_graph under DDP needs a gradient for every trained parameter: a graphed backward "
            "hands all gradients over at once, past DDP's search for unused parameters "
            f"(find_unused_parameters{f', e.g. {unused[0]}' if unused else ''}). Freeze the "
            "parameters that get none (requires_grad=False) or set train.frame_graph=false"
        )
    if cfg.train.sync_bn:
        if dist_info.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            warn("--sync-bn needs CUDA devices; keeping per-process BatchNorm on the CPU")
    device_ids = [dist_info.device.index] if dist_info.device.type == "cuda" else None
    # gradient_as_bucket_view: the gradients live in DDP's all-reduce buckets (no copy of every gradient
    # into them after each backward, no second gradient-sized buffer)
    return nn.parallel.DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=find_unused, gradient_as_bucket_view=True
    )


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


COMPILE_MODES = ("", "default", "reduce-overhead", "max-autotune")
#: the image parts put in channels-last (every model family names them so)
IMAGE_PARTS = ("backbone", "neck")


def _to_channels_last(module: nn.Module, args: tuple) -> tuple:
    """Forward pre-hook: 4-d tensor inputs ``[B*, C, H, W]`` in channels-last memory format."""
    return tuple(
        a.contiguous(memory_format=torch.channels_last) if isinstance(a, torch.Tensor) and a.dim() == 4 else a
        for a in args
    )


def channels_last_(model: nn.Module) -> nn.Module:
    """``model.backbone`` / ``model.neck`` weights (4-d only) and the backbone's 4-d input (a forward
    pre-hook) in channels-last memory format, in place. Raises ``ConfigError`` without either part."""
    parts = [
        getattr(model, name) for name in IMAGE_PARTS if isinstance(getattr(model, name, None), nn.Module)
    ]
    if not parts:
        raise ConfigError(
            f"train.channels_last=true needs a model with a {' or '.join(IMAGE_PARTS)} module; "
            f"{type(model).__name__} has neither (set train.channels_last=false)"
        )
    for part in parts:
        part.to(memory_format=torch.channels_last)  # type: ignore[call-arg]  # 4-d weights only
    parts[0].register_forward_pre_hook(_to_channels_last)
    return model


def _check_graph_option(model: nn.Module, tc: TrainConfig, option: str) -> None:
    """``train.<option>`` (a CUDA-graph holder) fits ``model`` and the other options, else a ConfigError."""
    if tc.compile:
        raise ConfigError(
            f"train.{option} and train.compile both capture graphs: set one (compile mode reduce-overhead "
            "graphs every part)"
        )
    if not hasattr(model, option):
        raise ConfigError(f"train.{option} is for BEVFormer models, not {type(model).__name__}")


def apply_speed_options(model: nn.Module, tc: TrainConfig) -> nn.Module:
    """``train.channels_last``, ``train.history_graph``, ``train.frame_graph`` and ``train.compile``, in
    place (parameter names and state dict unchanged).

    channels_last: the model's ``backbone`` and ``neck`` weights (and the backbone's input, by a forward
    pre-hook) in channels-last format; the neck outputs stay channels-last, which the encoder's
    ``flatten(3).transpose(2, 3)`` reads without a copy.

    history_graph: BEVFormer's history pass replayed as a CUDA graph (:mod:`bevforge.models.history_graph`).

    frame_graph: BEVFormer's current frame, forward and backward, replayed as CUDA graphs
    (:mod:`bevforge.models.frame_graph`).

    compile: ``nn.Module.compile(mode=...)`` of every direct child with parameters (backbone, neck,
    encoder, heads; BEVDet's view transformer, BEV backbone, head), not of the whole model: the model's
    ``forward`` handles ``Batch`` / ``TemporalState`` objects and scene-token strings (a recompile per
    new set of tokens: 6 graph breaks on the debug recipe, all in that bookkeeping); each part traces as
    one graph with no break (``bevforge bench train CONFIG --explain``; under compile the SCA attends every
    query instead of reading ``max_len`` back).
    """
    if tc.compile not in COMPILE_MODES:
        raise ConfigError(
            f"train.compile={tc.compile!r} is not one of '' (off), default, reduce-overhead, max-autotune"
        )
    if tc.channels_last:
        channels_last_(model)
    for option in ("history_graph", "frame_graph"):
        if getattr(tc, option):
            _check_graph_option(model, tc, option)
    if tc.frame_graph and tc.accum_steps > 1:  # the parameters' .grad alias the graph's gradient buffers
        raise ConfigError(
            "train.frame_graph cannot accumulate gradients (train.accum_steps > 1): each backward replay "
            "rewrites the buffers the parameters' gradients live in; set accum_steps=1 or frame_graph=false"
        )
    if tc.history_graph:
        from bevforge.models.history_graph import HistoryGraph

        model.history_graph = HistoryGraph()
    if tc.frame_graph:
        from bevforge.models.frame_graph import FrameGraph

        model.frame_graph = FrameGraph()
    if tc.compile:
        from bevforge.ops.dispatch import prime_kernel_ops

        prime_kernel_ops()  # no first import inside the traced forward (a graph break)
        for child in model.children():
            if any(True for _ in child.parameters()):
                child.compile(mode=tc.compile)
    return model
