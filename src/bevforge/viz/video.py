"""Frames -> a video: MP4 through OpenCV when ``cv2`` imports, else an animated GIF through Pillow."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image


def _have_cv2() -> bool:
    try:
        import cv2  # noqa: F401
    except ImportError:
        return False
    return True


def write_video(
    frames: Sequence[str | Path], out_stem: str | Path, fps: float = 2.0, force_gif: bool = False
) -> Path:
    """Write ``frames`` (image files, all resized to the first one's size) to ``out_stem`` + .mp4 / .gif.

    Returns the path written. MP4 needs OpenCV (``cv2``, codec ``mp4v``); without it (or with
    ``force_gif``) an animated GIF is written with Pillow.
    """
    if not frames:
        raise ValueError("write_video: no frames given")
    stem = Path(out_stem)
    first = Image.open(frames[0]).convert("RGB")
    size = first.size
    if _have_cv2() and not force_gif:
        import cv2

        path = stem.with_suffix(".mp4")
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
        if writer.isOpened():
            try:
                for f in frames:
                    rgb = np.asarray(Image.open(f).convert("RGB").resize(size))
                    writer.write(rgb[:, :, ::-1].copy())  # OpenCV wants BGR
            finally:
                writer.release()
            if path.is_file() and path.stat().st_size > 0:
                return path
    path = stem.with_suffix(".gif")
    images = [Image.open(f).convert("RGB").resize(size) for f in frames]
    images[0].save(
        path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0, optimize=False
    )
    return path
