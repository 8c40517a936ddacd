"""Atomic writes: content, permissions, and no torn file when the writer dies."""

import os
import stat

import pytest

from bevforge.io import atomic_write, atomic_write_json, atomic_write_text


def test_atomic_write_content_and_mode(tmp_path):
    path = atomic_write_text(tmp_path / "a" / "b.txt", "hello")
    assert path.read_text() == "hello"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask
    atomic_write_json(path, {"x": 1})
    assert path.read_text() == '{"x": 1}'


def test_failed_write_keeps_previous_file(tmp_path):
    path = atomic_write_text(tmp_path / "keep.txt", "good")

    def boom(f):
        f.write(b"partial")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        atomic_write(path, boom)
    assert path.read_text() == "good"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]  # no temp file left behind
