"""viz/video.py: frames -> GIF (Pillow) or MP4 (OpenCV when importable)."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from bevforge.viz.video import write_video


def _frames(tmp_path: Path) -> list[Path]:
    paths = []
    for i, color in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        p = tmp_path / f"f{i}.png"
        Image.new("RGB", (32, 24), color).save(p)
        paths.append(p)
    return paths


def test_viz_video_gif_fallback_keeps_frames(tmp_path: Path) -> None:
    path = write_video(_frames(tmp_path), tmp_path / "clip", fps=4, force_gif=True)
    assert path.suffix == ".gif"
    gif = Image.open(path)
    assert gif.n_frames == 3
    gif.seek(1)
    r, g, b = gif.convert("RGB").getpixel((5, 5))
    assert g > 200 and r < 50 and b < 50


def test_viz_video_mp4_when_opencv(tmp_path: Path) -> None:
    pytest.importorskip("cv2")
    path = write_video(_frames(tmp_path), tmp_path / "clip", fps=4)
    assert path.suffix in (".mp4", ".gif") and path.stat().st_size > 0


def test_viz_video_no_frames(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no frames"):
        write_video([], tmp_path / "clip")
