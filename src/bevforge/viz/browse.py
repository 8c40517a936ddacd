"""Ground truth drawn on the images *after* the training pipeline's transforms (``bevforge browse``).

If resizing/cropping/flipping changed the images without updating ``lidar2img`` (or the boxes), the
red boxes stop hugging the objects: this is the check. Shape letters: B batch, T frames, N cameras,
H/W padded image size, M boxes.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path

import torch
from PIL import Image

from bevforge.config import Config
from bevforge.structures.batch import Batch
from bevforge.viz.bev import GT_COLOR, BevView, render_bev
from bevforge.viz.cameras import compose_cameras, compose_sample, draw_boxes_camera


def denormalize(
    images: torch.Tensor,
    img_mean: Sequence[float],
    img_std: Sequence[float],
    to_rgb: bool,
    img_hw: tuple[int, int] | None = None,
) -> list[Image.Image]:
    """[N, 3, H, W] normalised images -> N RGB uint8 Pillow images, cropped to the valid ``img_hw``.

    Undoes ``(x - mean) / std`` in the tensor's channel order: RGB when ``to_rgb`` else BGR.
    """
    assert images.ndim == 4 and images.shape[1] == 3, f"expected [N, 3, H, W], got {tuple(images.shape)}"
    mean = torch.tensor(img_mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(img_std, dtype=torch.float32).view(1, 3, 1, 1)
    x = images.detach().float().cpu() * std + mean  # [N, 3, H, W] 0..255
    if not to_rgb:
        x = x.flip(1)  # BGR -> RGB
    if img_hw is not None:
        x = x[:, :, : img_hw[0], : img_hw[1]]
    arr = x.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # [N, H, W, 3]
    return [Image.fromarray(a, "RGB") for a in arr]


def batch_camera_images(
    batch: Batch,
    b: int,
    cameras: Sequence[str],
    img_mean: Sequence[float],
    img_std: Sequence[float],
    to_rgb: bool,
    line_px: int = 2,
) -> dict[str, Image.Image]:
    """Camera images of element ``b``'s current frame (T-1) with its GT boxes drawn red."""
    t = batch.num_frames - 1
    imgs = denormalize(batch.images[b, t], img_mean, img_std, to_rgb, batch.img_hw)
    boxes = batch.gt_boxes[b].detach().cpu().double().numpy()  # [M, 9]
    l2i = batch.lidar2img[b, t].detach().cpu().double().numpy()  # [N, 4, 4]
    if len(cameras) != len(imgs):
        raise ValueError(f"batch has {len(imgs)} cameras but the config lists {len(cameras)}: {cameras}")
    out = {}
    for n, cam in enumerate(cameras):
        draw_boxes_camera(imgs[n], boxes, l2i[n], GT_COLOR, width=line_px)
        out[cam] = imgs[n]
    return out


def render_batch(batch: Batch, cfg: Config, tile_w: int = 400) -> list[tuple[str, Image.Image]]:
    """(sample token, BEV + cameras picture) for every element of ``batch``, ground truth only."""
    d = cfg.data
    pc = d.point_cloud_range
    out = []
    for b in range(batch.batch_size):
        line_px = max(1, round(2 * batch.img_hw[1] / tile_w))  # ~2 px once resized to tile_w
        images = batch_camera_images(batch, b, d.cameras, d.img_mean, d.img_std, d.to_rgb, line_px)
        grid = compose_cameras(images, tile_w=tile_w)
        view = BevView(range_m=max(abs(float(v)) for v in (pc[0], pc[1], pc[3], pc[4])), size_px=grid.height)
        seg = batch.seg_target[b].cpu().numpy() if batch.seg_target is not None else None
        bev = render_bev(
            view,
            gt_boxes=batch.gt_boxes[b].detach().cpu().double().numpy(),
            seg_gt=seg,
            point_cloud_range=pc,
        )
        token = batch.sample_tokens[b]
        title = f"{token}  GT after the training transforms (red)  T={batch.num_frames}"
        out.append((token, compose_sample(bev, grid, title=title)))
    return out


def browse(
    cfg: Config, out_dir: str | Path, num: int = 8, split: str = "train", shuffle: bool = False
) -> list[Path]:
    """Write ``out_dir/<token>.png`` for the first ``num`` training samples of ``split``."""
    from bevforge.data.loader import build_dataloader

    cfg = copy.deepcopy(cfg)
    cfg.data.images_on_device = False  # the workers' float path: the same augmentation, images ready to draw
    loader = build_dataloader(cfg, split, train=True, batch_size=1, shuffle=shuffle)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for batch in loader:
        for token, img in render_batch(batch, cfg):
            path = out / f"{token}.png"
            img.save(path)
            written.append(path)
            if len(written) >= num:
                return written
    return written


__all__ = ["batch_camera_images", "browse", "denormalize", "render_batch"]
