import torch

from bevforge.eval.postprocess import decode_predictions
from bevforge.structures.boxes import encode_box_code


def test_postprocess_round_trip():
    torch.manual_seed(0)
    gt = torch.tensor(
        [
            [10.0, -5.0, -1.0, 4.5, 1.9, 1.6, 0.3, 1.0, -0.5],
            [-20.0, 30.0, 0.5, 0.8, 0.7, 1.8, -2.0, 0.0, 0.2],
            [70.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0, 0.0, 0.0],  # outside the post-center range
        ]
    )
    labels = torch.tensor([0, 8, 1])
    D, B, Q, K = 2, 2, 30, 10
    cls = torch.full((D, B, Q, K), -10.0) + 0.1 * torch.randn(D, B, Q, K)
    code = torch.randn(D, B, Q, 10)
    slots = [4, 17, 9]
    for j, q in enumerate(slots):
        cls[-1, 0, q, labels[j]] = 8.0 - j
        code[-1, 0, q] = encode_box_code(gt[j])
    out = decode_predictions({"cls_logits": cls, "box_code": code}, max_boxes=50, score_threshold=0.5)
    assert len(out) == 2 and len(out[1]["boxes"]) == 0
    res = out[0]
    assert res["labels"].tolist() == [0, 8]
    torch.testing.assert_close(res["boxes"], gt[:2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(res["scores"], torch.tensor([8.0, 7.0]).sigmoid())


def test_postprocess_topk_count_and_order():
    torch.manual_seed(0)
    cls = torch.randn(1, 3, 5, 4)
    code = encode_box_code(torch.tensor([1.0, 2.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0])).repeat(3, 5, 1)
    out = decode_predictions({"cls_logits": cls[0], "box_code": code}, max_boxes=300)
    assert all(len(o["scores"]) == 20 for o in out)  # min(max_boxes, Q*K)
    s = out[1]["scores"]
    assert (s[:-1] >= s[1:]).all()
    out = decode_predictions({"cls_logits": cls[0], "box_code": code}, max_boxes=7, post_center_range=None)
    assert out[0]["boxes"].shape == (7, 9) and out[0]["labels"].dtype == torch.int64
