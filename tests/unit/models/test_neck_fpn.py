import torch

from bevforge.models.neck import FPN


def test_fpn_single_level():
    torch.manual_seed(0)
    fpn = FPN([64], 32, num_outs=1)
    outs = fpn([torch.randn(2, 64, 5, 7)])
    assert len(outs) == 1 and outs[0].shape == (2, 32, 5, 7)


def test_fpn_extra_levels_on_output():
    torch.manual_seed(0)
    fpn = FPN([16, 32, 64], 8, num_outs=4, add_extra_convs=True)
    feats = [torch.randn(2, 16, 20, 24), torch.randn(2, 32, 10, 12), torch.randn(2, 64, 5, 6)]
    outs = fpn(feats)
    assert [tuple(o.shape) for o in outs] == [(2, 8, 20, 24), (2, 8, 10, 12), (2, 8, 5, 6), (2, 8, 3, 3)]
    assert len(fpn.fpn_convs) == 4 and fpn.fpn_convs[3].stride == (2, 2)
    # the first extra conv reads the last output without a ReLU (mmdet on_output)
    torch.testing.assert_close(outs[3], fpn.fpn_convs[3](outs[2]))


def test_fpn_top_down_pathway():
    torch.manual_seed(0)
    fpn = FPN([4, 4], 4, num_outs=2)
    a, b = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 2, 2)
    lat_b = fpn.lateral_convs[1](b)
    expect = fpn.fpn_convs[0](fpn.lateral_convs[0](a) + lat_b.repeat_interleave(2, 2).repeat_interleave(2, 3))
    torch.testing.assert_close(fpn([a, b])[0], expect)


def test_fpn_max_pool_extra_levels():
    fpn = FPN([8], 8, num_outs=2, add_extra_convs=False)
    outs = fpn([torch.randn(1, 8, 6, 6)])
    assert outs[1].shape == (1, 8, 3, 3) and len(fpn.fpn_convs) == 1
