"""weighted_l1_loss: rows with a non-finite target (unknown velocity) are left out, without a boolean
index (a device sync) and without NaN gradients."""

import torch

from bevforge.losses.focal import weighted_l1_loss


def test_weighted_l1_skips_nonfinite_rows_with_clean_gradients() -> None:
    torch.manual_seed(0)
    pred = torch.randn(6, 10, requires_grad=True)
    target = torch.randn(6, 10)
    target[1, 8] = float("nan")  # unknown velocity
    target[4, 9] = float("inf")
    weight = torch.rand(10).expand(6, 10)
    loss = weighted_l1_loss(pred, target, weight)
    keep = torch.tensor([True, False, True, True, False, True])
    want = ((pred[keep] - target[keep]).abs() * weight[keep]).sum()  # the indexed definition
    torch.testing.assert_close(loss, want, rtol=1e-6, atol=0)
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    assert pred.grad[1].abs().sum() == 0 and pred.grad[4].abs().sum() == 0
    assert (pred.grad[0] != 0).any()


def test_weighted_l1_all_rows_invalid_is_zero() -> None:
    pred = torch.randn(3, 10, requires_grad=True)
    loss = weighted_l1_loss(pred, torch.full((3, 10), float("nan")), torch.ones(3, 10))
    assert loss.item() == 0.0
    loss.backward()
    assert (pred.grad == 0).all()
