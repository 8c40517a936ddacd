"""The BEVFormer inference frame is capturable as a CUDA graph: after one warm-up call it makes no
host->device copy and reads nothing back to the host.

Both break a capture on CUDA ("Cannot copy between CPU and CUDA tensors during CUDA graph capture", a
sync). Checked here without a GPU: the model runs on the meta device (no compute, so the base recipe at
full size costs nothing) under a dispatch mode that records every copy from a CPU tensor to another
device and every ``item()``/``tolist()`` read; the SCA is put on the path it takes under capture.
"""

from __future__ import annotations

import traceback
from contextlib import nullcontext

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import bevforge.nn.spatial_cross_attn as sca_module
from bevforge.bench import infer
from bevforge.config import load_config
from bevforge.models.build import build_model


class HostTraffic(TorchDispatchMode):
    """Records host->device copies and host reads (with the caller's stack) of the ops it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func)
        if name.startswith("aten._local_scalar_dense"):
            self._record(f"host read {name}")
        elif name.startswith("aten._to_copy"):
            dst = torch.device(kwargs.get("device") or args[0].device)
            if args[0].device.type == "cpu" and dst.type != "cpu":
                self._record(f"host->device {name} {tuple(args[0].shape)}")
        elif name.startswith("aten.copy_") and args[1].device.type == "cpu" and args[0].device.type != "cpu":
            self._record(f"host->device {name} {tuple(args[1].shape)}")
        return func(*args, **kwargs)

    def _record(self, what: str) -> None:
        stack = [f for f in traceback.extract_stack() if "/bevforge/" in f.filename]
        where = stack[-1] if stack else None
        self.events.append(f"{what} at {where.filename}:{where.lineno}" if where else what)


@pytest.mark.parametrize("recipe", ["bevformer_debug", "bevformer_base"])
def test_inference_frame_has_no_host_traffic_after_warmup(recipe, monkeypatch):
    monkeypatch.setattr(sca_module, "capturing_cuda_graph", lambda: True)  # the SCA's capture path
    real_enabled, real_autocast = torch.is_autocast_enabled, torch.autocast

    def autocast(dev, *a, **k):  # autocast knows no meta device type: off there
        return nullcontext() if dev == "meta" else real_autocast(dev, *a, **k)

    def is_autocast_enabled(*a):
        return False if a and a[0] == "meta" else real_enabled(*a)

    monkeypatch.setattr(torch, "is_autocast_enabled", is_autocast_enabled)
    monkeypatch.setattr(torch, "autocast", autocast)
    cfg = load_config(recipe, ["model.backbone.pretrained="])
    torch.manual_seed(0)
    model = build_model(cfg).eval().to("meta")
    frame, inputs = infer.frame_and_inputs(cfg, model, None)
    inputs = tuple(t.to("meta") for t in inputs)
    with torch.no_grad():
        frame(*inputs)  # warm-up: device constants are copied once here
        traffic = HostTraffic()
        with traffic:
            out = frame(*inputs)
    assert all(t.device.type == "meta" for t in out)
    assert traffic.events == [], "\n".join(traffic.events)


def test_probe_sees_a_host_copy():
    """The probe is not blind: a constant built per call is reported."""
    traffic = HostTraffic()
    x = torch.zeros(3, device="meta")
    with traffic:
        _ = x + torch.tensor([1.0, 2.0, 3.0]).to("meta")
    assert len(traffic.events) == 1 and traffic.events[0].startswith("host->device")
