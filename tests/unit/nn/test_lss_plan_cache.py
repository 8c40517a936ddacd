"""LSS view transformer: the eval-mode bev_pool plan cache gives the uncached result and follows lidar2img."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from bevforge.nn.lss import LSSViewTransformer

sys.path.insert(0, str(Path(__file__).parents[1] / "models"))
from models_test_rig import ring_lidar2img  # noqa: E402


def _vt() -> LSSViewTransformer:
    return LSSViewTransformer(8, 6, (1.0, 30.0, 2.0), 16, (-40.0, -40.0, -5.0, 40.0, 40.0, 3.0), 16, 24)


def _count_plans(monkeypatch) -> list[int]:
    import bevforge.ops.bev_pool as bev_pool_module

    calls = [0]
    real = bev_pool_module.plan_bev_pool

    def counting(*args, **kwargs):
        calls[0] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(bev_pool_module, "plan_bev_pool", counting)
    return calls


def test_lss_plan_cache_equals_uncached_and_invalidates(monkeypatch):
    torch.manual_seed(0)
    vt = _vt().eval()
    calls = _count_plans(monkeypatch)
    fh, fw = 4, 6
    feats = torch.randn(2, 3, 8, fh, fw)
    rig = ring_lidar2img(3, h=fh * 16, w=fw * 16)[None].repeat(2, 1, 1, 1)  # [B, N, 4, 4]
    with torch.no_grad():
        first, _ = vt(feats, rig)
        again, _ = vt(torch.randn_like(feats), rig.clone())  # other features, an equal (not the same) rig
        cached, _ = vt(feats, rig)
    assert calls[0] == 1  # planned once, then reused
    torch.testing.assert_close(cached, first, rtol=0, atol=0)
    assert not torch.equal(again, first)

    moved = rig.clone()
    moved[1, 0, 0] += 40.0 * moved[1, 0, 2]  # one camera's principal point moves 40 px: other cells
    with torch.no_grad():
        out_moved, _ = vt(feats, moved)
    assert calls[0] == 2  # the cache followed lidar2img
    uncached = _vt().eval()
    uncached.load_state_dict(vt.state_dict())
    with torch.no_grad():
        want_moved, _ = uncached.train()(feats, moved)  # training mode: never cached
        want_first, _ = uncached(feats, rig)
    torch.testing.assert_close(out_moved, want_moved, rtol=0, atol=0)
    assert not torch.equal(out_moved, first)
    torch.testing.assert_close(first, want_first, rtol=0, atol=0)
    assert calls[0] == 4  # training mode planned both times

    with torch.no_grad():
        vt(feats[:1], rig[:1])  # another batch size: another plan
    assert calls[0] == 5


def test_lss_plan_cache_off_in_training(monkeypatch):
    torch.manual_seed(0)
    vt = _vt().train()
    calls = _count_plans(monkeypatch)
    feats = torch.randn(1, 2, 8, 4, 6)
    rig = ring_lidar2img(2, h=64, w=96)[None]
    vt(feats, rig)
    vt(feats, rig)
    assert calls[0] == 2 and getattr(vt, "_plan_cache", None) is None
