"""Streamlit pieces the pages share: the one launcher, and the live view of a run.

Logic lives in amp_core; this module only lays out what it returns.
"""

from __future__ import annotations

import time
from pathlib import Path

# Every page imports this module first. Python runs a module's body once, under its module lock,
# so the heavy imports below happen in one thread: sessions importing NumPy, pandas or Plotly at the
# same time on a fresh server have broken it ("partially initialized module 'pandas'").
import numpy as np  # noqa: F401
import pandas  # noqa: F401
import plotly  # noqa: F401
import plotly.graph_objects  # noqa: F401
import streamlit as st

from amp_core import charts
from amp_core.runs import FINAL_STATES, RunFollower, RunRecordError, default_runs_dir, run_path

LIVE_EVERY_S = 1.0
FIRST_POINT_EVERY_S = 0.25
FIRST_POINT_HOLD_S = 2.0  # the first points stay on screen this long before the page switches to the 1 s timer


def runs_dir() -> Path:
    return default_runs_dir().resolve()


@st.cache_resource(show_spinner=False)
def _launcher(path: str):
    from amp_core.worker import get_launcher

    return get_launcher(path)


def launcher():
    """The process-wide launcher (shared by every session; it is thread-safe)."""
    return _launcher(str(runs_dir()))


def follower(run_id: str) -> RunFollower:
    """This session's incremental reader of a run (each redraw reads only the new lines)."""
    key = f"follower:{run_id}"
    if key not in st.session_state:
        st.session_state[key] = RunFollower(run_path(runs_dir(), run_id))
    return st.session_state[key]


def valid_run_id(run_id: str | None) -> str | None:
    """`run_id` if it names a run folder here; None (with a notice) for anything else."""
    if not run_id:
        return None
    try:
        path = run_path(runs_dir(), run_id)
    except RunRecordError:
        st.warning("The run named in the link is not a valid run id; it was ignored.")
        return None
    if not path.is_dir():
        st.warning("The run named in the link does not exist here; it was ignored.")
        return None
    return run_id


STATE_BADGES = {
    "queued": ":orange[queued]",
    "starting": ":orange[starting]",
    "running": ":blue[running]",
    "completed": ":green[completed]",
    "stopped": ":gray[stopped]",
    "failed": ":red[failed]",
    "interrupted": ":red[interrupted]",
}


def _progress(f: RunFollower) -> None:
    status, m = f.status, f.metrics
    total = f.config.get("max_steps") if isinstance(f.config.get("max_steps"), int) else None
    done = len(m)
    state = f.state
    text = f"**{STATE_BADGES.get(state, state)}** · step {done}" + (f" of {total}" if total else "")
    if state == "running" and done > 10 and total:
        rate = (m.time[-1] - m.time[max(0, done - 200)]) / max(1, min(200, done - 1))
        if rate > 0:
            text += f" · {1 / rate:.0f} steps/s · ETA {max(0.0, (total - done) * rate):.0f} s"
    skipped = int(np.nansum(m.skipped)) if done else 0
    if skipped:
        text += f" · {skipped} skipped"
    st.progress(min(1.0, done / total) if total else 0.0, text=text)
    if status.get("error"):
        (st.error if state == "failed" else st.info)(status["error"])
    for w in status.get("warnings", []):
        st.warning(w)


def run_charts(series: list[tuple[str, object]], key: str, injected=()) -> None:
    st.plotly_chart(charts.loss_scale_figure(series, injected=injected), key=f"{key}-scale")
    left, right = st.columns(2)
    with left:
        st.plotly_chart(charts.loss_figure(series), key=f"{key}-loss")
    with right:
        st.plotly_chart(charts.grad_norm_figure(series), key=f"{key}-grad")


def _first_point_shown_for(run_id: str, key: str, points: int) -> float:
    """Seconds since this view first drew a point of the run (0 before that)."""
    if not points:
        return 0.0
    since = st.session_state.setdefault(f"first-point:{key}:{run_id}", time.monotonic())
    return time.monotonic() - since


def live_run(run_id: str, key: str, paused: bool = False) -> None:
    """Progress and charts of one run, redrawn every second while it is queued or training."""
    f = follower(run_id)
    f.poll()
    live = f.state not in FINAL_STATES and not paused
    # Until the first point arrives, look often (a start should show at once); then settle to 1 s.
    waiting = len(f.metrics) == 0
    every = (FIRST_POINT_EVERY_S if waiting else LIVE_EVERY_S) if live else None

    @st.fragment(run_every=every, key=f"live-{key}")
    def view() -> None:
        f.poll()
        _progress(f)
        run_charts([(run_id, f.metrics)], key, injected=f.config.get("inject_overflow") or ())
        if live and (f.state in FINAL_STATES or (waiting and _first_point_shown_for(run_id, key, len(f.metrics)) > FIRST_POINT_HOLD_S)):
            st.rerun(scope="app")  # the run ended, or its first points are on screen: redraw the page with the right timer

    view()
