"""Headless visualisation: BEV panels, camera projections, videos and the HTML run report."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path


def render_results(*args: Any, **kwargs: Any) -> list[Path]:
    """See :func:`bevforge.viz.results.render_results` (imported lazily: Pillow/pyquaternion)."""
    from bevforge.viz.results import render_results as _render

    return _render(*args, **kwargs)


__all__ = ["render_results"]
