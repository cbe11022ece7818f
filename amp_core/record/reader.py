"""Reading run records: a whole run (Run, RunMetrics), the runs folder, the side files, a summary.

Readers never trust the folder: a damaged record is reported as damaged, never raised through the UI.
"""

from __future__ import annotations

import copy
import os
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from amp_core.record.columns import MetricsTail, RunMetrics, parse_metrics
from amp_core.record.files import (
    CONFIG_FILE,
    HISTOGRAMS_FILE,
    METRICS_FILE,
    PROVENANCE_FILE,
    RANKS_DIR,
    RUN_ID,
    SKIPS_FILE,
    STATUS_FILE,
    default_runs_dir,
    process_alive,
    read_json,
)


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
    recording: bool = False  # a shipped recording (amp_core.record.recordings): read-only, with its provenance
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


class _Cached:
    """One run folder as last read: its file stamps, the Run, its state then, and its metrics reader."""

    def __init__(self, path: Path):
        self.lock = threading.Lock()  # one reader of this folder at a time; others wait, then share its read
        self.tail = MetricsTail(path / METRICS_FILE)
        self.stamp: tuple | None = None
        self.run: Run | None = None
        self.state = ""


# Streamlit runs each session in its own thread, all of them calling load_run: the cache is guarded by
# a lock, each folder by its own, and every caller gets its own copy of the Run (see _handout).
_cache: dict[Path, _Cached] = {}
_cache_lock = threading.Lock()
_CACHE_LIMIT = 512


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

    Cached by the files' size and modification time: an unchanged record is not parsed again, and
    a metrics file that grew is parsed only from where the last read stopped. Thread-safe; the Run
    returned is the caller's own (its metrics arrays are shared and read-only).
    """
    path = Path(path)
    with _cache_lock:
        entry = _cache.get(path)
        if entry is None:
            if len(_cache) >= _CACHE_LIMIT:
                _cache.clear()
            entry = _cache[path] = _Cached(path)
    with entry.lock:
        stamp = _stamp(path)
        # The state is part of the key: a run whose process died since changes no file, yet reads differently.
        if entry.run is None or entry.stamp != stamp or entry.state != effective_state(entry.run.status):
            entry.run = _load_run(path, entry.tail)
            entry.stamp, entry.state = stamp, entry.run.state
        return _handout(entry.run)


def _handout(run: Run) -> Run:
    """A copy of the cached Run for one caller: its own dicts and lists, the same read-only arrays."""
    return replace(
        run,
        config=copy.deepcopy(run.config),
        status=copy.deepcopy(run.status),
        metrics=RunMetrics(dict(run.metrics.columns)),
        problems=list(run.problems),
        provenance=copy.deepcopy(run.provenance),
    )


def _load_run(path: Path, tail: MetricsTail) -> Run:
    problems = []
    config, status = {}, {}
    for name, target in ((CONFIG_FILE, config), (STATUS_FILE, status)):
        try:
            target.update(read_json(path / name))
        except FileNotFoundError:
            problems.append(f"{name} is missing")
        except (OSError, ValueError) as e:
            problems.append(f"{name} is unreadable ({type(e).__name__})")
    try:
        tail.read()
        metrics, damaged, partial = tail.metrics, tail.damaged, tail.partial
    except OSError as e:
        metrics, damaged, partial = RunMetrics(), 0, False
        missing = isinstance(e, FileNotFoundError)
        problems.append(f"{METRICS_FILE} is missing" if missing else f"{METRICS_FILE} is unreadable ({e.strerror})")
    if damaged:
        problems.append(f"{damaged} damaged line(s) in {METRICS_FILE} skipped")
    if partial and effective_state(status) != "running":
        problems.append(f"the last line of {METRICS_FILE} is cut off")
    if status.get("state") in ("running", "starting") and effective_state(status) == "failed":
        problems.append("the training process is gone: it died without recording an end")
    from amp_core.record.recordings import is_recording, read_provenance

    recording, provenance = is_recording(path), {}
    if recording:
        provenance, problem = read_provenance(path)
        problems += [problem] if problem else []
    return Run(path.name, path, config, status, metrics, problems, partial, recording, provenance)


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
        same = (base.step[:n] == m.step[:n]) & (
            (base.loss_scale[:n] == m.loss_scale[:n]) | (np.isnan(base.loss_scale[:n]) & np.isnan(m.loss_scale[:n]))
        )
        same &= base.skipped[:n] == m.skipped[:n]
        if not same.all():
            i = int(np.argmin(same))
            return (
                False,
                f"rank {rank} differs from rank {base_rank} at step {int(m.step[i])}: scale {m.loss_scale[i]:g} vs {base.loss_scale[i]:g}",
            )
        if len(m) != len(base):
            return False, f"rank {rank} recorded {len(m)} steps, rank {base_rank} {len(base)}"
    return (
        True,
        f"all {len(ranks)} ranks recorded the same loss scale and skipped steps on every one of {len(base)} steps",
    )


def list_runs(runs_dir: str | os.PathLike | None = None, include_recordings: bool = False) -> list[Run]:
    """Every run folder in `runs_dir`, newest first. Folders that are not runs are left out.

    With `include_recordings`, the recordings (demo_runs/) too, each with `recording` set.
    """
    root = Path(runs_dir) if runs_dir is not None else default_runs_dir()
    if include_recordings:
        from amp_core.record.recordings import default_recordings_dir

        extra = [] if _same_dir(root, default_recordings_dir()) else list_runs(default_recordings_dir())
        return sorted(list_runs(root) + extra, key=_newest_first_key, reverse=True)
    if not root.is_dir():
        return []
    runs = []
    for p in root.iterdir():
        if (
            p.is_dir()
            and not p.is_symlink()
            and RUN_ID.match(p.name)
            and ((p / CONFIG_FILE).exists() or (p / STATUS_FILE).exists() or (p / METRICS_FILE).exists())
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
            status = read_json(p / STATUS_FILE)
        except (OSError, ValueError):
            continue
        if status.get("state") == "queued" and RUN_ID.match(p.name) and not p.is_symlink():
            queued.append((status.get("queued_at", 0), p.name, p))
    return [
        load_run(p) for _, _, p in sorted(queued, key=lambda t: (t[0] if isinstance(t[0], (int, float)) else 0, t[1]))
    ]


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
    from amp_core.record.recordings import provenance_line

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
