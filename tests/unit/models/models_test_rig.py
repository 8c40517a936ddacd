"""A camera rig for model tests: one pinhole camera every 360/N degrees, 1.5 m up, looking outward."""

from __future__ import annotations

import math

import torch


def ring_lidar2img(num_cams: int = 6, h: int = 64, w: int = 96) -> torch.Tensor:
    """``[N, 4, 4]`` lidar -> pixels of an ``h x w`` image; focal ``w / 2``, centred principal point."""
    mats = []
    for i in range(num_cams):
        yaw = 2 * math.pi * i / num_cams
        # rows: camera x (right), camera y (down), camera z (forward) in the lidar frame
        rot = torch.tensor(
            [[math.cos(yaw), math.sin(yaw), 0.0], [0.0, 0.0, -1.0], [-math.sin(yaw), math.cos(yaw), 0.0]]
        )
        ext = torch.eye(4)
        ext[:3, :3] = rot
        ext[:3, 3] = -rot @ torch.tensor([0.0, 0.0, 1.5])
        intr = torch.eye(4)
        intr[0, 0] = intr[1, 1] = w / 2
        intr[0, 2], intr[1, 2] = w / 2, h / 2
        mats.append(intr @ ext)
    return torch.stack(mats)  # [N, 4, 4]
