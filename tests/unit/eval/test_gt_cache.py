"""Ground truth cache: same GroundTruth as reading the tables, rebuilt when a table file changes."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from bevforge.eval import gt_cache
from bevforge.eval.box_table import BoxTable
from bevforge.eval.fake_db import write_fake_db
from bevforge.eval.gt import load_gt_from_db


def _equal(a, b) -> None:
    assert a.sample_tokens == b.sample_tokens and a.source == b.source
    np.testing.assert_array_equal(a.ego_xyz, b.ego_xyz)
    for part in ("boxes", "racks"):
        for name in BoxTable.__dataclass_fields__:
            x, y = getattr(getattr(a, part), name), getattr(getattr(b, part), name)
            assert x.dtype == y.dtype and x.shape == y.shape, (part, name)
            np.testing.assert_array_equal(x, y, err_msg=f"{part}.{name}")


@pytest.fixture()
def db(tmp_path, monkeypatch):
    torch.manual_seed(0)
    monkeypatch.setattr(gt_cache, "MIN_TABLE_BYTES", 0)
    info = write_fake_db(tmp_path / "db", num_scenes=2, samples_per_scene=3, objects_per_scene=25, seed=1)
    return tmp_path / "db", info


def _spy(monkeypatch) -> list[int]:
    """Counts the table reads behind load_gt_from_db."""
    import bevforge.eval.gt as gt_module

    reads: list[int] = []
    real = gt_module._read_gt_tables

    def counted(*args):
        reads.append(1)
        return real(*args)

    monkeypatch.setattr(gt_module, "_read_gt_tables", counted)
    return reads


def test_gt_cache_hit_equals_tables(db, tmp_path, monkeypatch):
    root, info = db
    reads = _spy(monkeypatch)
    fresh = load_gt_from_db(root, info["version"], info["split"], cache=False)
    first = load_gt_from_db(root, info["version"], info["split"], cache=tmp_path / "c")
    second = load_gt_from_db(root, info["version"], info["split"], cache=tmp_path / "c")
    assert len(reads) == 2  # uncached + the cache miss; the second cached call read no table
    assert len(list((tmp_path / "c").glob("gt-*.npz"))) == 1
    _equal(first, fresh)
    _equal(second, fresh)


def test_gt_cache_rebuilt_when_a_table_changes(db, tmp_path, monkeypatch):
    root, info = db
    cache = tmp_path / "c"
    reads = _spy(monkeypatch)
    before = load_gt_from_db(root, info["version"], info["split"], cache=cache)
    ann_path = root / info["version"] / "sample_annotation.json"
    anns = json.loads(ann_path.read_text())
    target = next(a for a in anns if a["sample_token"] == before.sample_tokens[0])
    target["translation"][0] += 1.5
    ann_path.write_text(json.dumps(anns))
    after = load_gt_from_db(root, info["version"], info["split"], cache=cache)
    assert len(reads) == 2
    _equal(after, load_gt_from_db(root, info["version"], info["split"], cache=False))
    assert not np.array_equal(before.boxes.translation, after.boxes.translation)
    # same content, new mtime (touch): rebuilt too, still one file for this split
    st = ann_path.stat()
    os.utime(ann_path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    load_gt_from_db(root, info["version"], info["split"], cache=cache)
    assert len(reads) == 4 and len(list(cache.glob("gt-*.npz"))) == 1


def test_gt_cache_broken_file_ignored_and_env_switch(db, tmp_path, monkeypatch):
    root, info = db
    cache = tmp_path / "c"
    gt = load_gt_from_db(root, info["version"], info["split"], cache=cache)
    (path,) = cache.glob("gt-*.npz")
    good = path.read_bytes()
    for broken in (b"not an npz", good[: len(good) // 2]):  # garbage, a torn zip
        path.write_bytes(broken)
        _equal(load_gt_from_db(root, info["version"], info["split"], cache=cache), gt)
    monkeypatch.setenv("BEVFORGE_GT_CACHE", "off")
    assert gt_cache.cache_folder(True) is None
    monkeypatch.setenv("BEVFORGE_GT_CACHE", str(tmp_path / "env"))
    assert gt_cache.cache_folder(True) == tmp_path / "env"
    load_gt_from_db(root, info["version"], info["split"])
    assert len(list((tmp_path / "env").glob("gt-*.npz"))) == 1
