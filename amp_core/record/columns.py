"""A run's per-step metrics as NumPy columns, and the parsers that read metrics.jsonl into them.

`MetricsTail` reads a metrics file incrementally: it keeps the columns parsed so far in buffers
that grow by doubling, and each `read()` parses only the bytes appended since. Whatever it hands
out (`RunMetrics` of read-only views) never changes afterwards: later lines go past the end of
every view already given, and a grown buffer is a new array. So a live run of 1e6 steps costs a
poll of its new lines, not a re-read or a copy of a million.

Standard library and NumPy only.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from amp_core.record.files import METRIC_COLUMNS

_CHUNK_LINES = 20_000  # lines decoded per batch: bounds the parsed dicts held at once
_CHECK_BYTES = 256  # bytes compared at the head of a file and before the read offset: an append or a rewrite?
_PLAIN = frozenset({int, float, bool, type(None)})  # what np.array(..., float64) reads like _num
_STEP_TYPES = frozenset({int, float, bool})  # isinstance(step, (int, float)) for what json produces
_DECODER = json.JSONDecoder()


@dataclass
class RunMetrics:
    """A run's per-step series as NumPy columns (NaN where a line had no value)."""

    columns: dict[str, np.ndarray] = field(default_factory=lambda: {c: np.empty(0) for c in METRIC_COLUMNS})

    def __len__(self) -> int:
        return len(self.columns["step"])

    def __getattr__(self, name: str) -> np.ndarray:
        try:
            return self.__dict__["columns"][name]
        except KeyError:
            raise AttributeError(name) from None

    @classmethod
    def from_rows(cls, rows: list[dict]) -> RunMetrics:
        return cls({c: _column([r.get(c) for r in rows]) for c in METRIC_COLUMNS})

    def extend(self, other: RunMetrics) -> None:
        if len(other):
            self.columns = {c: np.concatenate([self.columns[c], other.columns[c]]) for c in METRIC_COLUMNS}

    def rows(self) -> list[dict]:
        out = []
        for i in range(len(self)):
            row = {}
            for c in METRIC_COLUMNS:
                v = float(self.columns[c][i])
                row[c] = None if np.isnan(v) else (int(v) if c in ("step", "growth_tracker") else v)
            row["skipped"] = bool(row["skipped"]) if row["skipped"] is not None else False
            out.append(row)
        return out


def _num(v: Any) -> float:
    if v is None or isinstance(v, str):
        return np.nan
    try:
        return float(v)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer beyond any float
        return np.nan


def _column(values: list) -> np.ndarray:
    """`values` as float64, each read as `_num` does; NumPy's own conversion where that agrees."""
    if _PLAIN.issuperset(map(type, values)):  # numbers, booleans and None (None -> NaN)
        try:
            return np.array(values, dtype=np.float64)
        except OverflowError:
            pass
    return np.array([_num(v) for v in values], dtype=np.float64)


def _is_row(row: Any) -> bool:
    return type(row) is dict and type(row.get("step")) in _STEP_TYPES


def parse_metrics(data: bytes) -> tuple[list[dict], int, int]:
    """Parse complete lines of metrics.jsonl: (rows, bytes consumed, damaged line count).

    A last line without its newline is not consumed: it is still being written, or was cut by a crash.
    """
    end = data.rfind(b"\n") + 1
    rows, damaged = [], 0
    lines = [line for line in data[:end].splitlines() if line.strip()]
    for a in range(0, len(lines), _CHUNK_LINES):
        values, bad = _decode(lines[a : a + _CHUNK_LINES])
        good = [v for v in values if _is_row(v)]
        rows += good
        damaged += bad + len(values) - len(good)
    return rows, end, damaged


def _decode(lines: list[bytes]) -> tuple[list, int]:
    """Each line's JSON value, and how many lines were not JSON.

    The lines joined and decoded value by value in one string (each value must end exactly where
    its line ends), which is what json.loads on each line gives, at about half the cost; any line
    that does not decode so sends the batch through json.loads line by line.
    """
    try:
        text = b"\n".join(lines).decode()
        values, i, find = [], 0, text.find
        for _ in lines:
            value, j = _DECODER.raw_decode(text, i)
            end = find("\n", i)
            if j != (end if end >= 0 else len(text)):
                raise ValueError("a value that does not end with its line")
            values.append(value)
            i = j + 1
        return values, 0
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        pass
    values, bad = [], 0
    for line in lines:
        try:
            values.append(json.loads(line))
        except (ValueError, RecursionError):
            bad += 1
    return values, bad


class MetricsTail:
    """One metrics file, read incrementally into growing columns (not thread-safe: its owner locks)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._reset()

    def _reset(self) -> None:
        self.generation = getattr(self, "generation", -1) + 1  # counts reads from the start
        self.offset = 0  # bytes consumed: the file up to here is parsed
        self.damaged = 0  # damaged lines seen so far
        self.partial = False  # the file ends in a line without its newline
        self._n = 0
        self._buffers = {c: np.empty(0) for c in METRIC_COLUMNS}
        self._identity: tuple | None = None  # (device, inode) of the file read
        self._head = b""  # its first bytes, and the bytes just before `offset`
        self._before = b""
        self.metrics = RunMetrics()

    def read(self) -> int:
        """Parse what was appended since the last read; returns how many rows arrived.

        A file that no longer continues what was read (replaced, shortened or rewritten) is read
        again from the start. Raises OSError when the file cannot be read (the columns stay as they were).
        """
        with open(self.path, "rb") as f:
            st = os.fstat(f.fileno())
            if not self._continues(f, st):
                self._reset()
            self._identity = (st.st_dev, st.st_ino)
            start = self.offset - len(self._before)
            f.seek(start)
            data = f.read()
            if not self._head:
                self._head = data[:_CHECK_BYTES] if start == 0 else b""
        new = data[len(self._before) :]
        end = new.rfind(b"\n") + 1
        rows, _, damaged = parse_metrics(new[:end])
        self._append(RunMetrics.from_rows(rows))
        self.offset += end
        self.damaged += damaged
        self.partial = end < len(new)
        consumed = data[: len(self._before) + end]
        self._before = consumed[-_CHECK_BYTES:]
        return len(rows)

    def _continues(self, f, st: os.stat_result) -> bool:
        if self._identity is None:
            return self.offset == 0
        if (st.st_dev, st.st_ino) != self._identity or st.st_size < self.offset:
            return False
        if self._head and f.read(len(self._head)) != self._head:
            return False
        f.seek(self.offset - len(self._before))
        return f.read(len(self._before)) == self._before

    def _append(self, new: RunMetrics) -> None:
        k = len(new)
        if k == 0:
            return
        n, capacity = self._n, len(self._buffers["step"])
        if n + k > capacity:
            capacity = max(1024, (n + k) * 3 // 2)  # room to grow: a live run appends a few lines per read
            grown = {c: np.empty(capacity) for c in METRIC_COLUMNS}
            for c in METRIC_COLUMNS:
                grown[c][:n] = self._buffers[c][:n]
            self._buffers = grown
        columns = {}
        for c in METRIC_COLUMNS:
            self._buffers[c][n : n + k] = new.columns[c]
            view = self._buffers[c][: n + k]
            view.flags.writeable = False  # handed out: nobody may change what others read
            columns[c] = view
        self._n = n + k
        self.metrics = RunMetrics(columns)
