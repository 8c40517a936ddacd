"""Deterministic 32-hex tokens (like real nuScenes) derived from the seed and a record's identity."""

from __future__ import annotations

import hashlib


def token(seed: int, *parts: object) -> str:
    key = "|".join(["bevforge-synth", str(seed), *(str(p) for p in parts)])
    return hashlib.md5(key.encode("utf-8")).hexdigest()


def shared_token(*parts: object) -> str:
    """Token of a seed-independent record (sensor, category, attribute)."""
    return token(-1, *parts)
