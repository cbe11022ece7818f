"""Live views of runs that are still going, shared by every viewer in one process.

At a demo one presenter trains and a room watches. If each viewer re-read the record and rebuilt
the charts every second, the server (one Python process: one GIL) would do the same work N times
for the same picture, and ten viewers on a two-core machine are enough to stall every redraw.
Here a run is followed once for all viewers, its chart figures are built once per new step count
from only the steps added since (amp_core.decimate.GrowingRun: a million-step run redraws at the
cost of its new steps and the few thousand points drawn), and the redraw interval stretches with the number of viewers, so that the server's share of
redrawing stays under a budget however many people watch.

Thread-safe: Streamlit runs each session's script in its own thread. No Streamlit here.
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from amp_core import charts, decimate
from amp_core.record import RunFollower, RunMetrics, effective_state

POLL_EVERY_S = 0.5  # viewers asking within this long of the last read share it (and its figures)
WAITING_POLL_EVERY_S = 0.1  # before the first step: a start should show at once
# Points per dense live chart. Every viewer's browser redraws each chart each second, and a crowd
# watching on one machine spends more there than the server does; the finished run is replayed at
# charts.MAX_POINTS. Min/max bins keep spikes either way.
LIVE_MAX_POINTS = 1500
DENSE = {charts.LOSS[0]: charts.LOSS[3], charts.GRAD_NORM[0]: charts.GRAD_NORM[3]}  # column -> log axis


@dataclass(frozen=True)
class LiveSnapshot:
    """A run as last read. Its arrays are never changed afterwards (a new read makes new ones)."""

    run_id: str
    status: dict
    config: dict
    metrics: RunMetrics
    generation: int = 0  # how many times the record was read again from its start

    @property
    def state(self) -> str:
        return effective_state(self.status)


class LiveRun:
    """One run, followed once for every viewer; its figures built once per step count and state."""

    def __init__(self, path: str | Path):
        self._follower = RunFollower(path)
        self._lock = threading.Lock()
        self._read_at = -math.inf
        self._snapshot: LiveSnapshot | None = None
        self._figures_key: tuple | None = None
        self._figures: tuple | None = None
        self._growing: decimate.GrowingRun | None = None
        self._growing_key: tuple | None = None  # (generation, injected steps) the GrowingRun follows

    def snapshot(self) -> LiveSnapshot:
        with self._lock:
            now = time.monotonic()
            waiting = self._snapshot is None or len(self._snapshot.metrics) == 0
            if now - self._read_at >= (WAITING_POLL_EVERY_S if waiting else POLL_EVERY_S):
                f = self._follower
                f.poll()
                self._read_at = now
                # A new RunMetrics around the current arrays: the follower replaces its arrays on the next
                # read rather than changing them, so this snapshot stays as it was.
                metrics = RunMetrics(dict(f.metrics.columns))
                self._snapshot = LiveSnapshot(f.path.name, dict(f.status), dict(f.config), metrics, f.generation)
            return self._snapshot

    def figures(self, snap: LiveSnapshot) -> tuple:
        """Loss scale, loss and gradient norm figures of `snap` (shared by every viewer: read only)."""
        key = (snap.run_id, len(snap.metrics), snap.state)
        with self._lock:
            if key != self._figures_key:
                self._figures = self._build(snap)
                self._figures_key = key
            return self._figures

    def _build(self, snap: LiveSnapshot) -> tuple:
        label = charts.short_label(snap.run_id)  # legends: short names
        injected = snap.config.get("inject_overflow") or ()
        key = (snap.generation, tuple(injected) if isinstance(injected, list) else ())
        if key != self._growing_key:
            self._growing = decimate.GrowingRun(DENSE, LIVE_MAX_POINTS, charts.MAX_MARKERS, key[1])
            self._growing_key = key
        scale, skipped, forced, dense = self._growing.update(snap.metrics)
        return (
            charts.scale_figure([charts.ScaleSeries(label, scale, skipped, forced)]),
            charts.dense_figure([(label, dense[charts.LOSS[0]])], *charts.LOSS[1:]),
            charts.dense_figure([(label, dense[charts.GRAD_NORM[0]])], *charts.GRAD_NORM[1:]),
        )


def machine_load(pressure_file: str = "/proc/pressure/cpu") -> float:
    """How oversubscribed the CPUs are: 1.0 when nothing waits for a core, higher when work queues.

    From Linux's pressure stall information where there is one (`some avg10`: the share of the last
    10 s in which a runnable task waited for a CPU; p -> 1 / (1 - p)), which answers within seconds;
    else from the one-minute load average per CPU.
    """
    try:
        with open(pressure_file) as f:
            some = next(line for line in f if line.startswith("some"))
        share = float(some.split("avg10=")[1].split()[0]) / 100
        return 1.0 / max(1e-3, 1.0 - share)
    except (OSError, StopIteration, IndexError, ValueError):
        pass
    try:
        return max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))
    except OSError:
        return 1.0


class RedrawPacer:
    """How often live views should redraw.

    Two limits, the larger wins, never below `floor_s` or above `ceiling_s`:
    - the server: the number of viewers seen in the last `window_s`, times the typical CPU time of
      one redraw, over `budget` (the share of one core redrawing may take);
    - the machine: where runnable work waits for a core (a lab machine that also trains, or serves
      its own browsers) the floor stretches by `machine_load()`, at most `max_stretch` times, so the
      presenter's run keeps its CPU and redraws still land instead of piling up.
    """

    def __init__(self, floor_s: float = 1.0, ceiling_s: float = 10.0, budget: float = 0.5, window_s: float = 15.0,
                 max_stretch: float = 5.0, load=None):  # fmt: skip
        self.floor_s, self.ceiling_s, self.budget, self.window_s, self.max_stretch = (
            floor_s,
            ceiling_s,
            budget,
            window_s,
            max_stretch,
        )
        self._load = load
        self._lock = threading.Lock()
        self._seen: dict[str, float] = {}
        self._cost_s = 0.0

    def record(self, viewer: str, cpu_s: float) -> None:
        """A redraw for `viewer` took `cpu_s` of the server thread's CPU time."""
        with self._lock:
            now = time.monotonic()
            self._seen[viewer] = now
            # A slow moving average: one heavy redraw (a first full read) should not stretch everyone.
            self._cost_s = cpu_s if self._cost_s == 0.0 else 0.9 * self._cost_s + 0.1 * cpu_s
            if len(self._seen) > 64:
                self._seen = {v: t for v, t in self._seen.items() if now - t < self.window_s}

    def viewers(self) -> int:
        with self._lock:
            now = time.monotonic()
            return sum(1 for t in self._seen.values() if now - t < self.window_s)

    def interval(self) -> float:
        return self.explain()[0]

    def explain(self) -> tuple[float, str]:
        """The interval in seconds, and why it is longer than the floor ("" when it is not)."""
        viewers, load = self.viewers(), (self._load or machine_load)()
        server = viewers * self._cost_s / self.budget
        machine = self.floor_s * min(self.max_stretch, max(1.0, load))
        every = min(self.ceiling_s, max(self.floor_s, server, machine))
        if every < 1.25 * self.floor_s:  # a little contention is normal: keep the floor
            return self.floor_s, ""
        if server >= machine:
            return every, f"{viewers} viewers share the server"
        return every, "this machine's CPUs are oversubscribed"


class LiveRegistry:
    """The live runs of one server: a LiveRun per run folder, and one pacer for all of them."""

    def __init__(self, pacer: RedrawPacer | None = None, keep: int = 16):
        self.pacer = pacer or RedrawPacer()
        self._keep = keep
        self._lock = threading.Lock()
        self._runs: dict[Path, LiveRun] = {}

    def run(self, path: str | Path) -> LiveRun:
        path = Path(path).resolve()
        with self._lock:
            live = self._runs.pop(path, None) or LiveRun(path)
            self._runs[path] = live  # most recently used last
            while len(self._runs) > self._keep:
                self._runs.pop(next(iter(self._runs)))
            return live
