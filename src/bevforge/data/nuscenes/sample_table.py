"""Compact, fork-friendly storage of the per-sample info the dataset needs (numpy arrays, no dicts).

Shape letters: S samples, N cameras, A annotations (all samples concatenated).

A list of per-sample dicts costs millions of Python objects for nuScenes trainval (~28k samples x
6 cameras x 4 matrices, ~1M boxes); every DataLoader worker touching them copies the pages (refcounts
are writes). Numpy arrays (strings as fixed-width numpy strings) are shared copy-on-write for free.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class SampleTable:
    tokens: np.ndarray  # [S] str
    scene_tokens: np.ndarray  # [S] str
    scene_ids: np.ndarray  # [S] int64, 0.. in order of first appearance
    locations: np.ndarray  # [S] str
    timestamps: np.ndarray  # [S] int64 microseconds
    can_bus: np.ndarray  # [S, 18] float64
    ego2global: np.ndarray  # [S, 4, 4] float64
    lidar2ego: np.ndarray  # [S, 4, 4] float64
    cam_paths: np.ndarray  # [S, N] str, relative to the data root
    cam_wh: np.ndarray  # [S, N, 2] int64 raw image (width, height)
    lidar2img: np.ndarray  # [S, N, 4, 4] float64 for the raw image size
    gt_offsets: np.ndarray  # [S + 1] int64: sample i owns annotations gt_offsets[i]:gt_offsets[i+1]
    gt_boxes: np.ndarray  # [A, 9] float64 (structures/boxes.py)
    gt_labels: np.ndarray  # [A] int64 index into `classes`, -1 = not a detection class
    gt_valid: np.ndarray  # [A] bool

    @classmethod
    def from_samples(
        cls, samples: Sequence[dict], cameras: Sequence[str], classes: Sequence[str]
    ) -> SampleTable:
        index = {c: k for k, c in enumerate(classes)}
        scene_ids: dict[str, int] = {}
        counts = [len(s["gt"]["boxes"]) for s in samples]
        boxes = [b for s in samples for b in s["gt"]["boxes"]]
        return cls(
            tokens=np.array([s["token"] for s in samples]),
            scene_tokens=np.array([s["scene_token"] for s in samples]),
            scene_ids=np.array([scene_ids.setdefault(s["scene_token"], len(scene_ids)) for s in samples]),
            locations=np.array([s["location"] for s in samples]),
            timestamps=np.array([s["timestamp"] for s in samples], dtype=np.int64),
            can_bus=np.array([s["can_bus"] for s in samples], dtype=np.float64).reshape(-1, 18),
            ego2global=np.array([s["ego2global"] for s in samples], dtype=np.float64).reshape(-1, 4, 4),
            lidar2ego=np.array([s["lidar2ego"] for s in samples], dtype=np.float64).reshape(-1, 4, 4),
            cam_paths=np.array([[s["cams"][c]["path"] for c in cameras] for s in samples]),
            cam_wh=np.array(
                [[(s["cams"][c]["width"], s["cams"][c]["height"]) for c in cameras] for s in samples],
                dtype=np.int64,
            ).reshape(-1, len(cameras), 2),
            lidar2img=np.array(
                [[s["cams"][c]["lidar2img"] for c in cameras] for s in samples], dtype=np.float64
            ).reshape(-1, len(cameras), 4, 4),
            gt_offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            gt_boxes=np.array(boxes, dtype=np.float64).reshape(-1, 9),
            gt_labels=np.array([index.get(n, -1) for s in samples for n in s["gt"]["names"]], dtype=np.int64),
            gt_valid=np.array([v for s in samples for v in s["gt"]["valid"]], dtype=bool),
        )

    def __len__(self) -> int:
        return len(self.tokens)

    def gt(self, i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(boxes [M, 9], labels [M], valid [M]) of sample ``i``."""
        a, b = self.gt_offsets[i], self.gt_offsets[i + 1]
        return self.gt_boxes[a:b], self.gt_labels[a:b], self.gt_valid[a:b]
