"""ops/dcn ``deform_conv2d_sampled`` against ``torchvision.ops.deform_conv2d`` (the spec)."""

import pytest
import torch
from torchvision.ops import deform_conv2d

from bevforge.ops.dcn import deform_conv2d_sampled

# (B, C, O, H, W, kernel, stride, padding, dilation, offset groups, weight groups)
CASES = [
    (2, 4, 6, 7, 9, (3, 3), (1, 1), (1, 1), (1, 1), 1, 1),
    (2, 5, 3, 9, 6, (3, 3), (2, 2), (1, 1), (1, 1), 1, 1),  # stride 2, odd sizes
    (1, 4, 6, 10, 8, (3, 3), (1, 1), (2, 2), (2, 2), 1, 1),  # dilation 2
    (2, 6, 4, 6, 11, (2, 3), (2, 1), (0, 1), (1, 2), 2, 2),  # non-square everything, groups
    (2, 3, 5, 1, 6, (3, 3), (1, 1), (1, 1), (1, 1), 1, 1),  # H == 1 (grid guard)
    (2, 3, 5, 6, 1, (3, 3), (1, 2), (1, 1), (1, 1), 1, 1),  # W == 1
]


def _inputs(case, dtype, offset_scale=3.0):
    B, C, O, H, W, (kh, kw), (sh, sw), (ph, pw), (dh, dw), G, Gw = case
    Ho = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    Wo = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    x = torch.randn(B, C, H, W, dtype=dtype)
    # offsets of a few pixels: many taps land outside the image or in its one-pixel border band
    offset = torch.randn(B, 2 * G * kh * kw, Ho, Wo, dtype=dtype) * offset_scale
    mask = torch.rand(B, G * kh * kw, Ho, Wo, dtype=dtype)
    weight = torch.randn(O, C // Gw, kh, kw, dtype=dtype)
    bias = torch.randn(O, dtype=dtype)
    tensors = [t.requires_grad_() for t in (x, offset, mask, weight, bias)]
    return tensors, dict(stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw))


def _run(fn, tensors, geometry, grad_out=None):
    x, offset, mask, weight, bias = tensors
    out = fn(x, offset, weight, bias, mask=mask, **geometry)
    grad_out = torch.randn_like(out) if grad_out is None else grad_out
    return out, torch.autograd.grad(out, tensors, grad_out), grad_out


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_dcn_sampled_matches_torchvision(case, dtype):
    torch.manual_seed(0)
    tensors, geometry = _inputs(case, dtype)
    ref, ref_grads, grad_out = _run(deform_conv2d, tensors, geometry)
    out, grads, _ = _run(deform_conv2d_sampled, tensors, geometry, grad_out)
    tol = dict(atol=1e-10, rtol=1e-10) if dtype == torch.float64 else dict(atol=1e-5, rtol=1e-5)
    assert out.dtype == dtype
    torch.testing.assert_close(out, ref, **tol)
    for name, g, g_ref in zip(("input", "offset", "mask", "weight", "bias"), grads, ref_grads):
        torch.testing.assert_close(g, g_ref, **tol, msg=lambda m, n=name: f"grad {n}: {m}")


def test_dcn_sampled_channels_last_and_sliced_inputs():
    """Channels-last tensors (``--channels-last`` backbones) and offset/mask sliced from one conv output."""
    torch.manual_seed(0)
    case = (2, 6, 4, 9, 11, (3, 3), (1, 1), (1, 1), (1, 1), 2, 1)
    tensors, geometry = _inputs(case, torch.float32)
    cl = [t.detach().to(memory_format=torch.channels_last).requires_grad_() for t in tensors[:4]]
    ref, ref_grads, grad_out = _run(deform_conv2d, tensors, geometry)
    out, grads, _ = _run(deform_conv2d_sampled, [*cl, tensors[4]], geometry, grad_out)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for g, g_ref in zip(grads, ref_grads):
        torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-5)
    both = torch.cat([tensors[1], tensors[2]], dim=1).detach().to(memory_format=torch.channels_last)
    offset, mask = both[:, :36], both[:, 36:]  # non-contiguous channel slices
    x, _, _, weight, bias = tensors
    torch.testing.assert_close(
        deform_conv2d_sampled(x, offset, weight, bias, mask=mask, **geometry), ref, atol=1e-5, rtol=1e-5
    )


def test_dcn_sampled_border_samples():
    """Samples on the exact border band: y in (-1, 0) and (H-1, H) are partial, y <= -1 or >= H are 0."""
    torch.manual_seed(0)
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64)
    weight = torch.ones(1, 2, 1, 1, dtype=torch.float64)
    shifts = [-1.5, -1.0, -0.999, -0.25, 0.0, 3.0, 3.25, 3.999, 4.0, 4.5]
    for dy in shifts:
        for dx in (-1.0, -0.5, 0.5, 4.0, 4.75):
            offset = torch.zeros(1, 2, 4, 5, dtype=torch.float64)
            offset[:, 0], offset[:, 1] = dy, dx
            ref = deform_conv2d(x, offset, weight)
            out = deform_conv2d_sampled(x, offset, weight)
            torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12, msg=f"dy={dy}, dx={dx}")


def test_dcn_sampled_zero_offsets_equal_conv_and_grads():
    """Zero offsets, mask 1 = a plain conv; the input/mask/weight gradients match torchvision (the offset
    gradient at exact integer positions is a one-sided difference whose side depends on rounding)."""
    torch.manual_seed(0)
    case = (2, 4, 6, 9, 7, (3, 3), (2, 2), (1, 1), (1, 1), 1, 1)
    tensors, geometry = _inputs(case, torch.float64, offset_scale=0.0)
    x, offset, mask, weight, bias = tensors
    with torch.no_grad():
        mask.fill_(1.0)
    out = deform_conv2d_sampled(x, offset, weight, bias, mask=mask, **geometry)
    conv = torch.nn.functional.conv2d(x, weight, bias, **geometry)
    torch.testing.assert_close(out, conv, atol=1e-12, rtol=1e-12)
    ref, ref_grads, grad_out = _run(deform_conv2d, tensors, geometry)
    _, grads, _ = _run(deform_conv2d_sampled, tensors, geometry, grad_out)
    for i in (0, 2, 3, 4):
        torch.testing.assert_close(grads[i], ref_grads[i], atol=1e-10, rtol=1e-10)


def test_dcn_sampled_without_mask_and_bias_and_partial_grads():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64, requires_grad=True)
    offset = torch.randn(2, 18, 6, 7, dtype=torch.float64) * 2  # no grad: only input and weight
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    ref = deform_conv2d(x, offset, weight, padding=1)
    out = deform_conv2d_sampled(x, offset, weight, padding=1)
    torch.testing.assert_close(out, ref, atol=1e-10, rtol=1e-10)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(out, (x, weight), g), torch.autograd.grad(ref, (x, weight), g)):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_dcn_sampled_gradcheck():
    torch.manual_seed(0)
    tensors, geometry = _inputs((1, 2, 3, 4, 5, (3, 3), (1, 1), (1, 1), (1, 1), 1, 1), torch.float64, 1.3)

    def fn(x, offset, mask, weight, bias):
        return deform_conv2d_sampled(x, offset, weight, bias, mask=mask, **geometry)

    x, offset, mask, weight, bias = tensors
    assert torch.autograd.gradcheck(fn, (x, offset, mask, weight, bias), eps=1e-6, atol=1e-5)


def test_dcn_sampled_autocast_bf16_gemm():
    """Under autocast the GEMM runs (and returns) in the autocast dtype; grads keep the input dtypes."""
    torch.manual_seed(0)
    tensors, geometry = _inputs(CASES[0], torch.float32)
    x, offset, mask, weight, bias = tensors
    ref = deform_conv2d(x, offset, weight, bias, mask=mask, **geometry)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = deform_conv2d_sampled(x, offset, weight, bias, mask=mask, **geometry)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=0.1, rtol=0.03)
    grads = torch.autograd.grad(out.float().sum(), tensors)
    assert [g.dtype for g in grads] == [torch.float32] * 5
    ref_grads = torch.autograd.grad(ref.sum(), tensors)
    for g, g_ref in zip(grads, ref_grads):
        assert (g - g_ref).norm() <= 0.02 * g_ref.norm()


def test_dcn_sampled_compiles_without_graph_breaks():
    torch.manual_seed(0)
    tensors, geometry = _inputs(CASES[1], torch.float32)
    x, offset, mask, weight, bias = tensors

    def fn(x, offset, mask, weight, bias):
        return deform_conv2d_sampled(x, offset, weight, bias, mask=mask, **geometry)

    assert torch._dynamo.explain(fn)(x, offset, mask, weight, bias).graph_break_count == 0


def test_dcn_sampled_rejects_bad_shapes():
    x = torch.randn(1, 4, 6, 6)
    weight = torch.randn(5, 4, 3, 3)
    with pytest.raises(ValueError, match="offset"):
        deform_conv2d_sampled(x, torch.randn(1, 17, 6, 6), weight, padding=1)
    with pytest.raises(ValueError, match=r"must be \[1, 18, 6, 6\]"):
        deform_conv2d_sampled(x, torch.randn(1, 18, 5, 6), weight, padding=1)
    with pytest.raises(ValueError, match="mask"):
        deform_conv2d_sampled(x, torch.zeros(1, 18, 6, 6), weight, padding=1, mask=torch.ones(1, 8, 6, 6))
