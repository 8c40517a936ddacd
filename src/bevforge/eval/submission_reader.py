"""Fast reader of submission files: the box columns straight from the JSON bytes.

``orjson.loads`` of a large submission (240k boxes, 82 MB) builds ~5M Python objects (a dict and four
lists per box). :func:`read_submission_columns` instead cuts the bytes into chunks of about
:data:`CHUNK_BYTES` at sample boundaries, splits each chunk on the key separator (``": "``) into ~8 pieces
per box, takes every field as one strided slice of the pieces, compares strings with the expected bytes
(dict look-ups for class and attribute), and joins the numbers of one field into one flat JSON array that
orjson parses (floats only, no list per box). Chunks keep the pieces in the CPU caches and let the next
chunk reuse their memory (one split of the whole file: ~1.6x slower).

It reads the layout that every writer we know produces: ``json.dumps`` with default or compact
separators (ours, mmcv in the official BEVFormer / mmdet3d code) and ``orjson.dumps`` -- one key order for
all boxes, known keys only, no backslash escapes, ``results`` once at top level. A file is accepted only if
it is valid JSON whose general parse (``load_submission`` + ``parse_submission``) gives exactly the returned
table: every separator is checked at its place, every string is one of the expected byte strings, every
number is parsed by orjson. Anything else -- another layout, NaN, escapes, every malformed or invalid
submission -- returns ``None`` (after a read in one chunk, in case a cut fell outside results): the caller
then takes the general path, which gives the same table or the detailed error message.

Large files (>= 16 MB) are read by two processes when a core is idle: a forked child reads the second
half of the chunks (same code, same checks) while this process reads the first; its columns come back
through a pipe. ``BEVFORGE_READER_PROCESSES=1`` turns this off; any failure falls back to one process.

Shape letters: N boxes, S samples in the submission, m keys per box (pieces per box in the split).
"""

from __future__ import annotations

import os
import pickle
import sys
import threading
from typing import Any

import numpy as np
import orjson

from bevforge.eval.box_table import ATTR_INDEX, CLASS_INDEX, BoxTable, GroundTruth

_STRING_KEYS = (b"sample_token", b"detection_name", b"attribute_name")
_LIST_KEYS = {b"translation": 3, b"size": 3, b"rotation": 4, b"velocity": 2}
_SCALAR_KEYS = (b"detection_score", b"num_pts")
_REQUIRED = {*_STRING_KEYS, *_LIST_KEYS, b"detection_score"}
_STYLES = ((b": ", b", "), (b":", b","))  # (key separator, item separator): json.dumps / compact + orjson
_RESULTS = b'"results"'
_NOT_LIST_MARKS = bytes(c for c in range(256) if c not in b"[],")
# bytes per split: a chunk's pieces stay in the CPU caches and the next chunk reuses their memory (one
# split of a whole 82 MB submission made ~2M objects in fresh pages: ~1.6x slower end to end)
CHUNK_BYTES = 1 << 20


def value_problems(table: BoxTable) -> list[tuple[str, np.ndarray, str]]:
    """The per-box value checks of a submission: ``(field, bad [N] bool, problem)``, in reporting order."""
    return [
        ("translation", ~np.isfinite(table.translation).all(1), "must be finite (no NaN/inf)"),
        ("size", ~np.isfinite(table.size).all(1), "must be finite (no NaN/inf)"),
        ("size", ~(table.size > 0).all(1), "must be > 0 in every dimension"),
        ("rotation", ~np.isfinite(table.rotation).all(1), "must be finite (no NaN/inf)"),
        ("rotation", ~(np.abs(table.rotation).sum(1) > 0), "must be a non-zero quaternion (w, x, y, z)"),
        ("detection_score", ~np.isfinite(table.score), "must be finite (no NaN/inf)"),
    ]


def values_ok(table: BoxTable) -> bool:
    """No box fails a check of :func:`value_problems` (whole-array reductions: ~5x faster)."""
    size, rotation = table.size, table.rotation
    return bool(
        np.isfinite(table.translation).all()
        and np.isfinite(size).all()
        and (size > 0).all()
        and np.isfinite(rotation).all()
        and np.isfinite(table.score).all()
        and (np.abs(rotation).sum(1) > 0).all()
    )


def _template(pieces: list[bytes], first: int, isep: bytes) -> list[bytes] | None:
    """Key order of the box whose pieces start at ``first`` (``pieces[first - 1]`` is ``[{"<key 0>``)."""
    keys = [pieces[first - 1][3:]]
    box_end = b"}" + isep + b'{"' + keys[0]
    for j in range(first, min(first + 12, len(pieces))):
        p = pieces[j]
        if p.endswith(box_end) or b"}]" in p:
            break
        cut = p.rfind(isep + b'"')
        if cut < 0:
            return None
        keys.append(p[cut + len(isep) + 1 :])
    known = {*_STRING_KEYS, *_LIST_KEYS, *_SCALAR_KEYS}
    if len(set(keys)) != len(keys) or not _REQUIRED <= set(keys) <= known or keys[-1] not in _STRING_KEYS:
        return None
    return keys


def _numbers(column: list[bytes], head: bytes, end: bytes, q: bytes, width: int) -> list[Any] | None:
    """Numbers of one field: every piece must be ``head + values + end`` (values: ``width`` numbers, or
    one number if ``width`` is 0, nothing else). Returns the flat list (orjson-parsed) or ``None``."""
    n = len(column)
    if not (column[0].startswith(head) and column[-1].endswith(end)):
        return None
    # first piece opens the flat array, the last one closes it: "[v, v], "size" ... "[v, v" -> "[v, v]"
    pieces = column  # (a list of our own: changed in place)
    pieces[0] = b"[" + pieces[0][len(head) :]
    pieces[-1] = pieces[-1][: len(pieces[-1]) - len(end)] + b"]"
    joined = q.join(pieces)  # q occurs only at the n-1 joins (it has no border, pieces hold none)
    boundary = end + q + head  # holds q once: no quote left <=> every join was end + q + head
    # "[v, v, v,    v, v, v]" (lists) or "[v,   v]": same length, so replaced in place (faster)
    text = joined.replace(boundary, b"," + b" " * (len(boundary) - 1))
    if text.count(b'"'):
        return None  # a join of another shape, or a quote (a string) among the values
    if width:  # brackets and commas alone, "[,,],[,,],...[,,]" for width 3: width values in every box
        values_skeleton = b"[" + b"," * (width - 1)
        joint = (end + q).translate(None, _NOT_LIST_MARKS)  # "]," of "], "size": "
        if (
            joined.translate(None, _NOT_LIST_MARKS)
            != (values_skeleton + joint) * (n - 1) + values_skeleton + b"]"
        ):
            return None
    try:
        values = orjson.loads(text)
    except orjson.JSONDecodeError:
        return None
    return values if len(values) == n * max(width, 1) else None


def _walk(
    pieces: list[bytes],
    i: int,
    key: bytes,
    m: int,
    open_box: bytes,
    isep: bytes,
    max_boxes: int,
    closes: bool,
) -> tuple[list[bytes], list[int], list[bytes], int, bytes] | None:
    """Sample keys, box counts, the box pieces (m per box, last box's tail made like the others),
    the index of the piece that closes ``results`` and what follows the closing brace in it.

    Starts at the sample ``key`` whose name ends ``pieces[i]``. ``closes=False``: the pieces are a run
    of whole samples that ends right after the opening quote of the next key (index -1 returned).
    """
    box_end = b"}" + isep + open_box[1:]  # tail of the last piece of a box followed by another box
    list_end = b"}]" + isep + b'"'  # ... of the last box of a sample followed by another sample
    empty = b"[]" + isep + b'"'
    keys: list[bytes] = []
    counts: list[int] = []
    boxes: list[bytes] = []
    while True:
        keys.append(key)
        p = pieces[i + 1] if i + 1 < len(pieces) else b""
        if p.startswith(empty):  # empty sample, another one follows
            counts.append(0)
            i, key = i + 1, p[len(empty) :]
            continue
        if p.startswith(b"[]}"):  # empty sample closes results
            if not closes:
                return None
            counts.append(0)
            return keys, counts, boxes, i + 1, p[3:]
        if p != open_box:
            return None
        s = i + 2
        try:
            nxt = pieces.index(open_box, s)
            e = 0  # empty samples just before the next non-empty one
            while nxt - 1 - e > s and pieces[nxt - 1 - e].startswith(empty):
                e += 1
            n, rem = divmod(nxt - s - e, m)
            if rem or n == 0:
                return None
        except ValueError:  # the last non-empty sample: its boxes end the chunk, or find its last box
            n, rem = (0, 0) if closes else divmod(len(pieces) - s, m)
            if rem:
                return None
            while closes and n <= max_boxes and s + m * n + m - 1 < len(pieces):
                n += 1
                if not pieces[s + m * n - 1].endswith(box_end):
                    break
        if not 0 < n <= max_boxes or s + m * n - 1 >= len(pieces):
            return None
        counts.append(n)
        boxes.extend(pieces[s : s + m * n])
        last = boxes[-1]
        quote = last.rfind(b'"')
        if last[: quote + 1].endswith(list_end):
            boxes[-1] = last[: quote + 1 - len(list_end)] + box_end
            i, key = s + m * n - 1, last[quote + 1 :]
            if not closes and i + 1 == len(pieces) and not key:
                return keys, counts, boxes, -1, b""
            continue
        close = last.find(b"}]}")
        if close < 0 or not closes:
            return None
        boxes[-1] = last[:close] + box_end
        return keys, counts, boxes, s + m * n - 1, last[close + 3 :]


def read_submission_columns(
    raw: bytes, gt: GroundTruth, max_boxes: int
) -> tuple[BoxTable, dict[str, Any]] | None:
    """The submission in ``raw`` as a :class:`BoxTable` (+ its ``meta``), or ``None`` (see module doc)."""
    pos = raw.find(_RESULTS)
    if pos < 0 or b"\\" in raw:
        return None
    style = [s for s in _STYLES if raw.startswith(_RESULTS + s[0] + b'{"', pos)]
    if not style:
        return None
    ksep, isep = style[0]
    q = b'"' + ksep  # closes a key; no border, so in a join of pieces it only occurs at the joins
    index = {t.encode(): i for i, t in enumerate(gt.sample_tokens)}
    r = raw.count(q, 0, pos)  # in a split of raw[:x] (x > pos) on q, pieces[r] ends with "results
    read = _read_chunked(raw, pos, r, q, isep, index, max_boxes)
    if read is None:  # in one chunk (a cut may have fallen outside results): this read decides
        read = _read_chunks(raw, [0, len(raw)], None, r, q, isep, index, max_boxes)
    if read is None:
        return None
    head, tokens, counts, table, tail = read
    # everything outside results, with results replaced by 0: parsed by orjson (meta, top-level checks)
    if _RESULTS in head[: -len(_RESULTS) + 1] or _RESULTS in tail:
        return None
    try:
        top = orjson.loads(head + q + b"0" + tail)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(top, dict) or top.get("results") != 0 or "meta" not in top:
        return None
    if len(set(tokens)) != len(tokens) or len(tokens) != len(index):  # (all are in index)
        return None
    if not values_ok(table):
        return None
    return table, top["meta"]


# (head, sample keys, box counts, boxes, tail): a read of consecutive samples (head/tail b"" if not held)
_Read = tuple[bytes, list[bytes], list[int], BoxTable, bytes]


def _read_chunks(
    raw: bytes,
    bounds: list[int],
    keys: list[bytes] | None,
    r: int,
    q: bytes,
    isep: bytes,
    index: dict[bytes, int],
    max_boxes: int,
) -> _Read | None:
    """The samples of ``raw[bounds[0] : bounds[-1] + 1]``, chunk ``k`` = ``raw[bounds[k] : bounds[k+1] + 1]``
    split and read on its own. Inner bounds are the opening quote of a sample key (in both chunks around
    it); ``bounds[0] == 0``: the first chunk holds the head (``keys`` None: taken from its first box);
    ``bounds[-1] == len(raw)``: the last one closes results."""
    head, tail, tokens, counts, tables = b"", b"", [], [], []
    for k in range(len(bounds) - 1):
        pieces = raw[bounds[k] : bounds[k + 1] + 1].split(q)
        i, key = 0, pieces[0][1:]  # a chunk that starts at a sample key
        if bounds[k] == 0:
            i, key, head = r + 1, pieces[r + 1][2:], q.join(pieces[: r + 1])
            if keys is None:
                first = next((j + 1 for j in range(i, len(pieces)) if pieces[j].startswith(b'[{"')), 0)
                keys = _template(pieces, first, isep) if first else None
        if keys is None:
            return None
        closes = bounds[k + 1] >= len(raw)
        walked = _walk(pieces, i, key, len(keys), b'[{"' + keys[0], isep, max_boxes, closes)
        if walked is None or not all(t in index for t in walked[0]):
            return None
        keys_k, counts_k, boxes, close, rest = walked  # (no boxes: a last chunk of empty samples)
        table = _columns(boxes, keys, keys_k, counts_k, index, isep, q) if boxes else BoxTable()
        if table is None:
            return None
        tokens += keys_k
        counts += counts_k
        tables.append(table)
        tail = rest + (q + q.join(pieces[close + 1 :]) if 0 <= close < len(pieces) - 1 else b"")
    return head, tokens, counts, BoxTable.concat(tables), tail


def _read_chunked(
    raw: bytes, pos: int, r: int, q: bytes, isep: bytes, index: dict[bytes, int], max_boxes: int
) -> _Read | None:
    """:func:`_read_chunks` with the bytes cut at the first sample boundary after every ``CHUNK_BYTES``
    (the second half of the chunks in a forked child when a core is idle, see :func:`_read_in_two`).
    None if the first box does not give the key order or a chunk does not read."""
    prefix = raw[pos : pos + (1 << 16)].split(q)  # the key order from the first box
    first = next((j + 1 for j in range(1, len(prefix)) if prefix[j].startswith(b'[{"')), 0)
    keys = _template(prefix, first, isep) if first else None
    if keys is None:
        return None
    list_end = b"}]" + isep + b'"'  # a sample ends, the next key's quote follows
    # results close at or before the last "}]}" / "[]}" (a meta may follow; searched in the last 64 kB)
    end = max(pos, len(raw) - (1 << 16))
    stop = max(raw.rfind(b"}]}", end), raw.rfind(b"[]}", end), 0)
    bounds = [0]
    while (cut := raw.find(list_end, max(bounds[-1], pos) + CHUNK_BYTES, stop)) >= 0:
        bounds.append(cut + len(list_end) - 1)  # the index of that quote
    bounds.append(len(raw))
    if len(bounds) >= 3 and len(raw) >= PARALLEL_MIN_BYTES and _can_fork():
        return _read_in_two(raw, bounds, keys, r, q, isep, index, max_boxes)
    return _read_chunks(raw, bounds, keys, r, q, isep, index, max_boxes)


def _columns(
    boxes: list[bytes],
    keys: list[bytes],
    tokens: list[bytes],
    counts: list[int],
    index: dict[bytes, int],
    isep: bytes,
    q: bytes,
) -> BoxTable | None:
    m, n = len(keys), len(boxes) // len(keys)
    cols: dict[bytes, Any] = {}
    for j, key in enumerate(keys):
        tail = isep + b'"' + keys[j + 1] if j + 1 < m else b"}" + isep + b'{"' + keys[0]
        column = boxes[j::m]  # [N] the pieces holding this key's value
        if key == b"sample_token":  # every box of a sample names it
            start = 0
            for t, c in zip(tokens, counts):
                if c and column[start : start + c].count(b'"' + t + b'"' + tail) != c:
                    return None
                start += c
        elif key in (b"detection_name", b"attribute_name"):
            names = CLASS_INDEX if key == b"detection_name" else {"": -1, **ATTR_INDEX}
            lut = {b'"' + name.encode() + b'"' + tail: v for name, v in names.items()}
            try:
                cols[key] = np.fromiter(map(lut.__getitem__, column), np.int64, count=n)
            except KeyError:
                return None
        else:
            width = _LIST_KEYS.get(key, 0)
            cols[key] = _numbers(column, b"[" if width else b"", (b"]" if width else b"") + tail, q, width)
            if cols[key] is None:
                return None
    try:  # the same conversions as parse_submission
        arrays = {k: np.fromiter(cols[k], np.float64, count=n * width) for k, width in _LIST_KEYS.items()}
        score = np.array(cols[b"detection_score"], dtype=np.float64)
        num_pts = np.array(cols.get(b"num_pts", [-1] * n), dtype=np.int64)
    except (ValueError, TypeError):
        return None
    if score.shape != (n,) or num_pts.shape != (n,):  # e.g. [[0.5], ...]: not one number per box
        return None
    index_of_key = np.array([index[t] for t in tokens], dtype=np.int64)
    return BoxTable(
        sample_idx=np.repeat(index_of_key, counts),
        translation=arrays[b"translation"].reshape(n, 3),
        size=arrays[b"size"].reshape(n, 3),
        rotation=arrays[b"rotation"].reshape(n, 4),
        velocity=arrays[b"velocity"].reshape(n, 2),
        label=cols[b"detection_name"],
        score=score.reshape(n),
        attr=cols[b"attribute_name"],
        num_pts=num_pts.reshape(n),
    )


# ------------------------------------------------------------------------------ two processes

PARALLEL_MIN_BYTES = 16 << 20  # below this, a second process costs more than it saves


def _can_fork() -> bool:
    """Linux, no other Python thread (forking threads is unsafe), not turned off, >= 2 usable cores and
    one of them idle (1-min load average <= cores - 1)."""
    if not sys.platform.startswith("linux") or threading.active_count() > 1:
        return False
    if os.environ.get("BEVFORGE_READER_PROCESSES", "").strip() == "1":
        return False
    usable = len(os.sched_getaffinity(0))
    return usable >= 2 and os.getloadavg()[0] <= usable - 1


def _read_in_two(
    raw: bytes,
    bounds: list[int],
    keys: list[bytes],
    r: int,
    q: bytes,
    isep: bytes,
    index: dict[bytes, int],
    max_boxes: int,
) -> _Read | None:
    """:func:`_read_chunks` of the first half of the chunks here while a forked child reads the second
    half from the (shared, never written) ``raw`` and sends its columns through a pipe. None if either
    half does not read: the caller then reads in one process."""
    mid = len(bounds) // 2  # chunks [0, mid) here, [mid, end) there
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: read its chunks, send them, leave without running any exit handler
        try:
            os.close(read_fd)
            run = _read_chunks(raw, bounds[mid:], keys, r, q, isep, index, max_boxes)
            with os.fdopen(write_fd, "wb") as out:  # (our own child: pickle is safe here)
                out.write(pickle.dumps(run, protocol=pickle.HIGHEST_PROTOCOL))
        finally:
            os._exit(0)
    os.close(write_fd)
    inp = os.fdopen(read_fd, "rb")
    try:
        here = _read_chunks(raw, bounds[: mid + 1], keys, r, q, isep, index, max_boxes)
        data = inp.read()
    finally:
        inp.close()  # (if this process failed first: the child's write ends, it exits)
        os.waitpid(pid, 0)
    try:
        there = pickle.loads(data)  # (the child declined: None)
    except (pickle.UnpicklingError, EOFError, ValueError):  # nothing or cut short: the child died
        return None
    if here is None or there is None:
        return None
    table = BoxTable.concat([here[3], there[3]])
    return here[0], here[1] + there[1], here[2] + there[2], table, there[4]
