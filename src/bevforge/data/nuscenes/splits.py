"""Which scenes belong to which split of a nuScenes-format dataset."""

from __future__ import annotations

import json
from pathlib import Path


def split_scene_names(data_root: str | Path, version: str) -> dict[str, list[str]]:
    """Our split name -> scene names.

    ``v1.0-mini``: train = mini_train, val = mini_val; ``v1.0-trainval``: train / val; ``v1.0-test``:
    test. A ``<data_root>/<version>/splits.json`` (the devkit's custom-split file, ``{name: [scenes]}``)
    takes precedence, so a synthetic dataset can define its own train/val.
    """
    custom = Path(data_root) / version / "splits.json"
    if custom.is_file():
        try:
            data = json.loads(custom.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{custom}: not valid JSON ({e}); fix or delete the file") from None
        if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
            raise ValueError(f"{custom}: expected {{split_name: [scene names]}}; fix or delete the file")
        return {str(k): [str(s) for s in v] for k, v in data.items()}
    # imported here: the devkit package pulls in sklearn and matplotlib (~1 s), not needed with splits.json
    from nuscenes.utils.splits import create_splits_scenes

    scenes = create_splits_scenes()
    if version.endswith("mini"):
        return {"train": scenes["mini_train"], "val": scenes["mini_val"]}
    if version.endswith("trainval"):
        return {"train": scenes["train"], "val": scenes["val"]}
    if version.endswith("test"):
        return {"test": scenes["test"]}
    raise ValueError(
        f"unknown nuScenes version {version!r}: expected v1.0-mini, v1.0-trainval or v1.0-test, or add "
        f"{custom} with {{split: [scene names]}}"
    )
