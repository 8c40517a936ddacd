"""The image tail of the data pipeline on the training device (``data.images_on_device``).

Shape letters: B batch, T frames, N cameras, H/W padded image size.

With ``data.images_on_device`` the training loader stops after the resize (or BEVDet's warp): it ships
the images as uint8 RGB, zero-padded, with each image's photometric draw
(:func:`bevforge.data.transforms.draw_photometric`), and :func:`finish_images` does the rest on the
device, batched: photometric distortion (:func:`bevforge.data.transforms.apply_photometric`, the
pure-torch twin of the CPU path), RGB -> BGR when ``to_rgb`` is false, ``(x - mean) / std``, zero padding
and zero padding frames. The result is the float batch the CPU path makes (the same numbers as its
pure-torch HSV steps; OpenCV's HSV conversion, the CPU default, differs in float rounding).

Why: the CPU workers' float passes (photometric + normalise, ~10 per image) are most of a worker's time
once decoding is cheap (scale-on-decode, the image cache), and a uint8 batch is a quarter of the bytes
through worker IPC, pinning and the host->device copy (a BEVFormer-base sample: 0.1 GB, not 0.4 GB).
On CUDA the finishing is one Triton pass (one uint8 read, one fp32 write per value) instead of the torch
path's ~50 elementwise passes.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from bevforge.config import DataConfig
from bevforge.data.transforms import apply_photometric, normalize
from bevforge.ops.dispatch import LazyOp, kernel_choice, placement_ineligible_reason, select_kernel
from bevforge.structures.batch import Batch

_FINISH_OP = LazyOp("bevforge.ops.images.triton_finish", "finish_images_kernel", "finish-images")


def finish_images(batch: Batch, data: DataConfig) -> Batch:
    """``batch`` with uint8 images (from a ``data.images_on_device`` loader, on any device) turned into
    the model's normalised float images; a batch of float images is returned as it is.

    On CUDA (``BEVFORGE_KERNELS=auto|triton``) one Triton pass does it all
    (:mod:`bevforge.ops.images.triton_finish`); elsewhere the torch path below, its reference."""
    if batch.images.dtype != torch.uint8:
        return batch
    images = batch.images  # [B, T, N, 3, H, W] uint8
    dev = images.device
    h, w = batch.img_hw
    params = None  # [B*T*N, 6] photometric draws
    if batch.photometric is not None:
        params = batch.photometric.to(dev).flatten(0, 2)
    keep = None  # [B, T] False = padding frame (a zero image); None = every frame real
    if not bool(batch.frame_valid.all()):  # host-side flags: no device sync
        keep = batch.frame_valid.to(dev, non_blocking=True)
    mean, std = tuple(data.img_mean), tuple(data.img_std)
    choice = kernel_choice()
    if choice != "reference":
        reason = placement_ineligible_reason([images], "torch path")
        if reason is None and images.numel() > 2**31 - 1:
            reason = "more than 2**31 values (the kernel indexes with int32)"
        kernel = select_kernel(choice, _FINISH_OP, reason, "Triton image finishing kernel")
        if kernel is not None:
            B, T, N = images.shape[:3]
            keep_img = keep[:, :, None].expand(B, T, N).reshape(-1) if keep is not None else None  # [B*T*N]
            out = kernel(images.flatten(0, 2), params, keep_img, (h, w), mean, std, not data.to_rgb)
            return replace(batch, images=out.view(images.shape), photometric=None)
    x = images.float()  # [B, T, N, 3, H, W]
    if params is not None:
        x = apply_photometric(x.flatten(0, 2), params).view(x.shape)  # [B*T*N, 3, H, W] -> back
    x = normalize(x, mean, std, data.to_rgb)  # the CPU path's flip, sub_(mean).div_(std)
    x[..., h:, :] = 0.0  # padding stays zero, as the CPU path's
    x[..., :h, w:] = 0.0
    if keep is not None:
        x = x.masked_fill(~keep[:, :, None, None, None, None], 0.0)  # padding frames are zero images
    return replace(batch, images=x, photometric=None)
