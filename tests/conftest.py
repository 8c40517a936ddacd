"""Fixtures shared across the test tree."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def synthetic_data(tmp_path_factory) -> Callable[..., Path]:
    """``make(name, *, infos=True, **generate_kwargs) -> root``: a fresh synthetic nuScenes-format dataset
    (``bevforge.data.synthetic.generate``, in this process, quiet) in a new temporary directory named after
    ``name``, with our infos in ``root / "infos"`` unless ``infos=False``. Each call writes its own copy:
    tests may add files to it."""

    def make(name: str, *, infos: bool = True, **generate_kwargs) -> Path:
        from bevforge.data.nuscenes.prepare import create_infos
        from bevforge.data.synthetic.generate import generate

        kwargs = {"workers": 1, "verbose": False, **generate_kwargs}
        root = generate(tmp_path_factory.mktemp(name), **kwargs)
        if infos:
            create_infos(root, kwargs.get("version", "v1.0-mini"), root / "infos", log=lambda _: None)
        return root

    return make
