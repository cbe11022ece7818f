"""A run's record exported as CSV or one JSON document (the Runs page's downloads)."""

from __future__ import annotations

import json

from amp_core.record.files import METRIC_COLUMNS
from amp_core.record.reader import Run


def metrics_csv(run: Run) -> str:
    """The run's per-step metrics as CSV (empty cells where a value is null)."""
    lines = [",".join(METRIC_COLUMNS)]
    for row in run.metrics.rows():
        lines.append(
            ",".join(
                "" if row[c] is None else str(row[c]).lower() if isinstance(row[c], bool) else repr(row[c])
                for c in METRIC_COLUMNS
            )
        )
    return "\n".join(lines) + "\n"


def metrics_json(run: Run) -> str:
    """The whole record as one JSON document: config, status and per-step metrics."""
    return json.dumps(
        {"id": run.id, "config": run.config, "status": run.status, "metrics": run.metrics.rows()}, indent=1
    )
