"""The run record's folder layout, names and small file helpers (stdlib only).


    runs/<run id>/config.json     the full resolved configuration, hardware and versions
    runs/<run id>/status.json     state (queued, running, completed, failed, stopped), times, error
    runs/<run id>/metrics.jsonl   one JSON object per optimizer step, appended and flushed live
    runs/<run id>/histograms.jsonl  every N steps, a log2 histogram of the unscaled gradient values
    runs/<run id>/stop            present once someone asked the run to stop
    <run id>/provenance.json      recordings only (demo_runs/, see amp_core.record.recordings): where and how it was made

Writers replace status.json atomically and only ever append whole lines to metrics.jsonl, so a
reader may look at any moment, and a crash loses nothing already written. Readers never trust the
folder: a damaged record is reported as damaged, never raised through the UI.

Only the standard library and NumPy: the app imports this without torch or Lightning.
"""

from __future__ import annotations

import json
import math
import os
import re
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RUNS_DIR_ENV = "AMP_RUNS_DIR"
CONFIG_FILE, STATUS_FILE, METRICS_FILE, STOP_FILE = "config.json", "status.json", "metrics.jsonl", "stop"
HISTOGRAMS_FILE = "histograms.jsonl"
SKIPS_FILE = "skips.jsonl"  # the skip ledger: one line per skipped step (see amp_core.record.skips)
PROVENANCE_FILE = "provenance.json"  # a recording's; its presence alone makes a folder read-only
RANKS_DIR = "ranks"  # multi-process runs: ranks/rank<N>.jsonl, each rank's own loss scale per step

ACTIVE_STATES = ("queued", "starting", "running")
FINAL_STATES = ("completed", "failed", "stopped", "interrupted")

# The per-step fields every metrics line carries; readers turn each into one NumPy column.
# A missing or null value reads as NaN (loss_scale is null when there is no GradScaler).
METRIC_COLUMNS = ("step", "loss", "loss_scale", "skipped", "grad_norm", "grad_max", "growth_tracker", "time")

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")  # \Z: "$" would let a trailing newline in


class RunRecordError(ValueError):
    """A run id or folder that cannot be used; the message says why."""


def default_runs_dir() -> Path:
    return Path(os.environ.get(RUNS_DIR_ENV) or "runs")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def run_path(runs_dir: str | os.PathLike, run_id: str) -> Path:
    """The folder of `run_id` inside `runs_dir`, refusing anything that would lead outside it."""
    if not isinstance(run_id, str) or not RUN_ID.match(run_id) or run_id in (".", ".."):
        raise RunRecordError(
            f"not a run id: {run_id!r}" if isinstance(run_id, str) else f"not a run id: a {type(run_id).__name__}"
        )
    try:
        root = Path(runs_dir).resolve()
        path = (root / run_id).resolve()
    except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop
        raise RunRecordError(f"run {run_id!r} cannot be resolved ({type(e).__name__})") from None
    if path.parent != root:
        raise RunRecordError(f"run {run_id!r} is outside the runs directory")
    return path


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except RecursionError:
        raise ValueError(f"{path.name} is nested too deeply") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path.name} is not a JSON object")
    return data


def json_number(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def finite_or_none(value: float | None) -> float | None:
    """JSON has no inf or NaN; a non-finite value (a NaN loss, an inf gradient norm) is stored as null."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None  # math, not NumPy: this runs per value per step


def request_stop(path: str | os.PathLike) -> None:
    """Ask the run in `path` to stop at its next step (the trainer polls for this file)."""
    refuse_recording(path, "a stop request")
    (Path(path) / STOP_FILE).write_text(now_iso())


def stop_requested(path: str | os.PathLike) -> bool:
    return (Path(path) / STOP_FILE).exists()


def process_alive(pid: Any, host: Any = None) -> bool | None:
    """Whether the process that wrote a record still runs; None when that cannot be told from here."""
    if host not in (None, socket.gethostname()) or not isinstance(pid, int) or pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OverflowError:  # larger than any pid: junk, like a negative one
        return None
    except PermissionError:
        return True
    try:  # a zombie (our own exited child not yet reaped) is not alive
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def refuse_recording(path: str | os.PathLike, what: str) -> None:
    from amp_core.record.recordings import refuse_if_recording

    refuse_if_recording(path, what)
