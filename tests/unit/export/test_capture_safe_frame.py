"""The BEVFormer inference frame is capturable as a CUDA graph: after one warm-up call it makes no
copy between host and device and reads nothing back to the host.

Both break a capture on CUDA ("Cannot copy between CPU and CUDA tensors during CUDA graph capture", a
sync). Checked here without a GPU: the model runs on the meta device (no compute, so the base recipe at
full size costs nothing) under a dispatch mode that records every copy between a CPU tensor and another
device (also inside ``torch.tensor``-like constructors) and every ``item()``/``tolist()`` read; the SCA
is put on the path it takes under capture.
"""

from __future__ import annotations

import traceback
from contextlib import nullcontext, suppress

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import bevforge.nn.recompute as recompute_module
import bevforge.nn.spatial_cross_attn as sca_module
from bevforge.bench import infer
from bevforge.config import load_config
from bevforge.models.build import build_model


class HostTraffic(TorchDispatchMode):
    """Records host->device copies and host reads (with the caller's line) of the ops it sees.

    Tensors built from Python data (``torch.tensor``, ``torch.as_tensor``, ``Tensor.new_tensor``) on a
    device are copied over inside the constructor, below the dispatch modes: :meth:`watch_constructors`
    wraps them to record those too (on CUDA each is a host->device copy)."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []
        self.active = False

    def __enter__(self):
        self.active = True
        return super().__enter__()

    def __exit__(self, *exc):
        self.active = False
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func)
        if name.startswith("aten._local_scalar_dense"):
            self._record(f"host read {name}")
        elif name.startswith(("aten._to_copy", "aten.copy_")):
            src, dst = (args[1], args[0].device) if name.startswith("aten.copy_") else (args[0], None)
            dst = torch.device(dst or kwargs.get("device") or src.device)
            if (src.device.type == "cpu") != (dst.type == "cpu"):
                way = "host->device" if src.device.type == "cpu" else "device->host"
                self._record(f"{way} {name} {tuple(src.shape)}")
        return func(*args, **kwargs)

    def watch_constructors(self, monkeypatch: pytest.MonkeyPatch) -> None:
        def wrap(real, name, device_of_self=False):
            def constructor(*args, **kwargs):
                data = args[1] if device_of_self else args[0]
                device = kwargs.get("device") or (args[0].device if device_of_self else None)
                on_device = device is not None and torch.device(device).type != "cpu"
                if self.active and on_device and not isinstance(data, torch.Tensor):
                    self._record(f"host->device {name} from Python data")
                return real(*args, **kwargs)

            return constructor

        monkeypatch.setattr(torch, "tensor", wrap(torch.tensor, "torch.tensor"))
        monkeypatch.setattr(torch, "as_tensor", wrap(torch.as_tensor, "torch.as_tensor"))
        monkeypatch.setattr(torch.Tensor, "new_tensor", wrap(torch.Tensor.new_tensor, "new_tensor", True))

    def _record(self, what: str) -> None:
        stack = [f for f in traceback.extract_stack() if "/bevforge/" in f.filename]
        where = stack[-1] if stack else None
        self.events.append(f"{what} at {where.filename}:{where.lineno}" if where else what)


def _meta_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SCA and the recompute regions on their capture paths, and autocast off on the meta device (it
    knows no such device type)."""
    monkeypatch.setattr(sca_module, "capturing_cuda_graph", lambda: True)
    monkeypatch.setattr(recompute_module, "capturing_cuda_graph", lambda: True)
    real_enabled, real_autocast = torch.is_autocast_enabled, torch.autocast

    def autocast(dev, *a, **k):
        return nullcontext() if dev == "meta" else real_autocast(dev, *a, **k)

    def is_autocast_enabled(*a):
        return False if a and a[0] == "meta" else real_enabled(*a)

    monkeypatch.setattr(torch, "is_autocast_enabled", is_autocast_enabled)
    monkeypatch.setattr(torch, "autocast", autocast)


def _seed_hit_bound(model, cfg, monkeypatch: pytest.MonkeyPatch) -> list:
    """What an eager warm-up teaches the first SCA on a GPU (meta tensors cannot be read back): a static
    hit bound for batch 1, so the probe takes the bounded gather a capture takes. Returns the list of the
    plans' ``max_len`` arguments, filled as they are built."""
    m = cfg.model
    key = (1, len(cfg.data.cameras), m.bev_h * m.bev_w, torch.device("meta"))
    flag = torch.zeros((), dtype=torch.bool, device="meta")
    model.encoder.layers[0].spatial_attn.hit_bounds[key] = (key[2] // 2, flag)
    bounds, real = [], sca_module.plan_spatial_cross_attention
    monkeypatch.setattr(
        sca_module,
        "plan_spatial_cross_attention",
        lambda *a: bounds.append(a[3] if len(a) > 3 else None) or real(*a),
    )
    return bounds


def _meta_model(
    recipe: str, bounded: bool, monkeypatch: pytest.MonkeyPatch, training: bool, overrides: tuple = ()
):
    """``(cfg, model on the meta device in the mode, the plans' max_len list)`` with the SCA on its capture
    path (bounded: as after an eager warm-up on a GPU)."""
    _meta_device(monkeypatch)
    cfg = load_config(recipe, ["model.backbone.pretrained=", *overrides])
    torch.manual_seed(0)
    model = build_model(cfg).train(training).to("meta")
    return cfg, model, _seed_hit_bound(model, cfg, monkeypatch) if bounded else []


@pytest.mark.parametrize("bounded", [False, True], ids=["all-queries", "bounded-sca"])
@pytest.mark.parametrize("recipe", ["bevformer_debug", "bevformer_base", "bevformer_tiny_seg"])
def test_inference_frame_has_no_host_traffic_after_warmup(recipe, bounded, monkeypatch):
    cfg, model, bounds = _meta_model(recipe, bounded, monkeypatch, training=False)
    frame, inputs = infer.frame_and_inputs(cfg, model, None)
    inputs = tuple(t.to("meta") for t in inputs)
    traffic = HostTraffic()
    traffic.watch_constructors(monkeypatch)
    with torch.no_grad():
        frame(*inputs)  # warm-up: device constants are copied once here
        with traffic:
            out = frame(*inputs)
    assert all(t.device.type == "meta" for t in out)
    assert traffic.events == [], "\n".join(traffic.events)
    assert not bounded or bounds == [cfg.model.bev_h * cfg.model.bev_w // 2] * 2, bounds


@pytest.mark.parametrize("bounded", [False, True], ids=["all-queries", "bounded-sca"])
@pytest.mark.parametrize("recipe", ["bevformer_debug", "bevformer_base"])
def test_history_pass_has_no_host_traffic_after_warmup(recipe, bounded, monkeypatch):
    """train.history_graph captures models/history_graph.history_bev: capturable the same way (two history
    frames, the first without a previous BEV)."""
    from bevforge.models.history_graph import history_bev

    cfg, model, bounds = _meta_model(recipe, bounded, monkeypatch, training=False)
    _, (images, _, _, can_bus, lidar2img) = infer.frame_and_inputs(cfg, model, None)
    images = torch.stack([images, images], 1).to("meta")  # [1, 2, N, 3, H, W]
    lidar2img = torch.stack([lidar2img, lidar2img], 1).to("meta")  # [1, 2, N, 4, 4]
    can_bus = torch.stack([can_bus, can_bus], 1).to("meta")  # [1, 2, 18]
    exists = torch.tensor([[False, True]], device="meta")
    pad_hw = (int(images.shape[-2]), int(images.shape[-1]))
    traffic = HostTraffic()
    traffic.watch_constructors(monkeypatch)
    with torch.no_grad():
        history_bev(model, images, lidar2img, can_bus, exists, pad_hw)  # warm-up
        with traffic:
            bev = history_bev(model, images, lidar2img, can_bus, exists, pad_hw)
    m = cfg.model
    assert bev.device.type == "meta" and bev.shape == (1, m.bev_h * m.bev_w, m.embed_dims)
    assert traffic.events == [], "\n".join(traffic.events)
    assert not bounded or bounds == [m.bev_h * m.bev_w // 2] * 4, bounds  # 2 frames, 2 passes


def test_probe_sees_host_copies(monkeypatch):
    """The probe is not blind: constants built per call, each way, are reported; device work is not."""
    traffic = HostTraffic()
    traffic.watch_constructors(monkeypatch)
    x = torch.zeros(3, device="meta")
    with traffic:
        _ = x + torch.tensor([1.0, 2.0, 3.0]).to("meta")
        _ = x + torch.tensor([1.0, 2.0, 3.0], device="meta")
        _ = x + torch.as_tensor([1.0, 2.0, 3.0], device=x.device)
        _ = x + x.new_tensor([1.0, 2.0, 3.0])
        _ = x + torch.full((3,), 2.0, device="meta") + torch.arange(3, device="meta")
        with suppress(NotImplementedError):  # recorded, then meta has no data to copy out
            _ = x.cpu()
    assert [e.split()[0] for e in traffic.events] == ["host->device"] * 4 + ["device->host"], traffic.events


@pytest.mark.parametrize("bounded", [False, True], ids=["all-queries", "bounded-sca"])
@pytest.mark.parametrize("recipe", ["bevformer_debug", "bevformer_base"])
def test_training_frame_has_no_host_traffic_after_warmup(recipe, bounded, monkeypatch):
    """train.frame_graph captures models/frame_graph.frame_preds forward and backward, in training mode:
    capturable the same way (dropout, the trained convs' weight folds, every backward, the SCA's and TSA's
    recompute regions replayed in backward without the RNG state, the FFN kept)."""
    from bevforge.models.frame_graph import frame_preds

    recompute = ("model.sca_recompute=on", "model.tsa_recompute=on", "model.ffn_recompute=true")
    cfg, model, bounds = _meta_model(recipe, bounded, monkeypatch, training=True, overrides=recompute)
    regions = []
    real_checkpoint = recompute_module.checkpoint
    monkeypatch.setattr(
        recompute_module, "checkpoint", lambda *a, **k: regions.append((a[0], k)) or real_checkpoint(*a, **k)
    )
    _, (images, prev_bev, exists, can_bus, lidar2img) = infer.frame_and_inputs(cfg, model, None)
    model.train()  # the inference wrapper put it in eval mode
    images, prev_bev, exists, can_bus, lidar2img = (
        t.to("meta") for t in (images, prev_bev, exists, can_bus, lidar2img)
    )
    pad_hw = (int(images.shape[-2]), int(images.shape[-1]))
    args = (images.flatten(0, 1), lidar2img, can_bus, prev_bev, exists, pad_hw, images.shape[1])
    params = [p for p in model.parameters() if p.requires_grad]

    def step() -> dict:
        preds = frame_preds(model, *args)
        loss = sum(v.float().sum() for v in preds.values())
        torch.autograd.grad(loss, params, allow_unused=True)  # as make_graphed_callables captures it
        return preds

    traffic = HostTraffic()
    traffic.watch_constructors(monkeypatch)
    step()  # warm-up: device constants are copied once here
    with traffic:
        preds = step()
    assert preds["bev"].device.type == "meta" and {"cls_logits", "box_code"} <= preds.keys()
    assert traffic.events == [], "\n".join(traffic.events)
    assert not bounded or bounds == [cfg.model.bev_h * cfg.model.bev_w // 2] * 2, bounds
    layers = cfg.model.encoder_layers
    assert len(regions) == 2 * 2 * layers, "each step: every layer's SCA and TSA, not the FFN (dropout)"
    assert not any(k["preserve_rng_state"] for _, k in regions)
