import torch

from bevforge.losses.seg import dice_loss, seg_loss
from bevforge.models.seg_head import SegHead


def test_seg_head_shape_and_grid_layout():
    torch.manual_seed(0)
    head = SegHead(embed_dims=8, num_classes=3, bev_h=4, bev_w=5)
    bev = torch.randn(2, 20, 8)
    assert head(bev).shape == (2, 3, 4, 5)
    # a 1x1-only head exposes the layout: query i = row * bev_w + col
    x = bev.transpose(1, 2).reshape(2, 8, 4, 5)
    assert torch.equal(x[0, :, 2, 3], bev[0, 2 * 5 + 3])


def test_seg_loss_perfect_and_wrong():
    target = torch.zeros(1, 2, 4, 4)
    target[0, 0, :2] = 1
    good = (target * 2 - 1) * 20
    bad = -good
    assert seg_loss(good, target) < 0.1 < seg_loss(bad, target)
    assert dice_loss(good, target) < 1e-3


def test_seg_loss_shape_mismatch_is_clear():
    try:
        seg_loss(torch.zeros(1, 2, 4, 4), torch.zeros(1, 3, 4, 4))
    except ValueError as e:
        assert "seg_classes" in str(e)
    else:
        raise AssertionError
