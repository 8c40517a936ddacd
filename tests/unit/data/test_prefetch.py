"""device_prefetch hands out each batch on the device, in order, with the same values (on CUDA the next
batch's copy is issued on a side stream while the current one is in use)."""

from __future__ import annotations

import pytest
import torch

from bevforge.data.prefetch import device_prefetch
from bevforge.structures.batch import Batch


def _batch(i: int) -> Batch:
    g = torch.Generator().manual_seed(i)
    eye = torch.eye(4, dtype=torch.float64).expand(1, 1, 4, 4).clone()
    return Batch(
        images=torch.randn(1, 1, 2, 3, 8, 8, generator=g),
        lidar2img=torch.randn(1, 1, 2, 4, 4, generator=g),
        can_bus=torch.randn(1, 1, 18, generator=g),
        ego2global=eye,
        lidar2ego=eye.clone(),
        frame_valid=torch.ones(1, 1, dtype=torch.bool),
        scene_tokens=[[f"s{i}"]],
        sample_tokens=[f"t{i}"],
        timestamps=torch.zeros(1, 1, dtype=torch.int64),
        img_hw=(8, 8),
        gt_boxes=[torch.randn(3, 9, generator=g)],
        gt_labels=[torch.arange(3)],
    )


def _check(device: str, pin: bool) -> None:
    batches = [_batch(i) for i in range(4)]
    source = [b.pin_memory() if pin else b for b in batches]
    got = list(device_prefetch(iter(source), device))
    assert [b.sample_tokens for b in got] == [b.sample_tokens for b in batches]
    for g, want in zip(got, batches, strict=True):
        assert g.images.device.type == torch.device(device).type
        assert g.frame_valid.device.type == "cpu"  # host fields stay on the host
        torch.testing.assert_close(g.images.cpu(), want.images, rtol=0, atol=0)
        torch.testing.assert_close(g.gt_boxes[0].cpu(), want.gt_boxes[0], rtol=0, atol=0)
        torch.testing.assert_close(g.lidar2img.cpu(), want.lidar2img, rtol=0, atol=0)


def test_prefetch_on_the_cpu_is_to():
    _check("cpu", pin=False)
    assert list(device_prefetch([], "cpu")) == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_prefetch_on_cuda_overlaps_and_keeps_values():
    _check("cuda", pin=True)
    assert list(device_prefetch([], "cuda")) == []
    # the consumer's work on a batch and the next copy: values stay intact while both run
    batches = [_batch(i).pin_memory() for i in range(3)]
    sums = []
    for b in device_prefetch(batches, "cuda"):
        x = b.images
        for _ in range(50):  # keep the compute stream busy while the next copy runs
            x = x * 1.0001
        sums.append(float(x.sum()))
    want = [float((b.images.cuda() * 1.0001**50).sum()) for b in batches]
    assert sums == pytest.approx(want, rel=1e-5)
