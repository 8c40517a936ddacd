"""BEV encoder: shapes through the layers, per-sample previous BEV, checkpointing, official_compat."""

from __future__ import annotations

import torch
from models_test_rig import ring_lidar2img

from bevforge.models.bev_encoder import BEVEncoder
from bevforge.nn.ffn import FFN

B, N, C, BEV = 2, 6, 32, 8
PC_RANGE = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)
IMG_HW = (64, 96)


def make_encoder(**kw) -> BEVEncoder:
    args = dict(
        embed_dims=C, ffn_dims=64, dropout=0.0, num_layers=2, bev_h=BEV, bev_w=BEV, pc_range=PC_RANGE,
        num_cams=N, num_levels=2, tsa_heads=4, tsa_points=2, sca_heads=4, sca_points=4,
    )  # fmt: skip
    args.update(kw)
    return BEVEncoder(**args)


def make_inputs():
    feats = [torch.randn(B, N, C, 4, 6), torch.randn(B, N, C, 2, 3)]
    lidar2img = ring_lidar2img(N).expand(B, -1, -1, -1).clone()
    can_bus = torch.zeros(B, 18)
    can_bus[:, 0] = 3.0  # moved 3 m along global x
    can_bus[:, 16] = 0.3
    can_bus[:, 17] = 5.0  # turned 5 degrees
    prev = torch.randn(B, BEV * BEV, C)
    return feats, lidar2img, can_bus, prev


def test_encoder_shapes_and_gradients():
    torch.manual_seed(0)
    enc = make_encoder(dropout=0.1).train()
    feats, lidar2img, can_bus, prev = make_inputs()
    feats[0].requires_grad_(True)
    out = enc(feats, lidar2img, IMG_HW, can_bus, prev, torch.tensor([True, False]))
    assert out.shape == (B, BEV * BEV, C)
    out.square().mean().backward()
    assert feats[0].grad.abs().sum() > 0
    for name in (
        "bev_embedding.weight",
        "positional_encoding.row_embed.weight",
        "cams_embeds",
        "can_bus_mlp.0.weight",
    ):
        assert enc.get_parameter(name).grad is not None, name
    assert enc(feats, lidar2img, IMG_HW, can_bus).shape == (B, BEV * BEV, C)  # no previous BEV at all


def test_encoder_prev_bev_per_sample_matches_single_runs():
    torch.manual_seed(0)
    enc = make_encoder().eval()
    feats, lidar2img, can_bus, prev = make_inputs()
    can_bus[1, [0, 1, 2, 17]] = 0.0  # sample 1 has no previous frame: zero deltas (contract)
    out = enc(feats, lidar2img, IMG_HW, can_bus, prev, torch.tensor([True, False]))
    alone0 = enc([f[:1] for f in feats], lidar2img[:1], IMG_HW, can_bus[:1], prev[:1], None)
    alone1 = enc([f[1:] for f in feats], lidar2img[1:], IMG_HW, can_bus[1:], None, None)
    torch.testing.assert_close(out[:1], alone0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[1:], alone1, atol=1e-5, rtol=1e-5)
    without = enc([f[:1] for f in feats], lidar2img[:1], IMG_HW, can_bus[:1], None, None)
    assert not torch.allclose(without, alone0, atol=1e-4)


def test_encoder_grad_checkpointing_matches():
    torch.manual_seed(0)
    enc = make_encoder().train()
    feats, lidar2img, can_bus, prev = make_inputs()
    out = enc(feats, lidar2img, IMG_HW, can_bus, prev)
    out.sum().backward()
    grads = [p.grad.clone() for p in enc.parameters() if p.grad is not None]
    enc.zero_grad()
    enc.grad_ckpt = True
    out_ckpt = enc(feats, lidar2img, IMG_HW, can_bus, prev)
    out_ckpt.sum().backward()
    torch.testing.assert_close(out_ckpt, out)
    for g, p in zip(grads, [p for p in enc.parameters() if p.grad is not None], strict=True):
        torch.testing.assert_close(p.grad, g, atol=1e-5, rtol=1e-4)


def test_encoder_official_compat_shifts_current_queue_too():
    torch.manual_seed(0)
    enc = make_encoder().eval()
    feats, lidar2img, can_bus, prev = make_inputs()
    out = enc(feats, lidar2img, IMG_HW, can_bus, prev)
    enc.official_compat = True
    assert not torch.allclose(enc(feats, lidar2img, IMG_HW, can_bus, prev), out, atol=1e-4)
    # without motion (zero shift, zero rotation) the switch changes nothing at an 8 x 8 grid
    can_bus[:, [0, 1, 2, 17]] = 0.0
    compat = enc(feats, lidar2img, IMG_HW, can_bus, prev)
    enc.official_compat = False
    torch.testing.assert_close(enc(feats, lidar2img, IMG_HW, can_bus, prev), compat)


def test_checkpointed_layers_run_their_regions_plainly_and_capture_recomputes_the_regions(monkeypatch):
    """With grad_ckpt a layer is recomputed whole and its SCA / TSA / FFN recompute regions run plainly
    inside it (no third run of their projections). Under CUDA-graph capture (emulated) the layer is not
    checkpointed (its dropout), and the SCA's and TSA's regions recompute instead (the FFN's draws dropout:
    kept). The gradients are those of the plain encoder every way."""
    import bevforge.models.bev_encoder as bev_encoder
    import bevforge.nn.recompute as recompute

    torch.manual_seed(0)
    enc = make_encoder(sca_recompute="on", tsa_recompute="on", ffn_recompute=True, dropout=0.1).train()
    feats, lidar2img, can_bus, prev = make_inputs()
    regions = []
    real = recompute.run_recomputed
    monkeypatch.setattr(
        recompute, "run_recomputed", lambda fn, *a, **k: regions.append(fn) or real(fn, *a, **k)
    )

    def grads(grad_ckpt: bool, capturing: bool):
        monkeypatch.setattr(bev_encoder, "capturing_cuda_graph", lambda: capturing)
        monkeypatch.setattr(recompute, "capturing_cuda_graph", lambda: capturing)
        enc.grad_ckpt = grad_ckpt
        enc.zero_grad()
        regions.clear()
        torch.manual_seed(1)
        out = enc(feats, lidar2img, IMG_HW, can_bus, prev)
        (out * torch.linspace(-1, 1, C)).sum().backward()
        return out.detach(), [p.grad.clone() for p in enc.parameters() if p.grad is not None], list(regions)

    want, want_grads, plain_regions = grads(grad_ckpt=False, capturing=False)
    assert len(plain_regions) == 3 * 2, "SCA, TSA and FFN of both layers"
    for grad_ckpt, capturing, n_regions in ((True, False, 0), (True, True, 2 * 2)):
        out, got_grads, ran = grads(grad_ckpt, capturing)
        assert len(ran) == n_regions, (grad_ckpt, capturing, ran)
        assert not any(isinstance(fn, FFN) for fn in ran), "the FFN's region draws dropout: kept"
        torch.testing.assert_close(out, want)
        for g, w in zip(got_grads, want_grads, strict=True):
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)
