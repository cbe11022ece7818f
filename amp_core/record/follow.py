"""RunFollower: follows a live run's record, reading only the bytes appended since the last poll."""

from __future__ import annotations

import os
from pathlib import Path

from amp_core.record.columns import MetricsTail, RunMetrics
from amp_core.record.files import ACTIVE_STATES, CONFIG_FILE, METRICS_FILE, STATUS_FILE, read_json
from amp_core.record.reader import effective_state


class RunFollower:
    """Follows a run's metrics.jsonl incrementally: each `poll()` parses only the lines added since.

    `metrics` is replaced, never changed, by a poll: a RunMetrics taken from it stays as it was
    (its arrays are read-only views that later lines do not reach). Not thread-safe: one owner polls.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.status: dict = {}
        self.config: dict = {}
        self._tail = MetricsTail(self.path / METRICS_FILE)

    @property
    def metrics(self) -> RunMetrics:
        return self._tail.metrics

    @property
    def damaged_lines(self) -> int:
        return self._tail.damaged

    @property
    def generation(self) -> int:
        """How many times the record was read again from its start (replaced or rewritten)."""
        return self._tail.generation

    def poll(self) -> int:
        """Read what was appended; returns how many new steps arrived."""
        try:
            self.status = read_json(self.path / STATUS_FILE)
            if not self.config or self.status.get("state") in ACTIVE_STATES:
                self.config = read_json(self.path / CONFIG_FILE)  # the trainer adds resolved facts at start
        except (OSError, ValueError):
            pass
        try:
            return self._tail.read()
        except OSError:
            return 0

    @property
    def state(self) -> str:
        return effective_state(self.status)
