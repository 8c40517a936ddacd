import torch
from torch import nn

from bevforge.models.backbone import ModulatedDeformConv2d, ResNetBackbone
from bevforge.models.grid_mask import GridMask


def test_backbone_shapes_resnet18():
    torch.manual_seed(0)
    net = ResNetBackbone(depth=18, out_indices=(1, 2, 3), frozen_stages=1, norm_eval=True)
    assert net.out_channels == [128, 256, 512]
    outs = net(torch.randn(2, 3, 64, 96))
    assert [tuple(o.shape) for o in outs] == [(2, 128, 8, 12), (2, 256, 4, 6), (2, 512, 2, 3)]


def test_backbone_freezing_and_norm_eval():
    torch.manual_seed(0)
    net = ResNetBackbone(depth=18, out_indices=(3,), frozen_stages=2, norm_eval=True)
    net.train()
    for name, p in net.named_parameters():
        frozen = (
            name.startswith(("conv1", "bn1", "layer1", "layer2")) or ".bn" in name or "downsample.1" in name
        )
        assert p.requires_grad == (not frozen), name
    assert all(not m.training for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    assert net.layer3.training and not net.layer1.training
    # BN statistics do not move in training mode
    before = net.layer4[0].bn1.running_mean.clone()
    net(torch.randn(2, 3, 64, 64))
    assert torch.equal(before, net.layer4[0].bn1.running_mean)


def test_backbone_trainable_bn_without_norm_eval():
    net = ResNetBackbone(depth=18, out_indices=(3,), frozen_stages=-1, norm_eval=False)
    net.train()
    assert all(p.requires_grad for p in net.parameters())
    assert net.bn1.training


def test_backbone_dcn_stage_forward_backward():
    torch.manual_seed(0)
    net = ResNetBackbone(depth=18, out_indices=(3,), frozen_stages=1, dcn_stages=(False, False, True, True))
    assert isinstance(net.layer3[0].conv2, ModulatedDeformConv2d)
    assert not isinstance(net.layer2[0].conv2, ModulatedDeformConv2d)
    out = net(torch.randn(1, 3, 64, 64))[0]
    assert out.shape == (1, 512, 2, 2)
    out.sum().backward()
    assert net.layer3[0].conv2.conv_offset.weight.grad is not None
    with torch.device("meta"):
        r50 = ResNetBackbone(depth=50, out_indices=(3,), dcn_stages=(False, False, True, True))
    assert isinstance(r50.layer4[2].conv2, ModulatedDeformConv2d) and r50.out_channels == [2048]
    assert r50.layer4[0].conv2.conv_offset.weight.shape == (27, 512, 3, 3)


def test_dcn_zero_offsets_equal_half_conv():
    torch.manual_seed(0)
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False)
    dcn = ModulatedDeformConv2d.from_conv(conv)
    x = torch.randn(2, 4, 9, 7)
    torch.testing.assert_close(dcn(x), 0.5 * conv(x), atol=1e-5, rtol=1e-5)


def test_backbone_caffe_style_strides():
    with torch.device("meta"):
        net = ResNetBackbone(depth=50, out_indices=(3,), frozen_stages=-1, style="caffe")
    assert net.layer2[0].conv1.stride == (2, 2) and net.layer2[0].conv2.stride == (1, 1)
    assert net.layer1[0].conv1.stride == (1, 1)


def test_backbone_checkpointing_same_gradients():
    torch.manual_seed(0)
    plain = ResNetBackbone(depth=18, out_indices=(2, 3), frozen_stages=1)
    cp = ResNetBackbone(depth=18, out_indices=(2, 3), frozen_stages=1, with_cp=True)
    cp.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 32, 32)  # no grad on the input, frozen stem: checkpointing must still work
    for net in (plain, cp):
        net.train()
        sum(o.sum() for o in net(x)).backward()
    torch.testing.assert_close(cp.layer2[0].conv1.weight.grad, plain.layer2[0].conv1.weight.grad)
    torch.testing.assert_close(cp.layer4[1].conv2.weight.grad, plain.layer4[1].conv2.weight.grad)


def test_backbone_loads_state_dict_with_official_prefix(tmp_path):
    torch.manual_seed(0)
    src = ResNetBackbone(depth=18, out_indices=(3,))
    state = {f"img_backbone.{k}": v for k, v in src.state_dict().items()}
    state["pts_bbox_head.foo"] = torch.zeros(1)
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": state}, path)
    dst = ResNetBackbone(depth=18, out_indices=(3,), pretrained=str(path))
    torch.testing.assert_close(dst.layer4[1].conv2.weight, src.layer4[1].conv2.weight)
    # an mmdet detector checkpoint: backbone.* plus neck.* entries
    state = {f"backbone.{k}": v for k, v in src.state_dict().items()}
    state["neck.lateral_convs.0.conv.weight"] = torch.zeros(1)
    torch.save(state, path)
    dst = ResNetBackbone(depth=18, out_indices=(3,), pretrained=str(path))
    torch.testing.assert_close(dst.bn1.running_mean, src.bn1.running_mean)
    # the wrong depth is a clear error naming the file
    try:
        ResNetBackbone(depth=34, out_indices=(3,), pretrained=str(path))
    except ValueError as e:
        assert str(path) in str(e) and "depth" in str(e)
    else:
        raise AssertionError("expected ValueError")


def test_backbone_missing_torchvision_weights_says_where(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    try:
        ResNetBackbone(depth=18, pretrained="torchvision")
    except FileNotFoundError as e:
        assert "resnet18" in str(e) and str(tmp_path) in str(e)
    else:
        raise AssertionError("expected FileNotFoundError")


def test_grid_mask_train_only_and_deterministic():
    x = torch.ones(4, 3, 32, 48)
    gm = GridMask(prob=1.0)
    gm.eval()
    assert torch.equal(gm(x), x)
    gm.train()
    torch.manual_seed(3)
    a = gm(x)
    torch.manual_seed(3)
    b = gm(x)
    assert torch.equal(a, b)
    assert 0.4 < a.mean() < 0.99 and set(a.unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(a[0], a[1]) or not torch.equal(a[1], a[2])  # per-image masks


def test_grid_mask_stripes_match_official_loop():
    for n, d, start, width in [(30, 7, 3, 4), (48, 2, 1, 1), (13, 12, 11, 6), (9, 5, 0, 2)]:
        expect = torch.zeros(n, dtype=torch.bool)
        for i in range(n // d):  # the official drawing loop
            s = d * i + start
            expect[s : min(s + width, n)] = True
        assert torch.equal(torch.from_numpy(GridMask._stripes(n, d, start, width)), expect)


def test_grid_mask_batched_masks_equal_per_image_masks():
    """The one-broadcast masks of the unrotated path are the per-image masks (same RNG draws)."""
    cpu = torch.device("cpu")
    for kwargs, (h, w) in [({}, (32, 48)), ({"mode": 0}, (17, 29)), ({"use_h": False}, (20, 20)),
                           ({"use_w": False, "mode": 0}, (9, 40))]:  # fmt: skip
        gm = GridMask(prob=1.0, **kwargs)
        torch.manual_seed(5)
        batched = gm._masks_unrotated(6, h, w, cpu)  # [6, H, W] bool
        torch.manual_seed(5)
        per_image = torch.stack([gm._mask(h, w, cpu) for _ in range(6)])  # [6, H, W] float
        assert batched.shape == (6, h, w) and batched.dtype == torch.bool
        assert torch.equal(batched.float(), per_image), kwargs
        assert 0 < per_image.mean() < 1


def test_backbone_drops_stages_past_the_last_output():
    from bevforge.models.backbone import ResNetBackbone

    net = ResNetBackbone(18, (2,), 0, False, (False, False, False, False), "", False)
    assert not any(name.startswith("layer4.") for name, _ in net.named_parameters())
    assert [tuple(o.shape) for o in net(torch.zeros(1, 3, 64, 64))] == [(1, 256, 4, 4)]
