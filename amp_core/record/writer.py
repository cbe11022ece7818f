"""RunWriter: creates a run folder and writes its record (the training process and the queue use it).

Per-step rows go through `queue_metrics`: each is encoded to a JSON line at once (a bad value fails
at its caller) and the lines are written and flushed together once `flush_seconds` (0.05 s) have
passed since the last write, so a fast run costs one write per ~50 ms instead of one per step, and a
live view is at most ~0.1 s behind. `flush()`, `append_metrics`, `set_status` and `close` write what
is queued first: a status never claims more steps than metrics.jsonl holds. What is on disk is
always whole lines; a SIGKILL loses only the queued lines, which all arrived within one
`flush_seconds` window (see `queue_metrics`).
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from amp_core.record.files import (
    CONFIG_FILE,
    HISTOGRAMS_FILE,
    METRICS_FILE,
    STATUS_FILE,
    RunRecordError,
    json_number,
    now_iso,
    read_json,
    refuse_recording,
    write_json_atomic,
)


class RunWriter:
    """Creates a run folder and writes its record. Used by the training process (and the queue)."""

    FLUSH_SECONDS = 0.05

    def __init__(self, path: Path, flush_seconds: float = FLUSH_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.path = Path(path)
        self.id = self.path.name
        self.flush_seconds = flush_seconds
        self._clock = clock  # a test may pass its own, to know when a write falls due
        self._metrics = None
        self._histograms = None
        self._status: dict[str, Any] = {}
        self._queued: list[str] = []  # encoded lines not yet written
        self._written_at = -math.inf  # the first row is written at once: a live view draws it without waiting

    @classmethod
    def create(cls, runs_dir: str | os.PathLike, config: dict, label: str = "run") -> RunWriter:
        runs_dir = Path(runs_dir)
        refuse_recording(runs_dir, "a new run in the recordings folder")
        try:
            runs_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunRecordError(f"cannot create runs directory {str(runs_dir)!r}: {e.strerror or e}") from None
        if not os.access(runs_dir, os.W_OK | os.X_OK):
            raise RunRecordError(f"runs directory {str(runs_dir)!r} is not writable")
        slug = re.sub(r"[^A-Za-z0-9.-]+", "-", label).strip("-")[:40] or "run"
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        for _ in range(100):
            path = runs_dir / f"{stamp}-{slug}-{secrets.token_hex(3)}"
            try:
                path.mkdir()
                break
            except FileExistsError:
                continue
        else:  # pragma: no cover - 100 random collisions in one second
            raise RunRecordError("could not allocate a run folder")
        writer = cls(path)
        write_json_atomic(path / CONFIG_FILE, {"id": writer.id, **config})
        (path / METRICS_FILE).touch()
        return writer

    @classmethod
    def open(cls, path: str | os.PathLike) -> RunWriter:
        refuse_recording(path, "writing its record")
        writer = cls(Path(path))
        writer._status = read_json(writer.path / STATUS_FILE) if (writer.path / STATUS_FILE).exists() else {}
        return writer

    def set_status(self, state: str, **fields: Any) -> dict:
        self.flush()  # the metrics first: a reader that sees 'completed' sees every row
        self._status.update(fields, state=state, updated_at=now_iso())
        write_json_atomic(self.path / STATUS_FILE, self._status)
        return dict(self._status)

    def add_warning(self, message: str) -> None:
        warnings = self._status.setdefault("warnings", [])
        if message not in warnings:
            warnings.append(message)
            self.set_status(self._status.get("state", "running"))

    def update_config(self, **fields: Any) -> None:
        config = read_json(self.path / CONFIG_FILE)
        config.update(fields)
        write_json_atomic(self.path / CONFIG_FILE, config)

    def queue_metrics(self, row: dict) -> bool:
        """Queue one metrics row; write the queue once `flush_seconds` have passed since the last write.

        Returns whether it wrote. The queue is written at the first row that arrives `flush_seconds`
        or more after the previous write, so the rows still queued at any moment all arrived within
        one such window: that is the most a SIGKILL can take (with steps slower than the window,
        every row is written as it comes).
        """
        self._queued.append(_line(row))
        if self._clock() - self._written_at < self.flush_seconds:
            return False
        self.flush()
        return True

    def flush(self) -> None:
        """Write and flush the queued rows now."""
        if self._queued:
            lines, self._queued = self._queued, []
            self._write_lines(lines)

    def append_metrics(self, rows: list[dict]) -> None:
        """Write these rows now (after any queued ones)."""
        lines = [_line(r) for r in rows]
        self.flush()
        if lines:
            self._write_lines(lines)

    def _write_lines(self, lines: list[str]) -> None:
        if self._metrics is None:
            self._metrics = open(self.path / METRICS_FILE, "a", encoding="utf-8")
        # One write of whole lines, then flush: a reader never sees half of a line we wrote
        # unless the process dies inside write(), and readers skip a partial last line anyway.
        self._metrics.write("".join(lines))
        self._metrics.flush()
        self._written_at = self._clock()

    def append_histogram(self, row: dict) -> None:
        if self._histograms is None:
            self._histograms = open(self.path / HISTOGRAMS_FILE, "a", encoding="utf-8")
        self._histograms.write(json.dumps(row) + "\n")
        self._histograms.flush()

    def close(self) -> None:
        self.flush()
        for name in ("_metrics", "_histograms"):
            f = getattr(self, name)
            if f is not None:
                f.close()
                setattr(self, name, None)


_ENCODER = json.JSONEncoder(
    allow_nan=False, default=json_number
)  # made once: json.dumps with options makes one per call


def _line(row: dict) -> str:
    return _ENCODER.encode(row) + "\n"
