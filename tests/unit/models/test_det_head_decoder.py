import torch

from bevforge.models.det_head import DetectionHead, inverse_sigmoid
from bevforge.nn.msdeform_attn import MSDeformAttn

PC = (-51.2, -51.2, -5.0, 51.2, 51.2, 3.0)


def _head(**kw):
    args = dict(embed_dims=32, ffn_dims=64, dropout=0.0, num_queries=20, num_classes=10, num_layers=3)
    args.update(dict(num_heads=4, num_points=4, bev_h=6, bev_w=8, pc_range=PC))
    args.update(kw)
    return DetectionHead(**args)


def test_det_head_shapes_and_ranges():
    torch.manual_seed(0)
    head = _head()
    cls, code = head(torch.randn(2, 48, 32))
    assert cls.shape == (3, 2, 20, 10) and code.shape == (3, 2, 20, 10)
    assert (code[..., 0].abs() <= 51.2).all() and (code[..., 4] >= -5).all() and (code[..., 4] <= 3).all()
    # focal prior: initial scores ~0.01
    torch.testing.assert_close(cls.sigmoid().mean(), torch.tensor(0.01), atol=5e-3, rtol=0)


def test_det_head_refinement_chain():
    """Layer i's centre = sigmoid(delta + inverse_sigmoid(ref_{i-1})), ref_0 from the linear layer."""
    torch.manual_seed(0)
    head = _head(num_layers=2).eval()
    bev = torch.randn(1, 48, 32)
    _, code = head(bev)
    qpos = head.query_embedding.weight[:, :32]
    ref0 = head.reference_points(qpos).sigmoid()
    centre0 = (code[0, 0][:, [0, 1, 4]] - head.pc_min) / head.pc_size
    assert centre0.shape == ref0.shape
    # layer 1 refines from layer 0's (detached) reference
    qa = head.layers[0](
        head.query_embedding.weight[None, :, 32:],
        qpos[None],
        bev,
        ref0[None, :, None, :2],
        torch.tensor([[6, 8]]),
        torch.tensor([0]),
    )
    delta = head.reg_branches[0](qa)
    torch.testing.assert_close(centre0, (delta[0][:, [0, 1, 4]] + inverse_sigmoid(ref0)).sigmoid())
    torch.testing.assert_close(code[0, 0][:, [2, 3, 5, 6, 7, 8, 9]], delta[0][:, [2, 3, 5, 6, 7, 8, 9]])


def test_det_head_backward_batch_independent():
    torch.manual_seed(0)
    head = _head().eval()
    bev = torch.randn(2, 48, 32, requires_grad=True)
    cls, code = head(bev)
    cls1, _ = head(bev[1:])
    torch.testing.assert_close(cls[:, 1:], cls1, atol=1e-5, rtol=1e-5)
    (cls.sum() + code.sum()).backward()
    assert bev.grad is not None and torch.isfinite(bev.grad).all()


def test_msdeform_attn_init_and_single_point():
    torch.manual_seed(0)
    attn = MSDeformAttn(embed_dims=8, num_heads=2, num_levels=1, num_points=1, dropout=0.0)
    off = attn.sampling_offsets.bias.view(2, 1, 1, 2)
    torch.testing.assert_close(off[:, 0, 0], torch.tensor([[1.0, 0.0], [-1.0, 0.0]]), atol=1e-6, rtol=0)
    # zero offsets at a cell centre: output = query + output_proj(value_proj(value at that cell))
    with torch.no_grad():
        attn.sampling_offsets.bias.zero_()
    value = torch.randn(1, 12, 8)  # 3 x 4 map
    query = torch.randn(1, 1, 8)
    ref = torch.tensor([[[[(2 + 0.5) / 4, (1 + 0.5) / 3]]]])  # cell row 1, col 2
    out = attn(query, value, ref, torch.tensor([[3, 4]]), torch.tensor([0]))
    expect = query + attn.output_proj(attn.value_proj(value[:, 1 * 4 + 2]))[:, None]
    torch.testing.assert_close(out, expect, atol=1e-5, rtol=1e-5)


def test_msdeform_attn_offsets_are_cells_x_then_y():
    """An offset of (+1, 0) moves one column right on every level; (0, +1) one row down."""
    torch.manual_seed(0)
    attn = MSDeformAttn(embed_dims=4, num_heads=1, num_levels=2, num_points=1, dropout=0.0)
    shapes = torch.tensor([[3, 4], [2, 2]])
    start = torch.tensor([0, 12])
    value = torch.randn(1, 16, 4)
    ref = torch.tensor([[[[(1 + 0.5) / 4, (1 + 0.5) / 3], [(0 + 0.5) / 2, (0 + 0.5) / 2]]]])  # [1, 1, L, 2]
    for offset, cells in (
        ((1.0, 0.0), (1 * 4 + 2, 12 + 0 * 2 + 1)),
        ((0.0, 1.0), (2 * 4 + 1, 12 + 1 * 2 + 0)),
    ):
        with torch.no_grad():
            attn.sampling_offsets.bias.copy_(torch.tensor(offset).repeat(2))
            attn.attention_weights.bias.copy_(torch.tensor([0.0, -1e4]))  # level 0 only
        out0 = attn(torch.zeros(1, 1, 4), value, ref, shapes, start)
        expect0 = attn.output_proj(attn.value_proj(value[:, cells[0]]))
        torch.testing.assert_close(out0[:, 0], expect0, atol=1e-5, rtol=1e-5)
        with torch.no_grad():
            attn.attention_weights.bias.copy_(torch.tensor([-1e4, 0.0]))  # level 1 only
        out1 = attn(torch.zeros(1, 1, 4), value, ref, shapes, start)
        expect1 = attn.output_proj(attn.value_proj(value[:, cells[1]]))
        torch.testing.assert_close(out1[:, 0], expect1, atol=1e-5, rtol=1e-5)


def test_msdeform_attn_low_precision_modes():
    torch.manual_seed(0)
    attn = MSDeformAttn(embed_dims=8, num_heads=2, num_levels=1, num_points=2, dropout=0.0)
    q, v, ref = torch.randn(1, 3, 8), torch.randn(1, 12, 8), torch.rand(1, 3, 1, 2)
    args = (torch.tensor([[3, 4]]), torch.tensor([0]))
    full = attn(q, v, ref, *args)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = attn(q, v, ref, *args)
    torch.testing.assert_close(mixed.float(), full, atol=0.1, rtol=0.05)
    half = attn.to(torch.bfloat16)(q.bfloat16(), v.bfloat16(), ref, *args)  # a model cast to bf16 (export)
    assert half.dtype == torch.bfloat16


def test_det_head_autocast_keeps_fp32_centres():
    torch.manual_seed(0)
    head = _head(num_layers=2).eval()
    bev = torch.randn(1, 48, 32)
    _, code = head(bev)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cls_bf, code_bf = head(bev)
    assert code_bf.dtype == torch.float32
    torch.testing.assert_close(code_bf[..., [0, 1, 4]], code[..., [0, 1, 4]], atol=0.6, rtol=0)
