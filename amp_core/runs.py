"""The run record: one folder per run, the only thing training and the UI share.

    runs/<run id>/config.json     the full resolved configuration, hardware and versions
    runs/<run id>/status.json     state (queued, running, completed, failed, stopped), times, error
    runs/<run id>/metrics.jsonl   one JSON object per optimizer step, appended and flushed live
    runs/<run id>/histograms.jsonl  every N steps, a log2 histogram of the unscaled gradient values
    runs/<run id>/stop            present once someone asked the run to stop
    <run id>/provenance.json      recordings only (demo_runs/, see amp_core.recordings): where and how it was made

Writers replace status.json atomically and only ever append whole lines to metrics.jsonl, so a
reader may look at any moment, and a crash loses nothing already written. Readers never trust the
folder: a damaged record is reported as damaged, never raised through the UI.

Only the standard library and NumPy: the app imports this without torch or Lightning.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

RUNS_DIR_ENV = "AMP_RUNS_DIR"
CONFIG_FILE, STATUS_FILE, METRICS_FILE, STOP_FILE = "config.json", "status.json", "metrics.jsonl", "stop"
HISTOGRAMS_FILE = "histograms.jsonl"
SKIPS_FILE = "skips.jsonl"  # the skip ledger: one line per skipped step (see amp_core.skip_ledger)
PROVENANCE_FILE = "provenance.json"  # a recording's; its presence alone makes a folder read-only
RANKS_DIR = "ranks"  # multi-process runs: ranks/rank<N>.jsonl, each rank's own loss scale per step

ACTIVE_STATES = ("queued", "starting", "running")
FINAL_STATES = ("completed", "failed", "stopped", "interrupted")

# The per-step fields every metrics line carries; readers turn each into one NumPy column.
# A missing or null value reads as NaN (loss_scale is null when there is no GradScaler).
METRIC_COLUMNS = ("step", "loss", "loss_scale", "skipped", "grad_norm", "grad_max", "growth_tracker", "time")

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}\Z")  # \Z: "$" would let a trailing newline in


class RunRecordError(ValueError):
    """A run id or folder that cannot be used; the message says why."""


def default_runs_dir() -> Path:
    return Path(os.environ.get(RUNS_DIR_ENV) or "runs")


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def run_path(runs_dir: str | os.PathLike, run_id: str) -> Path:
    """The folder of `run_id` inside `runs_dir`, refusing anything that would lead outside it."""
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id) or run_id in (".", ".."):
        raise RunRecordError(f"not a run id: {run_id!r}" if isinstance(run_id, str) else f"not a run id: a {type(run_id).__name__}")
    try:
        root = Path(runs_dir).resolve()
        path = (root / run_id).resolve()
    except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop
        raise RunRecordError(f"run {run_id!r} cannot be resolved ({type(e).__name__})") from None
    if path.parent != root:
        raise RunRecordError(f"run {run_id!r} is outside the runs directory")
    return path


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except RecursionError:
        raise ValueError(f"{path.name} is nested too deeply") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path.name} is not a JSON object")
    return data


class RunWriter:
    """Creates a run folder and writes its record. Used by the training process (and the queue)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.id = self.path.name
        self._metrics = None
        self._histograms = None
        self._status: dict[str, Any] = {}

    @classmethod
    def create(cls, runs_dir: str | os.PathLike, config: dict, label: str = "run") -> "RunWriter":
        runs_dir = Path(runs_dir)
        _refuse_recording(runs_dir, "a new run in the recordings folder")
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
        _write_json_atomic(path / CONFIG_FILE, {"id": writer.id, **config})
        (path / METRICS_FILE).touch()
        return writer

    @classmethod
    def open(cls, path: str | os.PathLike) -> "RunWriter":
        _refuse_recording(path, "writing its record")
        writer = cls(Path(path))
        writer._status = _read_json(writer.path / STATUS_FILE) if (writer.path / STATUS_FILE).exists() else {}
        return writer

    def set_status(self, state: str, **fields: Any) -> dict:
        self._status.update(fields, state=state, updated_at=now_iso())
        _write_json_atomic(self.path / STATUS_FILE, self._status)
        return dict(self._status)

    def add_warning(self, message: str) -> None:
        warnings = self._status.setdefault("warnings", [])
        if message not in warnings:
            warnings.append(message)
            self.set_status(self._status.get("state", "running"))

    def update_config(self, **fields: Any) -> None:
        config = _read_json(self.path / CONFIG_FILE)
        config.update(fields)
        _write_json_atomic(self.path / CONFIG_FILE, config)

    def append_metrics(self, rows: list[dict]) -> None:
        if not rows:
            return
        if self._metrics is None:
            self._metrics = open(self.path / METRICS_FILE, "a", encoding="utf-8")
        # One write of whole lines, then flush: a reader never sees half of a line we wrote
        # unless the process dies inside write(), and readers skip a partial last line anyway.
        self._metrics.write("".join(json.dumps(r, allow_nan=False, default=_json_number) + "\n" for r in rows))
        self._metrics.flush()

    def append_histogram(self, row: dict) -> None:
        if self._histograms is None:
            self._histograms = open(self.path / HISTOGRAMS_FILE, "a", encoding="utf-8")
        self._histograms.write(json.dumps(row) + "\n")
        self._histograms.flush()

    def close(self) -> None:
        for name in ("_metrics", "_histograms"):
            f = getattr(self, name)
            if f is not None:
                f.close()
                setattr(self, name, None)


def _json_number(value: Any) -> Any:
    try:
        return float(value)
    except (TypeError, ValueError):
        return str(value)


def finite_or_none(value: float | None) -> float | None:
    """JSON has no inf or NaN; a non-finite value (a NaN loss, an inf gradient norm) is stored as null."""
    if value is None:
        return None
    value = float(value)
    return value if np.isfinite(value) else None


def request_stop(path: str | os.PathLike) -> None:
    """Ask the run in `path` to stop at its next step (the trainer polls for this file)."""
    _refuse_recording(path, "a stop request")
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
    def from_rows(cls, rows: list[dict]) -> "RunMetrics":
        return cls({c: np.array([_num(r.get(c)) for r in rows], dtype=np.float64) for c in METRIC_COLUMNS})

    def extend(self, other: "RunMetrics") -> None:
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
    except (TypeError, ValueError):
        return np.nan


def parse_metrics(data: bytes) -> tuple[list[dict], int, int]:
    """Parse complete lines of metrics.jsonl: (rows, bytes consumed, damaged line count).

    A last line without its newline is not consumed: it is still being written, or was cut by a crash.
    """
    end = data.rfind(b"\n") + 1
    rows, damaged = [], 0
    for line in data[:end].splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            damaged += 1
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
            rows.append(row)
        else:
            damaged += 1
    return rows, end, damaged


@dataclass
class Run:
    """A run record as read from disk. `problems` lists what was damaged or missing."""

    id: str
    path: Path
    config: dict
    status: dict
    metrics: RunMetrics
    problems: list[str] = field(default_factory=list)
    partial_tail: bool = False
    recording: bool = False  # a shipped recording (amp_core.recordings): read-only, with its provenance
    provenance: dict = field(default_factory=dict)

    @property
    def state(self) -> str:
        return effective_state(self.status)

    @property
    def precision(self) -> str:
        return str(self.config.get("precision_resolved") or self.config.get("precision") or "?")

    @property
    def skipped_steps(self) -> int:
        return int(np.nansum(self.metrics.skipped))

    @property
    def final_loss_scale(self) -> float | None:
        s = self.metrics.loss_scale
        s = s[~np.isnan(s)]
        return float(s[-1]) if len(s) else None

    @property
    def max_steps(self) -> int | None:
        v = self.config.get("max_steps")
        return v if isinstance(v, int) else None


def effective_state(status: dict) -> str:
    """The state to show: a 'running' record whose process is gone has failed, whatever it says."""
    state = status.get("state", "unknown")
    if state in ("running", "starting") and process_alive(status.get("pid"), status.get("host")) is False:
        return "failed"
    return state if isinstance(state, str) else "unknown"


_cache: dict[Path, tuple[tuple, Run, str]] = {}  # path -> (file stamps, run, its state when read)


def _stamp(path: Path) -> tuple:
    out = []
    for name in (CONFIG_FILE, STATUS_FILE, METRICS_FILE, PROVENANCE_FILE):
        try:
            st = (path / name).stat()
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


def load_run(path: str | os.PathLike) -> Run:
    """Read one run folder. Never raises for damage inside the folder; see `Run.problems`.

    Results are cached by the files' size and modification time: an unchanged record is not parsed
    again. Treat the returned Run as read-only.
    """
    path = Path(path)
    stamp = _stamp(path)
    hit = _cache.get(path)
    # The state is part of the key: a run whose process died since changes no file, yet reads differently.
    if hit is not None and hit[0] == stamp and hit[2] == effective_state(hit[1].status):
        return hit[1]
    run = _load_run(path)
    if len(_cache) > 512:
        _cache.clear()
    _cache[path] = (stamp, run, run.state)
    return run


def _load_run(path: Path) -> Run:
    problems = []
    config, status = {}, {}
    for name, target in ((CONFIG_FILE, config), (STATUS_FILE, status)):
        try:
            target.update(_read_json(path / name))
        except FileNotFoundError:
            problems.append(f"{name} is missing")
        except (OSError, ValueError) as e:
            problems.append(f"{name} is unreadable ({type(e).__name__})")
    try:
        data = (path / METRICS_FILE).read_bytes()
    except FileNotFoundError:
        data = b""
        problems.append(f"{METRICS_FILE} is missing")
    except OSError as e:
        data = b""
        problems.append(f"{METRICS_FILE} is unreadable ({e.strerror})")
    rows, consumed, damaged = parse_metrics(data)
    if damaged:
        problems.append(f"{damaged} damaged line(s) in {METRICS_FILE} skipped")
    partial = consumed < len(data.rstrip(b"\n")) if data else False
    if partial and effective_state(status) != "running":
        problems.append(f"the last line of {METRICS_FILE} is cut off")
    if status.get("state") in ("running", "starting") and effective_state(status) == "failed":
        problems.append("the training process is gone: it died without recording an end")
    from amp_core.recordings import is_recording, read_provenance

    recording, provenance = is_recording(path), {}
    if recording:
        provenance, problem = read_provenance(path)
        problems += [problem] if problem else []
    return Run(path.name, path, config, status, RunMetrics.from_rows(rows), problems, partial, recording, provenance)


def _refuse_recording(path: str | os.PathLike, what: str) -> None:
    from amp_core.recordings import refuse_if_recording

    refuse_if_recording(path, what)


def load_histograms(path: str | os.PathLike) -> list[dict]:
    """A run's gradient histograms (possibly none), oldest first; damaged lines are skipped."""
    try:
        data = (Path(path) / HISTOGRAMS_FILE).read_bytes()
    except OSError:
        return []
    rows, _, _ = parse_metrics(data)
    return [r for r in rows if isinstance(r.get("counts"), list) and isinstance(r.get("log2_lo"), int)]


def load_skips(path: str | os.PathLike) -> list[dict]:
    """A run's skip ledger (possibly empty), in step order; damaged lines are skipped."""
    try:
        data = (Path(path) / SKIPS_FILE).read_bytes()
    except OSError:
        return []
    rows, _, _ = parse_metrics(data)
    return sorted(rows, key=lambda r: r["step"])


def load_rank_scales(path: str | os.PathLike) -> dict[int, RunMetrics]:
    """Each rank's loss-scale series of a multi-process run ({} for a single-process run)."""
    out = {}
    for f in sorted((Path(path) / RANKS_DIR).glob("rank*.jsonl")):
        rank = f.stem[4:]
        if rank.isdigit():
            rows, _, _ = parse_metrics(f.read_bytes())
            out[int(rank)] = RunMetrics.from_rows(rows)
    return out


def ranks_agree(ranks: dict[int, RunMetrics]) -> tuple[bool, str]:
    """Whether every rank recorded the same loss scale and skipped steps; and a sentence saying so."""
    if len(ranks) < 2:
        return True, "single process"
    base_rank = min(ranks)
    base = ranks[base_rank]
    for rank, m in sorted(ranks.items()):
        n = min(len(base), len(m))
        same = (base.step[:n] == m.step[:n]) & ((base.loss_scale[:n] == m.loss_scale[:n]) | (np.isnan(base.loss_scale[:n]) & np.isnan(m.loss_scale[:n])))
        same &= base.skipped[:n] == m.skipped[:n]
        if not same.all():
            i = int(np.argmin(same))
            return False, f"rank {rank} differs from rank {base_rank} at step {int(m.step[i])}: scale {m.loss_scale[i]:g} vs {base.loss_scale[i]:g}"
        if len(m) != len(base):
            return False, f"rank {rank} recorded {len(m)} steps, rank {base_rank} {len(base)}"
    return True, f"all {len(ranks)} ranks recorded the same loss scale and skipped steps on every one of {len(base)} steps"


def list_runs(runs_dir: str | os.PathLike | None = None, include_recordings: bool = False) -> list[Run]:
    """Every run folder in `runs_dir`, newest first. Folders that are not runs are left out.

    With `include_recordings`, the recordings (demo_runs/) too, each with `recording` set.
    """
    root = Path(runs_dir) if runs_dir is not None else default_runs_dir()
    if include_recordings:
        from amp_core.recordings import default_recordings_dir

        extra = [] if _same_dir(root, default_recordings_dir()) else list_runs(default_recordings_dir())
        return sorted(list_runs(root) + extra, key=_newest_first_key, reverse=True)
    if not root.is_dir():
        return []
    runs = []
    for p in root.iterdir():
        if p.is_dir() and not p.is_symlink() and _RUN_ID.match(p.name) and (
            (p / CONFIG_FILE).exists() or (p / STATUS_FILE).exists() or (p / METRICS_FILE).exists()
        ):
            runs.append(load_run(p))
    runs.sort(key=_newest_first_key, reverse=True)
    return runs


def _newest_first_key(r: Run) -> tuple:
    return (str(r.status.get("created_at") or r.config.get("created_at") or ""), r.id)


def _same_dir(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except (OSError, RuntimeError):
        return False


def queued_runs(runs_dir: str | os.PathLike) -> list[Run]:
    """Runs waiting to start, oldest first. Reads only status files, then the queued runs' records."""
    root = Path(runs_dir)
    if not root.is_dir():
        return []
    queued = []
    for p in root.iterdir():
        try:
            status = _read_json(p / STATUS_FILE)
        except (OSError, ValueError):
            continue
        if status.get("state") == "queued" and _RUN_ID.match(p.name) and not p.is_symlink():
            queued.append((status.get("queued_at", 0), p.name, p))
    return [load_run(p) for _, _, p in sorted(queued, key=lambda t: (t[0] if isinstance(t[0], (int, float)) else 0, t[1]))]


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
            self.status = _read_json(self.path / STATUS_FILE)
            if not self.config or self.status.get("state") in ACTIVE_STATES:
                self.config = _read_json(self.path / CONFIG_FILE)  # the trainer adds resolved facts at start
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


def change_points(steps: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reduce a piecewise-constant series to the points where it changes, plus its last point.

    Drawn with a step line (Plotly's line_shape="hv") the result is the same picture as every point.
    NaN (no scaler) counts as a value of its own, so gaps stay gaps.
    """
    steps, values = np.asarray(steps), np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return steps, values
    nan = np.isnan(values)
    changed = np.empty(len(values), dtype=bool)
    changed[0] = True
    changed[1:] = (values[1:] != values[:-1]) & ~(nan[1:] & nan[:-1])
    changed[-1] = True
    return steps[changed], values[changed]


def summarize(run: Run) -> dict:
    """One row for a runs table."""
    from amp_core.recordings import provenance_line

    status = run.status
    n = len(run.metrics)
    return {
        "id": run.id,
        "state": run.state,
        "precision": run.precision,
        "accelerator": run.config.get("accelerator_resolved") or run.config.get("accelerator"),
        "steps": n,
        "max_steps": run.max_steps,
        "skipped": run.skipped_steps,
        "final_loss_scale": run.final_loss_scale,
        "final_loss": float(run.metrics.loss[-1]) if n and not np.isnan(run.metrics.loss[-1]) else None,
        "created_at": status.get("created_at") or run.config.get("created_at"),
        "problems": "; ".join(run.problems),
        "recording": run.recording,
        "provenance": provenance_line(run.provenance) if run.recording else "",
    }


def metrics_csv(run: Run) -> str:
    """The run's per-step metrics as CSV (empty cells where a value is null)."""
    lines = [",".join(METRIC_COLUMNS)]
    for row in run.metrics.rows():
        lines.append(",".join("" if row[c] is None else str(row[c]).lower() if isinstance(row[c], bool) else repr(row[c]) for c in METRIC_COLUMNS))
    return "\n".join(lines) + "\n"


def metrics_json(run: Run) -> str:
    """The whole record as one JSON document: config, status and per-step metrics."""
    return json.dumps({"id": run.id, "config": run.config, "status": run.status, "metrics": run.metrics.rows()}, indent=1)
