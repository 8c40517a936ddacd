"""On-disk cache of the ground truth read from the nuScenes tables (repeated evaluation of one split).

:func:`bevforge.eval.gt.load_gt_from_db` joins sample -> sample_annotation -> instance -> category /
attribute and the LIDAR_TOP ego poses from the table JSONs; on the real trainval tables that is seconds
per call. The result is kept as one ``.npz`` per (data root, version, split) under the cache folder:

- folder: ``$BEVFORGE_GT_CACHE`` if set (``0`` / ``off`` disables the cache), else
  ``$XDG_CACHE_HOME/bevforge/gt`` (``~/.cache/bevforge/gt``);
- valid only while every table file read (and ``splits.json``) has the same path, size, mtime and inode,
  the split has the same scene names and the cache format is the same; otherwise it is rebuilt and
  overwritten (one file per data root/version/split, never more);
- written atomically; a cache that cannot be read or written is ignored (the tables are read instead);
- small databases (tables under :data:`MIN_TABLE_BYTES` in total, e.g. test fixtures) are not cached.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np

from bevforge.eval.box_table import BoxTable, GroundTruth
from bevforge.io import atomic_write_bytes

FORMAT = 1  # bump when load_gt_from_db's output changes
MIN_TABLE_BYTES = 1 << 20  # tables smaller than this load faster than the cache bookkeeping pays off


def cache_folder(cache: bool | str | Path = True) -> Path | None:
    """The cache folder for ``cache`` (True: environment / default, False: none, a path: that folder)."""
    if cache is False:
        return None
    if cache is not True:
        return Path(cache)
    env = os.environ.get("BEVFORGE_GT_CACHE")
    if env is not None:
        return None if env.strip().lower() in ("", "0", "off", "false", "no") else Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "bevforge" / "gt"


def validity_key(files: list[Path], split: str, scenes: list[str]) -> str | None:
    """What the cached ground truth depends on, or None if a file is missing / the tables are small."""
    stats = []
    for f in files:
        try:
            st = f.stat()
        except OSError:
            if f.name == "splits.json":
                continue
            return None
        stats.append([str(f.resolve()), st.st_size, st.st_mtime_ns, st.st_ino])
    if sum(s[1] for s in stats) < MIN_TABLE_BYTES:
        return None
    return json.dumps({"format": FORMAT, "split": split, "scenes": sorted(scenes), "files": stats})


def cache_path(folder: Path, data_root: Path, version: str, split: str) -> Path:
    name = hashlib.sha256(f"{data_root.resolve()}|{version}|{split}".encode()).hexdigest()[:24]
    return folder / f"gt-{name}.npz"


def load(path: Path, key: str) -> GroundTruth | None:
    """The cached ground truth if ``path`` holds one for ``key``; None otherwise (or if unreadable)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["key"]) != key:
                return None
            tables = {
                part: BoxTable(**{f: z[f"{part}.{f}"] for f in BoxTable.__dataclass_fields__})
                for part in ("boxes", "racks")
            }
            return GroundTruth(
                sample_tokens=z["sample_tokens"].tolist(),
                ego_xyz=z["ego_xyz"],
                boxes=tables["boxes"],
                racks=tables["racks"],
                source=str(z["source"]),
            )
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):  # unreadable: read the tables
        return None


def save(path: Path, key: str, gt: GroundTruth) -> None:
    """Write ``gt`` for ``key`` (atomically); a failure only costs the next call a table read."""
    arrays = {
        "key": np.array(key),
        "source": np.array(gt.source),
        "sample_tokens": np.array(gt.sample_tokens, dtype=str),
        "ego_xyz": gt.ego_xyz,
    }
    for part in ("boxes", "racks"):
        table = getattr(gt, part)
        arrays.update({f"{part}.{f}": getattr(table, f) for f in BoxTable.__dataclass_fields__})
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    with contextlib.suppress(OSError):
        atomic_write_bytes(path, buf.getvalue())
