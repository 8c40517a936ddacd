"""CenterPoint targets, loss and decode on CUDA match the CPU (skipped without a CUDA device)."""

import pytest
import torch

from bevforge.losses.centerpoint import CenterPointCriterion
from bevforge.models.centerpoint_head import CenterPointHead

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
PCR = (-8.0, -8.0, -5.0, 8.0, 8.0, 3.0)
TASKS = ((0,), (1, 2))


def test_loss_and_decode_match_cpu():
    torch.manual_seed(0)
    head = CenterPointHead(8, TASKS, 16, 16, PCR, share_channels=8, head_channels=8)
    head.eval()
    crit = CenterPointCriterion(TASKS, PCR)
    boxes = [torch.tensor([[0.3, -2.6, 1.0, 4.5, 1.9, 1.6, 0.4, 2.0, -1.0]]), torch.zeros(0, 9)]
    labels = [torch.tensor([1]), torch.zeros(0, dtype=torch.long)]
    x = torch.randn(2, 8, 16, 16)
    with torch.no_grad():
        preds = head(x)  # official init: well spread scores, no ties for the NMS order
    cuda_preds = {k: v.cuda() for k, v in preds.items()}
    loss = crit(preds, boxes, labels)
    cuda_loss = crit.cuda()(cuda_preds, [b.cuda() for b in boxes], [lb.cuda() for lb in labels])
    for k, v in loss.items():
        torch.testing.assert_close(cuda_loss[k].cpu(), v, atol=1e-4, rtol=1e-4)
    dets, cuda_dets = head.decode(preds), head.decode(cuda_preds)
    for d, c in zip(dets, cuda_dets, strict=True):
        assert c["boxes"].is_cuda and len(c["boxes"]) == len(d["boxes"])
        torch.testing.assert_close(c["scores"].cpu(), d["scores"], atol=1e-4, rtol=1e-4)
