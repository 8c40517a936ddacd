"""``generate``: write a synthetic dataset in the exact nuScenes on-disk format.

Layout under ``out_dir`` (the nuScenes ``dataroot``)::

    <version>/*.json            the 13 tables
    samples/<CHANNEL>/*.jpg     rendered cameras;  samples/LIDAR_TOP/*.pcd.bin
    maps/<token>.png            semantic prior;    maps/expansion/<location>.json
    can_bus/<scene>_*.json      CAN bus expansion (``NuScenesCanBus(dataroot=out_dir)``)

Scenes are generated in parallel worker processes; the result only depends on the arguments.
"""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

from nuscenes.utils.splits import create_splits_scenes

from bevforge.data.nuscenes.schema import TABLES
from bevforge.data.synthetic import roads
from bevforge.data.synthetic.catalog import ATTRIBUTES, CATEGORIES, VISIBILITIES
from bevforge.data.synthetic.maps import MAP_TOKENS, write_expansion, write_mask_png
from bevforge.data.synthetic.rig import all_calibs
from bevforge.data.synthetic.scene import SceneJob, generate_scene
from bevforge.data.synthetic.tokens import shared_token
from bevforge.errors import InputError
from bevforge.io import atomic_write_text

VERSIONS = ("v1.0-mini", "v1.0-trainval")
#: scene i is driven in LOCATIONS[i % 2] (same road grid, its own map files): loaders must pick the map
#: by the log's location, as with real nuScenes. (location, vehicle, UTC offset) like the real logs.
LOCATIONS: tuple[tuple[str, str, str], ...] = (
    ("singapore-onenorth", "n015", "+0800"),
    ("boston-seaport", "n008", "-0400"),
)


class SynthSettingsError(InputError, ValueError):
    """A generator setting out of range (scene count, frames per scene, image size, version)."""


_CAN_BLACKLIST = set(range(161, 169)) | set(range(170, 177)) | set(range(309, 315))
_START = dt.datetime(2018, 7, 24, 11, 22, 45, tzinfo=dt.timezone(dt.timedelta(hours=8)))
_SCENE_GAP_S = 60


def scene_names(version: str, num_scenes: int) -> tuple[list[str], list[str]]:
    """(train names, val names) from the devkit's official lists: mini_train/mini_val for v1.0-mini,
    train/val for v1.0-trainval; about 20 % val, at least one of each when num_scenes >= 2."""
    if version not in VERSIONS:
        raise SynthSettingsError(f"version (--version) must be one of {VERSIONS}, got {version!r}")
    if num_scenes < 1:
        raise SynthSettingsError(f"num_scenes (--scenes) must be >= 1, got {num_scenes}")
    splits = create_splits_scenes()
    train_key, val_key = ("mini_train", "mini_val") if version == "v1.0-mini" else ("train", "val")

    def usable(names: list[str]) -> list[str]:
        return [s for s in names if int(s.split("-")[1]) not in _CAN_BLACKLIST]

    train_all, val_all = usable(splits[train_key]), usable(splits[val_key])
    n_val = 0 if num_scenes == 1 else max(1, round(0.2 * num_scenes))
    n_train = num_scenes - n_val
    if n_train > len(train_all) or n_val > len(val_all):
        raise SynthSettingsError(
            f"{version} has only {len(train_all)} train + {len(val_all)} val scene names; asked for "
            f"{num_scenes} scenes ({n_train} train + {n_val} val). Use --version v1.0-trainval for more."
        )
    return train_all[:n_train], val_all[:n_val]


def _static_tables(seed: int, image_wh: tuple[int, int]) -> dict[str, list[dict]]:
    return {
        "category": [
            {"token": shared_token("category", name), "name": name, "description": desc, "index": idx}
            for name, idx, desc in CATEGORIES
        ],
        "attribute": [
            {"token": shared_token("attribute", name), "name": name, "description": desc}
            for name, desc in ATTRIBUTES
        ],
        "visibility": [{"token": t, "level": lvl, "description": d} for t, lvl, d in VISIBILITIES],
        "sensor": [
            {"token": shared_token("sensor", c.channel), "channel": c.channel, "modality": c.modality}
            for c in all_calibs(image_wh)
        ],
    }


def generate(
    out_dir: str | Path,
    num_scenes: int = 10,
    samples_per_scene: int = 20,
    seed: int = 0,
    image_wh: tuple[int, int] = (400, 225),
    version: str = "v1.0-mini",
    workers: int | None = None,
    verbose: bool = True,
) -> Path:
    """Write a synthetic nuScenes-format dataset to ``out_dir`` and return ``out_dir``.

    ``image_wh`` = (width, height) pixels; ``workers`` processes (default: min(cpus, scenes); 1 runs
    in this process). Scene names come from the devkit split lists of ``version`` (see
    :func:`scene_names`), so the devkit's own splits (mini_train/mini_val or train/val) work.
    """
    if samples_per_scene < 2:
        raise SynthSettingsError(
            f"samples_per_scene (--samples-per-scene) must be >= 2, got {samples_per_scene}"
        )
    w, h = int(image_wh[0]), int(image_wh[1])
    if w < 16 or h < 16:
        raise SynthSettingsError(f"image_wh (--size) must be at least 16x16 pixels, got {image_wh}")
    train, val = scene_names(version, num_scenes)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    grid = roads.make_grid()
    jobs = []
    scene_span_s = samples_per_scene * 0.5 + _SCENE_GAP_S
    for i, name in enumerate(train + val):
        start = _START + dt.timedelta(seconds=i * scene_span_s)
        start_us = int(start.timestamp() * 1e6)
        location, vehicle, utc_offset = LOCATIONS[i % len(LOCATIONS)]
        logfile = f"{vehicle}-" + start.strftime("%Y-%m-%d-%H-%M-%S") + utc_offset
        jobs.append(
            SceneJob(
                seed,
                i,
                name,
                str(out),
                samples_per_scene,
                (w, h),
                start_us,
                location,
                logfile,
                start.strftime("%Y-%m-%d"),
                grid,
            )
        )
    t0 = time.time()
    n_workers = workers or min(os.cpu_count() or 1, len(jobs))
    results: list[dict[str, list[dict]]] = []
    if n_workers <= 1:
        for job in jobs:
            results.append(generate_scene(job))
            _progress(verbose, len(results), len(jobs), t0)
    else:
        ctx = mp.get_context("fork" if sys.platform.startswith("linux") else "spawn")
        with ctx.Pool(n_workers) as pool:
            for res in pool.imap(generate_scene, jobs):
                results.append(res)
                _progress(verbose, len(results), len(jobs), t0)

    tables = _static_tables(seed, (w, h))
    for name in (
        "instance",
        "calibrated_sensor",
        "ego_pose",
        "log",
        "scene",
        "sample",
        "sample_data",
        "sample_annotation",
    ):
        tables[name] = [row for res in results for row in res[name]]
    written: list[Path] = []
    tables["map"] = []
    for location, _, _ in LOCATIONS:
        logs = [r["token"] for r in tables["log"] if r["location"] == location]
        if not logs:
            continue
        map_tok = MAP_TOKENS[location]
        tables["map"].append(
            {
                "token": map_tok,
                "log_tokens": logs,
                "category": "semantic_prior",
                "filename": f"maps/{map_tok}.png",
            }
        )
        png = write_mask_png(out / "maps" / f"{map_tok}.png", grid)
        expansion = write_expansion(out / "maps" / "expansion" / f"{location}.json", grid, seed, location)
        written += [png, expansion]
    for name in TABLES:
        written.append(atomic_write_text(out / version / f"{name}.json", json.dumps(tables[name], indent=0)))
    for path in written:
        path.chmod(0o644)  # atomic writes create 0600 temp files; a dataset is meant to be shared
    if verbose:
        n_ann = len(tables["sample_annotation"])
        print(
            f"synth: wrote {len(jobs)} scenes ({len(train)} train, {len(val)} val), "
            f"{len(tables['sample'])} samples, {n_ann} annotations to {out} in {time.time() - t0:.1f}s",
            flush=True,
        )
    return out


def _progress(verbose: bool, done: int, total: int, t0: float) -> None:
    if verbose:
        print(f"synth: scene {done}/{total} done ({time.time() - t0:.1f}s)", flush=True)
