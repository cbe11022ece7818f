"""RunFollower: follows a live run's record, reading only the bytes appended since the last poll."""

from __future__ import annotations

import os
from pathlib import Path

from amp_core.record.files import ACTIVE_STATES, CONFIG_FILE, METRICS_FILE, STATUS_FILE, read_json
from amp_core.record.reader import RunMetrics, effective_state, parse_metrics


class RunFollower:
    """Follows a run's metrics.jsonl incrementally: each `poll()` reads only the bytes added since."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.metrics = RunMetrics()
        self.status: dict = {}
        self.config: dict = {}
        self.damaged_lines = 0
        self._offset = 0

    def poll(self) -> int:
        """Read what was appended; returns how many new steps arrived."""
        try:
            self.status = read_json(self.path / STATUS_FILE)
            if not self.config or self.status.get("state") in ACTIVE_STATES:
                self.config = read_json(self.path / CONFIG_FILE)  # the trainer adds resolved facts at start
        except (OSError, ValueError):
            pass
        try:
            with open(self.path / METRICS_FILE, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except OSError:
            return 0
        rows, consumed, damaged = parse_metrics(data)
        self._offset += consumed
        self.damaged_lines += damaged
        self.metrics.extend(RunMetrics.from_rows(rows))
        return len(rows)

    @property
    def state(self) -> str:
        return effective_state(self.status)
