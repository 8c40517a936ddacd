"""model.backbone.fuse_conv_relu (models/fused_conv.py): each frozen conv -> BN -> ReLU (-> residual) is
one cuDNN call, in training with the plain ops' backward. On the CPU the two cuDNN ops are emulated by
plain ops (counting their calls), which checks the composition (which convs fuse, the downsample's bias
moved into the last conv), the backward (the same gradients) and the fallback. The ``gpu`` tests run
cuDNN's own calls."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from backbone_pairs import backbone_pair
from torch import nn

import bevforge.models.fused_conv as fb
from bevforge.models.backbone import ResNetBackbone
from bevforge.models.frozen_bn import FoldCache

R50_DCN = dict(
    depth=50, out_indices=(1, 2, 3), frozen_stages=1, dcn_stages=(False, False, True, True), style="caffe",
    dcn_impl="sampled",
)  # fmt: skip
R18 = dict(depth=18, out_indices=(2, 3), frozen_stages=2)


def _pair(**kwargs) -> tuple[ResNetBackbone, ResNetBackbone]:
    return backbone_pair("fuse_conv_relu", **kwargs)


class _EmulatedCudnn:
    """The two cuDNN calls as plain ops on any device, counted; ``fail`` raises as an unsupported one."""

    def __init__(self, monkeypatch, fail: bool = False) -> None:
        self.relu = self.add_relu = 0
        self.fail = fail
        monkeypatch.setattr(fb, "_cudnn_usable", lambda x: True)
        monkeypatch.setattr(fb, "_cudnn_conv_relu", self._conv_relu)
        monkeypatch.setattr(fb, "_cudnn_conv_add_relu", self._conv_add_relu)
        monkeypatch.setattr(fb, "FUSED_DISABLED", None)

    def _conv_relu(self, x, weight, bias, stride, padding, dilation, groups):
        if self.fail:
            raise RuntimeError("cuDNN Frontend error: no engine for this graph\nsecond line")
        self.relu += 1
        assert x.dtype == weight.dtype == bias.dtype
        assert not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        return torch.relu(F.conv2d(x, weight, bias, stride, padding, dilation, groups))

    def _conv_add_relu(self, x, weight, z, bias, stride, padding, dilation, groups):
        self.add_relu += 1
        assert z.dtype == x.dtype == weight.dtype == bias.dtype
        return torch.relu(F.conv2d(x, weight, bias, stride, padding, dilation, groups) + z)


@pytest.mark.parametrize("kwargs", [R50_DCN, R18], ids=["r50-caffe-dcn", "r18-basicblock"])
@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
def test_fused_inference_is_the_plain_backbone(kwargs, amp, monkeypatch):
    fused, plain = _pair(**kwargs)
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        expected = plain.eval()(x)
        cudnn = _EmulatedCudnn(monkeypatch)
        got = fused.eval()(x)
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == b.dtype
        # fp32: the downsample's bias joins the last conv's before the sum (rounding through 50 layers)
        scale = b.abs().max().item()
        tol = dict(rtol=2e-2, atol=2e-2 * scale) if amp else dict(rtol=1e-4, atol=1e-5 * scale)
        torch.testing.assert_close(a, b, **tol)
    blocks = [b for layer in fused.stages for b in layer]  # out_indices end at 3: every stage runs
    per_block_relu = {50: 2, 18: 1}[kwargs["depth"]]  # the convs before the last
    dcn_blocks = sum(not isinstance(b.conv2, nn.Conv2d) for b in blocks)
    assert cudnn.add_relu == len(blocks)  # every block's last conv + residual + ReLU
    assert cudnn.relu == 1 + per_block_relu * len(blocks) - dcn_blocks  # the stem; a DCN runs as before


@pytest.mark.parametrize("with_cp", [False, True], ids=["plain", "checkpointed"])
def test_training_fuses_every_frozen_bn_conv_with_the_plain_backward(with_cp, monkeypatch):
    fused, plain = _pair(**R50_DCN, with_cp=with_cp)
    x = torch.randn(2, 3, 64, 96)

    def run(net):
        outs = net.train()(x)
        sum(((o**2).sum() * (i + 1) for i, o in enumerate(outs))).backward()
        return outs, {n: p.grad for n, p in net.named_parameters() if p.grad is not None}

    outs_p, grads_p = run(plain)
    cudnn = _EmulatedCudnn(monkeypatch)
    outs_f, grads_f = run(fused)
    # every block (the frozen stem and stage 1 without a graph, the rest through _FusedConvReLU); the
    # DCN convs of stages 3-4 (6 + 3 blocks) as before
    relu, add_relu = 1 + 2 * 16 - 9, 16
    if with_cp:  # stages 2-4 (4 + 6 + 3 blocks; 6 + 3 with a DCN conv2) run again in backward
        relu, add_relu = relu + 2 * 4 + 6 + 3, add_relu + 4 + 6 + 3
    assert (cudnn.relu, cudnn.add_relu) == (relu, add_relu)
    for a, b in zip(outs_f, outs_p, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item())
    assert grads_f.keys() == grads_p.keys() and any(k.startswith("layer2.") for k in grads_f)
    for name in grads_f:
        scale = grads_p[name].abs().max().item()
        torch.testing.assert_close(grads_f[name], grads_p[name], rtol=1e-3, atol=1e-3 * scale)


def test_fusion_is_off_by_default_and_without_cuda():
    assert not ResNetBackbone(depth=18).fuse_conv_relu
    x = torch.randn(1, 3, 8, 8)
    assert not fb._cudnn_usable(x)  # a CPU tensor
    with torch.no_grad():
        conv, bn = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4).eval()
        plain = torch.relu(bn(conv(x)))
        torch.testing.assert_close(fb.conv_bn_relu(conv, bn, x, FoldCache()), plain)


def test_a_failing_fused_call_falls_back_once_with_a_warning(monkeypatch):
    fused, plain = _pair(**R18)
    x = torch.randn(1, 3, 64, 64)
    cudnn = _EmulatedCudnn(monkeypatch, fail=True)
    with torch.no_grad(), pytest.warns(UserWarning, match="fuse_conv_relu: cuDNN's fused conv .* no engine"):
        got = fused.eval()(x)
    assert fb.FUSED_DISABLED == "RuntimeError: cuDNN Frontend error: no engine for this graph"
    with torch.no_grad():
        expected = plain.eval()(x)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # disabled: no second warning, no second try
            again = fused(x)
    assert cudnn.relu == cudnn.add_relu == 0
    for a, b, c in zip(got, again, expected, strict=True):
        torch.testing.assert_close(a, c)
        torch.testing.assert_close(b, c)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels-last"])
def test_cudnn_fused_calls_match_the_plain_backbone(amp, channels_last, monkeypatch):
    monkeypatch.setattr(fb, "FUSED_DISABLED", None)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # fp32: only the summation order differs
    fused, plain = (m.cuda() for m in _pair(**R50_DCN))
    x = torch.randn(2, 3, 128, 192, device="cuda")
    if channels_last:
        fused, plain = (m.to(memory_format=torch.channels_last) for m in (fused, plain))
        x = x.contiguous(memory_format=torch.channels_last)
    calls = []
    real = fb._cudnn_conv_add_relu
    monkeypatch.setattr(fb, "_cudnn_conv_add_relu", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
        expected = plain.eval()(x)
        got = fused.eval()(x)
    assert fb.FUSED_DISABLED is None, fb.FUSED_DISABLED
    assert len(calls) == 3 + 4 + 6 + 3  # every bottleneck of R50
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == b.dtype and a.is_contiguous(memory_format=torch.channels_last) == channels_last
        # bf16: the plain ops round the conv output before the bias and again after; cuDNN once
        scale = b.abs().max().item()
        tol = dict(rtol=3e-2, atol=3e-2 * scale) if amp else dict(rtol=1e-4, atol=1e-4 * scale)
        torch.testing.assert_close(a, b, **tol)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("amp", [False, True], ids=["fp32", "bf16"])
def test_cudnn_fused_training_has_the_plain_gradients(amp, monkeypatch):
    monkeypatch.setattr(fb, "FUSED_DISABLED", None)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    fused, plain = (m.cuda().to(memory_format=torch.channels_last).train() for m in _pair(**R50_DCN))
    x = torch.randn(2, 3, 128, 192, device="cuda").contiguous(memory_format=torch.channels_last)

    def run(net):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            outs = net(x)
        sum(((o.float() ** 2).mean() * (i + 1) for i, o in enumerate(outs))).backward()
        return {n: p.grad for n, p in net.named_parameters() if p.grad is not None}

    want, got = run(plain), run(fused)
    assert fb.FUSED_DISABLED is None, fb.FUSED_DISABLED
    assert want.keys() == got.keys() and want
    for name in want:
        scale = want[name].abs().max().item()
        tol = dict(rtol=5e-2, atol=5e-2 * scale) if amp else dict(rtol=1e-3, atol=1e-3 * scale)
        torch.testing.assert_close(got[name], want[name], **tol, msg=name)


def test_fusion_needs_the_folded_bns():
    with pytest.raises(ValueError, match="fuse_conv_relu needs model.backbone.fold_bn=true"):
        ResNetBackbone(depth=18, fold_bn=False, fuse_conv_relu=True)
    from bevforge.config import ConfigError, load_config
    from bevforge.models.build import build_model

    options = ["model.backbone.fold_bn=false", "model.backbone.fuse_conv_relu=true"]
    cfg = load_config("bevformer_debug", options)
    with pytest.raises(ConfigError, match="set fold_bn=true or fuse_conv_relu=false"):
        build_model(cfg)  # bevforge train/bench report a ConfigError as one line


def test_compiled_backbone_takes_the_plain_blocks_without_a_graph_break():
    net = ResNetBackbone(depth=18, out_indices=(3,), fuse_conv_relu=True).eval()
    explained = torch._dynamo.explain(net)(torch.randn(1, 3, 64, 64))
    assert explained.graph_break_count == 0, explained.break_reasons
