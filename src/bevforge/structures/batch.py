"""The typed batch that every model consumes (made by ``data/loader.py``'s collate).

Shape letters: B batch, T frames (oldest first, the current frame last), N cameras, M boxes,
S map-segmentation classes, H/W image or BEV size.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

#: fields ``Batch.to`` keeps on the CPU: Python-side bookkeeping, read with ``tolist()``
HOST_FIELDS = ("frame_valid",)


def require_finished_images(images: torch.Tensor) -> None:
    """Models take normalised float images: a uint8 batch (``data.images_on_device``) is not finished."""
    if images.dtype == torch.uint8:
        raise TypeError(
            "uint8 images reached the model: a data.images_on_device batch must go through "
            "bevforge.data.device_images.finish_images(batch, cfg.data) after batch.to(device)"
        )


@dataclass
class Batch:
    # [B, T, N, 3, H, W] float32, normalised, padded to the pad divisor; or uint8 RGB in [0, 255] straight
    # from the loader (data.images_on_device), which data/device_images.finish_images turns into the former
    images: torch.Tensor
    lidar2img: torch.Tensor  # [B, T, N, 4, 4] float32, maps lidar points to pixels of `images`
    can_bus: torch.Tensor  # [B, T, 18] float32, ABSOLUTE values (official layout); the model makes deltas
    ego2global: torch.Tensor  # [B, T, 4, 4] float64
    lidar2ego: torch.Tensor  # [B, T, 4, 4] float64
    # [B, T] bool; False = padding frame (queue reached before the data start). Host-side bookkeeping like
    # scene_tokens: `to()` leaves it on the CPU (reading it on a GPU would be a device sync per frame)
    frame_valid: torch.Tensor
    scene_tokens: list[list[str]]  # [B][T] scene of every frame (a change resets temporal state)
    sample_tokens: list[str]  # [B] the current frame's sample token
    timestamps: torch.Tensor  # [B, T] int64 microseconds
    img_hw: tuple[int, int]  # (H, W) of the un-padded resized images (the valid region)
    gt_boxes: list[torch.Tensor]  # B x [M_b, 9] current frame, lidar frame (structures/boxes.py)
    gt_labels: list[torch.Tensor]  # B x [M_b] int64 class index into DataConfig.classes
    seg_target: torch.Tensor | None = None  # [B, S, bev_h, bev_w] float32 {0,1}, row = y, col = x
    # [B, N, fH, fW] float32 metres, nearest lidar depth per image-feature cell of the current frame, 0 = none
    # (data/depth_targets.py; only for BEVDet depth supervision in training)
    depth_gt: torch.Tensor | None = None
    # [B, T, N, 6] float32 each uint8 image's photometric draw (data/transforms.draw_photometric), applied
    # on the device by finish_images; None = no distortion (or images already finished)
    photometric: torch.Tensor | None = None

    @property
    def batch_size(self) -> int:
        return self.images.shape[0]

    @property
    def num_frames(self) -> int:
        return self.images.shape[1]

    def to(self, device: torch.device | str, non_blocking: bool = True) -> Batch:
        """Every tensor on ``device`` except the host-side :data:`HOST_FIELDS`."""
        moved = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name in HOST_FIELDS:
                continue
            if isinstance(v, torch.Tensor):
                moved[f.name] = v.to(device, non_blocking=non_blocking)
            elif isinstance(v, list) and v and isinstance(v[0], torch.Tensor):
                moved[f.name] = [t.to(device, non_blocking=non_blocking) for t in v]
        return replace(self, **moved)

    def pin_memory(self) -> Batch:
        pinned = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                pinned[f.name] = v.pin_memory()
        return replace(self, **pinned)

    def frame(self, t: int) -> Batch:
        """The single-frame batch of frame ``t`` (T = 1); ground truth stays that of the current frame."""
        sl = slice(t, t + 1) if t >= 0 else slice(self.num_frames + t, self.num_frames + t + 1)
        return replace(
            self,
            images=self.images[:, sl],
            lidar2img=self.lidar2img[:, sl],
            can_bus=self.can_bus[:, sl],
            ego2global=self.ego2global[:, sl],
            lidar2ego=self.lidar2ego[:, sl],
            frame_valid=self.frame_valid[:, sl],
            scene_tokens=[s[sl] for s in self.scene_tokens],
            timestamps=self.timestamps[:, sl],
            photometric=self.photometric[:, sl] if self.photometric is not None else None,
        )
