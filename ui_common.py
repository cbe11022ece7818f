"""Streamlit pieces the pages share: the one launcher, and the live view of a run.

Logic lives in amp_core; this module only lays out what it returns.
"""

from __future__ import annotations

import secrets
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
from amp_core.record import FINAL_STATES, RunRecordError, default_runs_dir, run_path
from amp_core.serve.live import LiveRegistry, LiveSnapshot, RedrawPacer

LIVE_EVERY_S = 1.0  # the fastest live redraw; with many viewers the pacer stretches it
FIRST_POINT_EVERY_S = 0.25
FIRST_POINT_HOLD_S = 2.0  # the first points stay on screen this long before the page switches to the slower timer
RETIME_AFTER_S = 10.0  # a session redraws the whole page for a new live interval at most this often


def runs_dir() -> Path:
    return default_runs_dir().resolve()


@st.cache_resource(show_spinner=False)
def _launcher(path: str):
    from amp_core.serve.launcher import get_launcher

    return get_launcher(path)


def launcher():
    """The process-wide launcher (shared by every session; it is thread-safe)."""
    return _launcher(str(runs_dir()))


def precision_table():
    """Lightning's precision answers (amp_core.serve.precision_table: one child process per install, then kept),
    with a spinner while that child runs; if it fails, an error on the page, and the page stops there."""
    from amp_core.serve.precision_table import PrecisionTableError, is_loaded, load_table

    cache_dir = runs_dir() / ".precision_tables"
    first = "" if is_loaded(cache_dir) else " (once after an install: about half a minute)"
    try:
        with st.spinner(f"Asking Lightning about every precision combination in a child process{first}…"):
            return load_table(cache_dir)
    except PrecisionTableError as err:
        st.error(f"Lightning could not be asked about precision: {err}. Reload the page to try again.")
        st.stop()


@st.cache_resource(show_spinner=False)
def live_registry() -> LiveRegistry:
    """The server's live runs: each followed once and drawn once for all sessions (thread-safe)."""
    return LiveRegistry(RedrawPacer(floor_s=LIVE_EVERY_S))


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


def fitted_columns(
    frame, labels: dict | None = None, px_per_char: float = 7.0, pad_px: int = 32, max_px: int = 1400
) -> dict:
    """A column_config that makes each column as wide as its widest cell or header.

    st.dataframe sizes columns itself but caps their width and cuts long text off with an ellipsis
    (its cells are drawn on a canvas, so they do not wrap); explicit pixel widths show them whole."""
    labels = labels or {}
    config = {}
    for name in frame.columns:
        label = labels.get(name, str(name))
        longest = max([len(label), *(len(str(v)) for v in frame[name])])
        config[name] = st.column_config.Column(label, width=min(max_px, int(longest * px_per_char) + pad_px))
    return config


STATE_BADGES = {
    "queued": ":orange[queued]",
    "starting": ":orange[starting]",
    "running": ":blue[running]",
    "completed": ":green[completed]",
    "stopped": ":gray[stopped]",
    "failed": ":red[failed]",
    "interrupted": ":red[interrupted]",
}


def _progress(snap: LiveSnapshot) -> None:
    """Progress bar, error and warnings of a run."""
    status, m = snap.status, snap.metrics
    total = snap.config.get("max_steps") if isinstance(snap.config.get("max_steps"), int) else None
    done = len(m)
    state = snap.state
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


def run_charts(series: list[tuple[str, object]], key: str, injected=(), skip_notes=None) -> None:
    figures = (
        charts.loss_scale_figure(series, injected=injected, skip_notes=skip_notes),
        charts.loss_figure(series),
        charts.grad_norm_figure(series),
    )
    _chart_layout(figures, key)


def _chart_layout(figures, key: str) -> None:
    scale, loss, grad = figures
    st.plotly_chart(scale, key=f"{key}-scale")
    left, right = st.columns(2)
    with left:
        st.plotly_chart(loss, key=f"{key}-loss")
    with right:
        st.plotly_chart(grad, key=f"{key}-grad")


def _first_point_shown_for(run_id: str, key: str, points: int) -> float:
    """Seconds since this view first drew a point of the run (0 before that)."""
    if not points:
        return 0.0
    since = st.session_state.setdefault(f"first-point:{key}:{run_id}", time.monotonic())
    return time.monotonic() - since


def _retime_due(key: str, every: float | None, wanted: float) -> bool:
    """Whether this view's timer is far enough from the pacer's interval to redraw the page for it."""
    if every is None or every == FIRST_POINT_EVERY_S or 2 / 3 < wanted / every < 3 / 2:
        return False
    last = st.session_state.get(f"retimed:{key}", 0.0)
    if time.monotonic() - last < RETIME_AFTER_S:
        return False
    st.session_state[f"retimed:{key}"] = time.monotonic()
    return True


def live_run(run_id: str, key: str, paused: bool = False) -> None:
    """Progress and charts of one run, redrawn while it is queued or training.

    Every session watching the run shares one read of its record and one set of figures; the redraw
    interval is 1 s, longer when so many watch that redrawing would crowd the server or the machine
    is oversubscribed (amp_core.serve.live.RedrawPacer), and the view says so.
    """
    registry = live_registry()
    live = registry.run(run_path(runs_dir(), run_id))
    viewer = st.session_state.setdefault("viewer-id", secrets.token_hex(8))
    snap = live.snapshot()
    going = snap.state not in FINAL_STATES and not paused
    # From the start until the first point arrives, look often (a start should show at once); then
    # settle. A run waiting in the queue may wait minutes: it is looked at like a running one.
    waiting = len(snap.metrics) == 0 and snap.state != "queued"
    every, slower_because = (
        registry.pacer.explain() if going and not waiting else (FIRST_POINT_EVERY_S if going else None, "")
    )

    @st.fragment(run_every=every, key=f"live-{key}")
    def view() -> None:
        cpu0 = time.thread_time()
        snap = live.snapshot()
        _progress(snap)
        if slower_because:
            st.caption(f"Live view redrawn every {every:.1f} s: {slower_because}.")
        _chart_layout(live.figures(snap), key)
        if not going:
            return
        registry.pacer.record(viewer, time.thread_time() - cpu0)
        ended = snap.state in FINAL_STATES
        dequeued = snap.state != "queued" and not waiting and len(snap.metrics) == 0
        first_points_held = waiting and _first_point_shown_for(run_id, key, len(snap.metrics)) > FIRST_POINT_HOLD_S
        if ended or dequeued or first_points_held or _retime_due(key, every, registry.pacer.interval()):
            # The run ended, left the queue, has its first points on screen, or the room changed: redraw with the right timer.
            st.rerun(scope="app")

    view()


# -- workloads: the select and each workload's own settings (bounds from amp_core.training.config's table) --

WORKLOAD_LABELS = {
    "hidden": "Hidden width",
    "depth": "Hidden layers",
    "layers": "Layers",
    "heads": "Heads",
    "width": "Width",
    "context": "Context length",
    "model": "Model (pkg.module:attr)",
    "data": "Data (pkg.module:attr, optional)",
    "path": "Folder put on sys.path (optional)",
}


def workload_select(key: str) -> str:
    """The workload, chosen outside the form so that the settings in it follow the choice."""
    from amp_core.training.workloads import WORKLOADS

    return st.selectbox("Workload", list(WORKLOADS), format_func=lambda n: f"{n}: {WORKLOADS[n].description}", key=key)


def workload_inputs(workload: str) -> dict:
    """The workload's own settings as widgets; your own model's fields are off unless the server may import it."""
    from amp_core.training.config import RULES, widget_bounds, workload_settings
    from amp_core.training.workloads import user_models_allowed

    allowed, why = user_models_allowed(st.get_option("server.address"))
    names = workload_settings(workload)
    values = {}
    for col, name in zip(st.columns(max(1, len(names))), names):
        bounds = widget_bounds(name, workload)
        if RULES[name].kind == "text":
            typed = col.text_input(
                WORKLOAD_LABELS[name], value=bounds["value"], help=bounds["help"], disabled=not allowed
            ).strip()
            values[name] = typed if allowed else ""  # a disabled field's value is still the browser's word: not used
        else:
            values[name] = col.number_input(WORKLOAD_LABELS[name], **bounds)
    if workload == "user":
        st.caption(f"Your own model: {why}.")
    return values
