"""Frozen BNs folded into their convs (models/frozen_bn.py): the same function, gradients and state dict as
torchvision's blocks, the cache follows every change of a BN, and training keeps fewer activations."""

import copy

import pytest
import torch
from backbone_pairs import backbone_pair, randomise_bn
from torch import nn

from bevforge.models.backbone import ResNetBackbone
from bevforge.models.frozen_bn import FoldCache, conv_bn


def _pair(**kwargs) -> tuple[ResNetBackbone, ResNetBackbone]:
    folded, plain = backbone_pair("fold_bn", **kwargs)
    return folded.train(), plain.train()


def _run(net: ResNetBackbone, x: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    outs = net(x)
    sum(((o.double() ** 2).sum() * (i + 1) for i, o in enumerate(outs))).backward()
    grads = {n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None}
    return outs, grads


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(
            depth=50,
            out_indices=(1, 2, 3),
            frozen_stages=1,
            dcn_stages=(False, False, True, True),
            style="caffe",
            dcn_impl="sampled",
        ),
        dict(
            depth=50,
            out_indices=(3,),
            frozen_stages=1,
            dcn_stages=(False, False, False, True),
            dcn_impl="torchvision",
        ),
        dict(depth=18, out_indices=(2, 3), frozen_stages=2),
        dict(depth=18, out_indices=(3,), frozen_stages=1, with_cp=True),
    ],
    ids=["r50-caffe-dcn-sampled", "r50-dcn-torchvision", "r18-basicblock", "r18-checkpointed"],
)
def test_folded_backbone_matches_torchvision_blocks(kwargs):
    folded, plain = _pair(**kwargs)
    x = torch.randn(2, 3, 64, 96)
    outs_f, grads_f = _run(folded, x)
    outs_p, grads_p = _run(plain, x)
    for a, b in zip(outs_f, outs_p, strict=True):  # fp32 rounding through up to 50 layers: relative
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item())
    assert grads_f.keys() == grads_p.keys() and grads_f
    for name in grads_f:
        scale = grads_p[name].abs().max().item()
        torch.testing.assert_close(grads_f[name], grads_p[name], rtol=1e-3, atol=1e-3 * scale)
    assert folded.state_dict().keys() == plain.state_dict().keys()
    # eval (inference) too
    with torch.no_grad():
        for a, b in zip(folded.eval()(x), plain.eval()(x), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * b.abs().max().item())


def test_training_mode_bn_is_not_folded():
    """norm_eval off (BEVDet, the debug recipe): BNs train, statistics move exactly as torchvision's."""
    folded, plain = _pair(depth=18, out_indices=(3,), frozen_stages=-1, norm_eval=False)
    x = torch.randn(2, 3, 64, 64)
    outs_f, grads_f = _run(folded, x)
    outs_p, grads_p = _run(plain, x)
    torch.testing.assert_close(outs_f[0], outs_p[0])
    torch.testing.assert_close(folded.layer3[0].bn1.running_var, plain.layer3[0].bn1.running_var)
    assert "bn1.weight" in grads_f
    torch.testing.assert_close(grads_f["bn1.weight"], grads_p["bn1.weight"])


def test_eval_bn_with_trainable_affine_gets_gradients():
    """A BN in eval mode whose weight/bias train (not a recipe, but legal) runs as a BN: grads reach it."""
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 5, 3, padding=1, bias=True), nn.BatchNorm2d(5)
    randomise_bn(bn)
    bn.eval()
    x = torch.randn(2, 3, 8, 8)
    ref = bn(conv(x))
    got = conv_bn(conv, bn, x, FoldCache())
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    g_ref = torch.autograd.grad(ref.square().sum(), [bn.weight, bn.bias, conv.bias])
    g_got = torch.autograd.grad(got.square().sum(), [bn.weight, bn.bias, conv.bias])
    for a, b in zip(g_got, g_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_cache_follows_bn_changes():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4)
    bn.requires_grad_(False).eval()
    cache, x = FoldCache(), torch.randn(1, 3, 4, 4)

    def check():
        torch.testing.assert_close(conv_bn(conv, bn, x, cache), bn(conv(x)), rtol=1e-5, atol=1e-5)

    check()
    first = cache.folded(conv, bn, torch.float32)
    assert cache.folded(conv, bn, torch.float32)[2] is first[2]  # a hit computes nothing
    with torch.no_grad():
        conv.weight.mul_(2.0)  # a frozen conv's weight is part of the fold
    check()
    randomise_bn(bn, seed=1)  # in place: versions move
    check()
    other = nn.BatchNorm2d(4)
    randomise_bn(other, seed=2)
    bn.load_state_dict(other.state_dict())
    check()
    bn.running_var = torch.full((4,), 3.0)  # replaced, not modified in place
    check()
    bn.eps = 0.5
    check()
    clone = copy.deepcopy(bn)  # a copy has its own entry
    with torch.no_grad():
        clone.running_mean.add_(1.0)
    torch.testing.assert_close(conv_bn(conv, clone, x, cache), clone(conv(x)), rtol=1e-5, atol=1e-5)
    check()


def _saved_activation_bytes(net: nn.Module, x: torch.Tensor) -> int:
    """Bytes of the distinct storages autograd saves whose tensors lead with the batch size: activations,
    not weights (the folded weight a conv saves is the size of the weight cast autocast would save)."""
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 4 and t.shape[0] == x.shape[0]:
            s = t.untyped_storage()
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        net(x)
    return sum(storages.values())


def test_folding_keeps_fewer_activations():
    """The conv outputs the BNs kept for their backward are gone: about a third of a bottleneck's saved
    activations (each conv's input/ReLU output stays)."""
    folded, plain = _pair(depth=50, out_indices=(3,), frozen_stages=1)
    x = torch.randn(5, 3, 64, 64)  # 5: no weight of ResNet-50 has 5 output channels
    kept_folded, kept_plain = _saved_activation_bytes(folded, x), _saved_activation_bytes(plain, x)
    assert kept_folded < 0.75 * kept_plain, (kept_folded, kept_plain)


@pytest.mark.parametrize("impl", ["foreach", "fused"])
def test_cached_eval_weights_follow_optimizer_steps(impl):
    """Validation between training steps: a fused optimizer step updates the weights in place without
    moving their versions, so no fold of a trained weight may be kept from one step to the next."""
    folded, plain = _pair(depth=18, out_indices=(3,), frozen_stages=1)
    opt = torch.optim.AdamW([p for p in folded.parameters() if p.requires_grad], lr=1e-2, **{impl: True})
    x = torch.randn(1, 3, 64, 64)
    for _ in range(2):
        with torch.no_grad():
            folded.eval()(x)  # fills the cache
        folded.train()
        folded(x)[0].square().mean().backward()
        opt.step()
        opt.zero_grad()
        plain.load_state_dict(folded.state_dict())
        with torch.no_grad():
            got, ref = folded.eval()(x)[0], plain.eval()(x)[0]
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())


def test_folds_cached_under_inference_mode_can_be_saved_for_backward():
    """An evaluation under inference_mode fills the cache first; the training step after it saves the
    frozen convs' cached folded weights for backward, which an inference tensor could not be."""
    folded, plain = _pair(depth=18, out_indices=(3,), frozen_stages=1)
    x = torch.randn(1, 3, 64, 64, requires_grad=True)  # an input gradient flows through the frozen stem
    with torch.inference_mode():
        folded.eval()(x.detach())
    folded.train()
    folded(x)[0].square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_a_copied_or_pickled_backbone_starts_with_an_empty_cache(tmp_path):
    folded, plain = _pair(depth=18, out_indices=(3,), frozen_stages=1)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        want = plain.eval()(x)[0]
        folded.eval()(x)  # fills the cache
        torch.save(folded, tmp_path / "backbone.pt")  # the whole module, pickled
        loaded = torch.load(tmp_path / "backbone.pt", weights_only=False)
        for net in (copy.deepcopy(folded), loaded):
            assert not net._fold_cache._entries
            torch.testing.assert_close(net(x)[0], want, rtol=1e-4, atol=1e-5 * want.abs().max().item())


def test_cache_follows_data_swapped_under_the_same_parameter():
    """``module.to()`` / ``_apply`` give a Parameter new data but keep the object and its version: the
    cached fold of a frozen conv must follow the new storage."""
    folded, plain = _pair(depth=18, out_indices=(3,), frozen_stages=1)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        folded.eval()(x)  # fills the cache (the stem and layer1 convs are frozen)
        weight = folded.conv1.weight
        new = torch.randn_like(weight)
        folded._apply(lambda t: new if t is weight else t)  # the stem weight swapped, same Parameter object
        assert folded.conv1.weight is weight and torch.equal(folded.conv1.weight, new)
        plain.conv1.weight.copy_(new)
        want = plain.eval()(x)[0]
        torch.testing.assert_close(folded(x)[0], want, rtol=1e-4, atol=1e-5 * want.abs().max().item())


@pytest.mark.parametrize("impl", ["torchvision", "sampled"])
def test_padded_offset_conv_is_the_same_function_and_state_dict(impl):
    """model.backbone.dcn_offset_pad: the DCN's 27-channel offset/mask conv runs zero-padded to 32 output
    channels and sliced; outputs, every gradient and the state dict equal the unpadded module's."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from bevforge.models.backbone import ModulatedDeformConv2d

    torch.manual_seed(0)
    plain = ModulatedDeformConv2d(6, 5, impl=impl)
    padded = ModulatedDeformConv2d(6, 5, impl=impl, pad_offset_channels=True)
    with torch.no_grad():  # offsets and masks away from their zero init, so the taps move
        plain.conv_offset.weight.normal_(0.0, 0.3)
        plain.conv_offset.bias.normal_(0.0, 0.3)
    padded.load_state_dict(plain.state_dict())
    assert padded.offset_pad == 5 and plain.offset_pad == 0
    assert {k: v.shape for k, v in padded.state_dict().items()} == {
        k: v.shape for k, v in plain.state_dict().items()
    }
    x = torch.randn(2, 6, 7, 9)
    outs, grads, conv_out_channels = [], [], []

    class ConvShapes(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ == "convolution":
                conv_out_channels.append(args[1].shape[0])
            return func(*args, **(kwargs or {}))

    for m in (plain, padded):
        xi = x.clone().requires_grad_()
        with ConvShapes():
            out = m(xi)
        out.square().sum().backward()
        outs.append(out)
        grads.append([xi.grad] + [p.grad for p in m.parameters()])
    assert conv_out_channels == [27, 32], conv_out_channels  # the offset convs (the DCN is not a conv op)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-5)
    for a, b in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
