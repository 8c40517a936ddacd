"""Column reader of submission files == the general path (orjson + parse_submission), or it steps aside."""

from __future__ import annotations

import copy
import json
import random
import re

import numpy as np
import orjson
import pytest
import torch

from bevforge.eval.box_table import ATTRIBUTE_NAMES, DETECTION_NAMES, BoxTable, GroundTruth
from bevforge.eval.nuscenes_det import SubmissionError, evaluate, parse_submission, read_submission
from bevforge.eval.submission_reader import read_submission_columns

KEYS = (
    "sample_token",
    "translation",
    "size",
    "rotation",
    "velocity",
    "detection_name",
    "detection_score",
    "attribute_name",
)


def _gt(n: int) -> GroundTruth:
    return GroundTruth([f"tok{i}" for i in range(n)], np.zeros((n, 3)), BoxTable(), BoxTable(), "unit")


def _box(rng: random.Random, tok: str, keys: tuple[str, ...] = KEYS, ints: bool = False) -> dict:
    def num() -> float | int:
        return rng.randint(-3, 3) if ints and rng.random() < 0.3 else rng.uniform(-60, 60)

    values = {
        "sample_token": tok,
        "translation": [num() for _ in range(3)],
        "size": [rng.uniform(0.1, 5) for _ in range(3)],
        "rotation": [num() for _ in range(4)],
        "velocity": [num() for _ in range(2)],
        "detection_name": rng.choice(DETECTION_NAMES),
        "detection_score": rng.random(),
        "attribute_name": rng.choice(["", *ATTRIBUTE_NAMES]),
        "num_pts": rng.randint(0, 9),
    }
    return {k: values[k] for k in keys}


def _submission(seed: int, n_samples: int = 5) -> dict:
    """Random valid submission: empty samples anywhere, 1..6 boxes, a random key order (string last)."""
    rng = random.Random(seed)
    last = rng.choice(["attribute_name", "detection_name", "sample_token"])
    keys = [k for k in KEYS if k != last] + (["num_pts"] if rng.random() < 0.3 else [])
    rng.shuffle(keys)
    keys = (*keys, last)
    order = [f"tok{i}" for i in range(n_samples)]
    rng.shuffle(order)
    ints = rng.random() < 0.3
    results = {}
    for tok in order:
        count = rng.choice([0, 0, 1, 2, 6])
        results[tok] = [_box(rng, tok, keys, ints) for _ in range(count)]
    if not any(results.values()):
        results[order[0]] = [_box(rng, order[0], keys, ints)]
    meta = {"use_camera": True, "use_lidar": False}
    return {"results": results, "meta": meta} if rng.random() < 0.2 else {"meta": meta, "results": results}


def _general(raw: bytes, gt: GroundTruth, tmp_path) -> tuple[BoxTable, object] | str:
    """The general path's table and meta, or its error message."""
    path = tmp_path / "general.json"
    path.write_bytes(raw)
    try:
        sub = orjson.loads(raw)
    except orjson.JSONDecodeError:
        try:
            sub = json.loads(raw)
        except json.JSONDecodeError:
            return "not valid JSON"
    try:
        return parse_submission(sub, gt, 500, str(path)), sub["meta"]
    except SubmissionError as e:
        return str(e)


def _same(fast: tuple[BoxTable, object], general: tuple[BoxTable, object]) -> None:
    for name in BoxTable.__dataclass_fields__:
        a, b = getattr(fast[0], name), getattr(general[0], name)
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(a, b, err_msg=name)
    assert fast[1] == general[1]


class _Outcomes(list):
    most = 0  # the most chunks of one read
    param: int | None = None


@pytest.fixture(params=[None, 1, 200], ids=["one-chunk", "chunk-per-sample", "chunks-200B"])
def chunks(request, monkeypatch):
    """Cut the bytes into chunks of at least ``param`` bytes (None: the default, one chunk on these small
    files); records what each chunked read returned (None: it declined, the one-chunk read decided)
    and the most chunks a read had (``.most``)."""
    from bevforge.eval import submission_reader

    if request.param is not None:
        monkeypatch.setattr(submission_reader, "CHUNK_BYTES", request.param)
    outcomes = _Outcomes()
    outcomes.param = request.param
    real_chunked, real_chunks = submission_reader._read_chunked, submission_reader._read_chunks

    def chunked(*args):
        outcomes.append(real_chunked(*args))
        return outcomes[-1]

    def chunks(raw, bounds, *args):
        outcomes.most = max(outcomes.most, len(bounds) - 1)
        return real_chunks(raw, bounds, *args)

    monkeypatch.setattr(submission_reader, "_read_chunked", chunked)
    monkeypatch.setattr(submission_reader, "_read_chunks", chunks)
    return outcomes


WRITERS = {
    "json": lambda s: json.dumps(s).encode(),
    "compact": lambda s: json.dumps(s, separators=(",", ":")).encode(),
    "orjson": orjson.dumps,
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_reader_equals_general_path_on_random_submissions(writer, chunks, tmp_path):
    torch.manual_seed(0)
    for seed in range(25):
        sub = _submission(seed)
        gt = _gt(5)
        raw = WRITERS[writer](sub)
        fast = read_submission_columns(raw, gt, 500)
        assert fast is not None and chunks[-1] is not None, (seed, raw[:300])  # read in chunks
        _same(fast, _general(raw, gt, tmp_path))
    assert (chunks.most > 2) == (chunks.param is not None)  # small chunk sizes did cut the files


def test_reader_cuts_outside_results_read_in_one_chunk(chunks, tmp_path):
    """Results before a meta that looks like sample ends: a cut there fails, the one-chunk read decides."""
    torch.manual_seed(0)
    sub = _big_submission(1)
    sub = {"results": sub["results"], "meta": {"a": [{}], "b": [{"c": []}], "d": [[]]}}
    raw, gt = json.dumps(sub).encode(), _gt(6)
    fast = read_submission_columns(raw, gt, 500)
    assert fast is not None
    assert chunks[-1] is None or chunks.param != 1  # a cut after every sample end: also in meta
    _same(fast, _general(raw, gt, tmp_path))


def test_reader_steps_aside_for_other_layouts(tmp_path):
    torch.manual_seed(0)
    sub, gt = _submission(3), _gt(5)
    sub["results"]["tok0"] = [_box(random.Random(0), "tok0")]
    for raw in (
        json.dumps(sub, indent=2).encode(),  # other whitespace
        json.dumps(sub, separators=(", ", ":")).encode(),
        json.dumps(sub, ensure_ascii=True).encode().replace(b'"tok0"', b'"\\u0074ok0"'),  # escapes
    ):
        assert read_submission_columns(raw, gt, 500) is None
        assert not isinstance(_general(raw, gt, tmp_path), str)  # still valid: the general path reads it


def _raw_mutations() -> list[tuple[str, object]]:
    """(name, bytes -> bytes) malformations of the text itself."""
    return [
        ("torn", lambda r: r[: len(r) // 2]),
        ("trailing", lambda r: r + b" x"),
        ("dup results", lambda r: r[:-1] + b', "results": 0}'),
        ("results in meta", lambda r: r.replace(b'"meta": {', b'"meta": {"results": 0, ', 1)),
        ("bracket in number", lambda r: r.replace(b'"size": [', b'"size": [[', 1)),
        ("missing comma", lambda r: r.replace(b", ", b" ", 1)),
        ("two numbers", lambda r: r.replace(b'"detection_score": ', b'"detection_score": 1 ', 1)),
        ("colon in list", lambda r: r.replace(b'"velocity": [', b'"velocity": [1: ', 1)),
        ("dup key", lambda r: r.replace(b'"rotation": ', b'"size": [1, 1, 1], "rotation": ', 1)),
        ("unknown key", lambda r: r.replace(b'"rotation": ', b'"foo": "bar", "rotation": ', 1)),
        ("width 4", lambda r: r.replace(b'"translation": [', b'"translation": [0.5, ', 1)),
        ("width 2", lambda r: r.replace(b'"velocity": [', b'"velocity": [0.5, ', 1)),
        ("null", lambda r: r.replace(b'"detection_score": ', b'"detection_score": null, "x": ', 1)),
        ("nan", lambda r: r.replace(b'"detection_score": ', b'"detection_score": NaN, "x": ', 1)),
        ("true", lambda r: re.sub(rb'"translation": \[[^,]*,', b'"translation": [true,', r, count=1)),
        ("quote in name", lambda r: r.replace(b'"detection_name": "', b'"detection_name": "x"', 1)),
        ("sample end", lambda r: r.replace(b"}], ", b"}]], ", 1)),
        ("empty list", lambda r: r.replace(b": [], ", b": [1], ", 1)),
    ]


def _dict_mutations() -> list[tuple[str, object]]:
    def box(s):
        return next(b for boxes in s["results"].values() for b in boxes)

    return [
        ("missing token", lambda s: s["results"].pop(next(iter(s["results"])))),
        ("extra token", lambda s: s["results"].__setitem__("other", [])),
        ("nan size", lambda s: box(s)["size"].__setitem__(1, float("nan"))),
        ("zero size", lambda s: box(s)["size"].__setitem__(0, 0.0)),
        ("inf score", lambda s: box(s).__setitem__("detection_score", float("inf"))),
        ("zero quaternion", lambda s: box(s).__setitem__("rotation", [0, 0, 0, 0])),
        ("unknown class", lambda s: box(s).__setitem__("detection_name", "tram")),
        ("unknown attribute", lambda s: box(s).__setitem__("attribute_name", "None")),
        ("missing key", lambda s: box(s).pop("rotation")),
        ("wrong token", lambda s: box(s).__setitem__("sample_token", "tok9")),
        ("string number", lambda s: box(s)["velocity"].__setitem__(0, "fast")),
        ("too many", lambda s: s["results"].__setitem__("tok0", [box(s)] * 501)),
        ("not a list", lambda s: s["results"].__setitem__("tok0", {})),
        ("no meta", lambda s: s.pop("meta")),
    ]


@pytest.mark.parametrize(("name", "mutate"), _dict_mutations() + _raw_mutations(), ids=lambda v: str(v)[:20])
def test_reader_malformed_same_outcome_as_general_path(name, mutate, chunks, tmp_path):
    """Every malformed file: the reader declines (or, if still valid, agrees), and read_submission
    raises exactly the general path's error."""
    torch.manual_seed(0)
    for seed in range(4):
        sub, gt = _submission(seed), _gt(5)
        if name in {m for m, _ in _dict_mutations()}:
            bad = copy.deepcopy(sub)
            mutate(bad)
            raw = json.dumps(bad).encode()
        else:
            raw = mutate(json.dumps(sub).encode())
        general = _general(raw, gt, tmp_path)
        fast = read_submission_columns(raw, gt, 500)
        if isinstance(general, str):
            assert fast is None, (name, seed)
            path = tmp_path / "general.json"
            with pytest.raises(SubmissionError) as e:
                read_submission(path, gt)
            assert general in str(e.value), (name, seed)
        elif fast is not None:
            _same(fast, general)


def test_reader_through_evaluate_equals_dict_path(tmp_path):
    torch.manual_seed(0)
    sub, gt = _submission(7), _gt(5)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(sub))
    assert read_submission_columns(path.read_bytes(), gt, 500) is not None
    from_file, from_dict = evaluate(path, gt), evaluate(sub, gt)
    from_file.pop("eval_time"), from_dict.pop("eval_time")
    assert json.dumps(from_file, sort_keys=True) == json.dumps(from_dict, sort_keys=True)


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_reader_random_byte_edits_never_accept_what_the_general_path_reads_otherwise(
    writer, chunks, tmp_path
):
    """Fuzz: after random byte edits the reader either steps aside or gives the general path's table."""
    torch.manual_seed(0)
    rng = random.Random(writer)
    alphabet = b'"[]{},: 0123456789.eE-+ntrufalsNI\\x'
    accepted = 0
    for trial in range(150):
        raw = bytearray(WRITERS[writer](_submission(trial % 10, n_samples=3)))
        for _ in range(rng.choice([1, 1, 2, 3])):
            at = rng.randrange(len(raw))
            op = rng.random()
            if op < 0.4:
                raw[at] = rng.choice(alphabet)
            elif op < 0.7:
                del raw[at]
            else:
                raw.insert(at, rng.choice(alphabet))
        gt = _gt(3)
        fast = read_submission_columns(bytes(raw), gt, 500)
        if fast is not None:
            general = _general(bytes(raw), gt, tmp_path)
            assert not isinstance(general, str), (trial, bytes(raw), general)
            _same(fast, general)
            accepted += 1
    assert accepted > 5  # some edits keep the file valid (inside numbers): those are read fast


@pytest.fixture()
def two_processes(monkeypatch):
    """Force the two-process read even on tiny files, a busy machine, or with threads left by other
    tests (the child runs only the reader's own code); records what each two-process read returned."""
    from bevforge.eval import submission_reader

    monkeypatch.setattr(submission_reader, "PARALLEL_MIN_BYTES", 0)
    monkeypatch.setattr(submission_reader, "CHUNK_BYTES", 1)  # a cut after every sample
    monkeypatch.setattr(submission_reader, "_can_fork", lambda: True)
    real, outcomes = submission_reader._read_in_two, []

    def recorded(*args):
        outcomes.append(real(*args))
        return outcomes[-1]

    monkeypatch.setattr(submission_reader, "_read_in_two", recorded)
    return submission_reader, outcomes


def _big_submission(seed: int) -> dict:
    """Every sample with boxes (so that the bytes can be cut at a sample boundary in the middle)."""
    sub = _submission(seed, n_samples=6)
    rng = random.Random(seed)
    for tok, boxes in sub["results"].items():
        keys = tuple(next(b for bs in sub["results"].values() for b in bs))
        boxes += [_box(rng, tok, keys) for _ in range(3)]
    return sub


def test_reader_two_processes_same_table(two_processes, tmp_path):
    _, outcomes = two_processes
    torch.manual_seed(0)
    for seed in range(6):
        sub, gt = _big_submission(seed), _gt(6)
        for writer in sorted(WRITERS):
            raw = WRITERS[writer](sub)
            fast = read_submission_columns(raw, gt, 500)
            assert fast is not None and outcomes[-1] is not None, (seed, writer)  # read in two
            _same(fast, _general(raw, gt, tmp_path))
        # a malformed box in the last sample (the child's half) makes the whole file decline
        last = list(sub["results"])[-1]
        bad = copy.deepcopy(sub)
        bad["results"][last][-1]["detection_name"] = "tram"
        assert read_submission_columns(json.dumps(bad).encode(), gt, 500) is None


@pytest.mark.parametrize("death", ["before writing", "while writing"])
def test_reader_two_processes_child_death_read_in_one(death, two_processes, monkeypatch, tmp_path):
    import os
    import pickle
    import types

    module, outcomes = two_processes
    torch.manual_seed(0)
    parent, real = os.getpid(), module._columns

    def dies_in_child(*args):
        if os.getpid() != parent:
            os._exit(3)  # e.g. killed: nothing written
        return real(*args)

    def cut_short(obj, protocol):
        return pickle.dumps(obj, protocol)[:-7]  # e.g. killed while writing

    if death == "before writing":
        monkeypatch.setattr(module, "_columns", dies_in_child)
    else:
        monkeypatch.setattr(module, "pickle", types.SimpleNamespace(**{**vars(pickle), "dumps": cut_short}))
    sub, gt = _big_submission(11), _gt(6)
    raw = json.dumps(sub).encode()
    fast = read_submission_columns(raw, gt, 500)
    assert outcomes == [None] and fast is not None  # the two-process read gave up, one process read it
    _same(fast, _general(raw, gt, tmp_path))


def test_values_ok_agrees_with_value_problems():
    from bevforge.eval.submission_reader import value_problems, values_ok

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    specials = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-300, -1.0])
    for trial in range(300):
        n = int(rng.integers(1, 6))
        fields = {"translation": 3, "size": 3, "rotation": 4, "score": 1}
        arrays = {k: rng.uniform(0.1, 2.0, (n, w)) for k, w in fields.items()}
        for _ in range(int(rng.integers(0, 3))):  # a few special values anywhere
            a = arrays[rng.choice(list(fields))]
            a[rng.integers(n), rng.integers(a.shape[1])] = rng.choice(specials)
        if trial % 7 == 0:
            arrays["rotation"][rng.integers(n)] = 0.0  # a zero quaternion
        table = BoxTable(
            sample_idx=np.zeros(n, np.int64),
            translation=arrays["translation"],
            size=arrays["size"],
            rotation=arrays["rotation"],
            velocity=np.full((n, 2), np.nan),  # NaN velocities are allowed
            label=np.zeros(n, np.int64),
            score=arrays["score"][:, 0],
            attr=np.zeros(n, np.int64),
            num_pts=np.zeros(n, np.int64),
        )
        assert values_ok(table) == (not any(bad.any() for _, bad, _ in value_problems(table))), trial
