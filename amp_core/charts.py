"""Plotly figures from run records: pure functions, no Streamlit.

What of a long series is drawn is amp_core.decimate's: the loss scale from its change points as a
step line (`line_shape="hv"`), dense series (loss, gradient norm) as min/max bins past `max_points`
so a spike survives, every skipped step marked (binned past MAX_MARKERS, each marker counting its
steps). A binned line says so in its legend name and its hover. Each figure is built in one go
(traces and layout together: Plotly re-validates the traces on every later layout update), and
everything is passed to Plotly as NumPy arrays, steps as int32 where exact.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from amp_core import decimate
from amp_core.record import RunMetrics, change_points

MAX_POINTS = 4000
MAX_MARKERS = 2000
PALETTE = ("#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880")


def _pow2_ticks(lo: float, hi: float) -> tuple[list[float], list[str]]:
    a, b = math.floor(math.log2(lo)), math.ceil(math.log2(hi))
    step = max(1, math.ceil((b - a + 1) / 12))
    exps = list(range(a, b + 1, step))
    return [2.0**e for e in exps], [f"2<sup>{e}</sup>" for e in exps]


def _log10_ticks(lo: float, hi: float) -> tuple[list[float], list[str]]:
    """Ticks for a log axis from lo to hi, each written in full ('0.2', '2', '2e-05').

    Plotly's own log ticks label the minor ticks by their leading digit only ("2 3 ... 9"), so 0.2
    and 2 read alike."""
    a, b = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    decades = math.log10(hi / lo)
    if decades < 0.7:  # a narrow range: evenly spaced round numbers read best
        step = 10.0 ** math.floor(math.log10((hi - lo) / 4 or hi))
        step *= next(m for m in (1, 2, 5, 10) if (hi - lo) / (step * m) <= 6)
        vals = [round(k * step, 12) for k in range(math.floor(lo / step), math.ceil(hi / step) + 1) if k > 0]
        return vals, [f"{v:.6g}" for v in vals]
    mantissas = (1, 2, 3, 5) if decades <= 1.5 else (1, 2, 5) if decades <= 4 else (1,)
    step = 1 if len(mantissas) > 1 else max(1, math.ceil((b - a + 1) / 10))
    vals = [m * 10.0**e for e in range(a, b + 1, step) for m in mantissas]
    vals = [v for v in vals if lo / 1.5 <= v <= hi * 1.5] or [10.0**a, 10.0**b]
    return vals, [f"{v:g}" if 1e-4 <= v < 1e5 else f"{v:.0e}" for v in vals]


def short_label(run_id: str) -> str:
    """A run id shortened for legends: '20261202-010709-16-mixed-4bb0ee' -> '16-mixed 4bb0ee'.

    The timestamp is dropped; the random suffix keeps two runs of the same precision apart."""
    parts = run_id.split("-")
    if len(parts) >= 4 and parts[0].isdigit() and len(parts[0]) == 8 and parts[1].isdigit():
        return f"{'-'.join(parts[2:-1])} {parts[-1]}"
    return run_id


def _layout_dict(title: str, ytitle: str, height: int = 320, **yaxis) -> dict:
    return dict(
        title=dict(text=title),
        height=height,
        margin=dict(l=60, r=20, t=70, b=40),
        xaxis=dict(title=dict(text="optimizer step")),
        yaxis=dict(title=dict(text=ytitle), **yaxis),
        # Above the plot, right-aligned: below it, a legend collides with the x-axis title.
        legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="right", x=1.0),
        uirevision="keep",  # keeps a user's zoom across redraws of the same chart where Plotly can
    )


def _layout(fig: go.Figure, title: str, ytitle: str, height: int = 320) -> go.Figure:
    fig.update_layout(_layout_dict(title, ytitle, height))
    return fig


Series = tuple[str, RunMetrics]


@dataclass(frozen=True)
class ScaleSeries:
    """What the loss-scale chart draws of one run: its step line and its skipped-step markers."""

    label: str
    line: decimate.Line
    skipped: decimate.Marks
    injected: decimate.Marks  # skipped steps where an overflow was put in on purpose


def scale_series(
    label: str,
    m: RunMetrics,
    injected: Iterable[int] = (),
    max_points: int = MAX_POINTS,
    max_markers: int = MAX_MARKERS,
) -> ScaleSeries:
    steps, scale = m.step, m.loss_scale
    skipped = np.flatnonzero(decimate.drawable(scale, positive=True) & (m.skipped > 0))
    forced = np.isin(steps[skipped], np.asarray(list(injected), dtype=np.float64))
    return ScaleSeries(
        label,
        decimate.scale_line(steps, scale, max_points),
        decimate.skipped_marks(steps, scale, skipped[~forced], max_markers),
        decimate.skipped_marks(steps, scale, skipped[forced], max_markers),
    )


def loss_scale_figure(
    series: Iterable[Series],
    title: str = "Loss scale (log2)",
    injected: Iterable[int] = (),
    skip_notes: tuple[np.ndarray, np.ndarray] | None = None,
) -> go.Figure:
    """The GradScaler's scale per step on a log2 axis, with skipped (overflow) steps marked.

    `injected`: steps where an overflow was put in on purpose (of the first series); marked apart.
    `skip_notes`: (steps, texts) of the first series' skip ledger (amp_core.record.skips.skip_hover): each
    skipped marker's hover then says why (inf or NaN, and the parameter that first held one).
    """
    injected = list(injected)
    drawn = [scale_series(label, m, injected if i == 0 else ()) for i, (label, m) in enumerate(series)]
    return scale_figure(drawn, title, skip_notes)


def scale_figure(
    drawn: list[ScaleSeries], title: str = "Loss scale (log2)", skip_notes: tuple[np.ndarray, np.ndarray] | None = None
) -> go.Figure:
    """The loss-scale chart of series already reduced to what is drawn (see scale_series)."""
    traces, lo, hi = [], math.inf, 0.0
    for i, s in enumerate(drawn):
        if not len(s.line.y):
            continue
        lo, hi = min(lo, float(s.line.y.min())), max(hi, float(s.line.y.max()))
        name = f"{s.label} scale" + (f" ({s.line.binned})" if s.line.binned else "")
        traces.append(_line_trace(s.line, name, PALETTE[i % len(PALETTE)], shape="hv"))
        star = dict(symbol="star", size=12, color="#ff7f0e")
        cross = dict(symbol="x", size=8, color="#d62728")
        if s.injected.total:
            plain = "step %{x}: overflow injected on purpose, skipped at scale %{y:.3g}"
            traces.append(_marks_trace(s.injected, f"{s.label} injected", star, plain))
        if s.skipped.total:
            notes = skip_notes if i == 0 else None
            plain = "step %{x}: overflow, step skipped at scale %{y:.3g}"
            traces.append(_marks_trace(s.skipped, f"{s.label} skipped", cross, plain, notes))
    if hi > 0:
        tickvals, ticktext = _pow2_ticks(lo, hi)
        layout = _layout_dict(title, "loss scale", type="log", tickvals=tickvals, ticktext=ticktext)
    else:
        layout = _layout_dict(title, "loss scale")
        note = "no GradScaler in this run: bf16 and fp32 need no loss scaling"
        layout["annotations"] = [dict(text=note, showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")]
    return go.Figure(data=traces, layout=layout)


def _line_trace(line: decimate.Line, name: str, color: str, shape: str = "linear") -> go.Scatter:
    hover = "step %{x}: %{y:.4g}" + (f"<br>{line.binned}" if line.binned else "") + "<extra>%{fullData.name}</extra>"
    return go.Scatter(
        x=line.x, y=line.y, mode="lines", line_shape=shape, name=name, line=dict(color=color), hovertemplate=hover
    )


def _marks_trace(
    marks: decimate.Marks, name: str, marker: dict, plain: str, notes: tuple[np.ndarray, np.ndarray] | None = None
) -> go.Scatter:
    """Markers of skipped steps: the ledger's note or `plain` on each; binned, how many each stands for."""
    customdata, hover = None, plain + "<extra></extra>"
    if marks.counts is not None:
        name = f"{name} ({marks.total}; binned per {marks.width:,} steps)"
        customdata = np.array(
            [
                f"{c} skipped step{'s' if c > 1 else ''} in steps {a}–{b}"
                for c, a, b in zip(marks.counts, marks.x, marks.last)
            ],
            dtype=object,
        )
        hover = "%{customdata}, the first at scale %{y:.3g}<extra></extra>"
    else:
        name = f"{name} ({marks.total})"
        if notes is not None:
            customdata, hover = _notes_at(marks.x, notes), "%{customdata}<extra></extra>"
    return go.Scatter(
        x=marks.x, y=marks.y, mode="markers", name=name, marker=marker, customdata=customdata, hovertemplate=hover
    )


def _notes_at(steps: np.ndarray, skip_notes: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The ledger's hover text for each marker step; steps the ledger lacks get the plain sentence."""
    known = dict(zip(skip_notes[0].tolist(), skip_notes[1].tolist()))
    return np.array([known.get(int(s), f"step {int(s)}: overflow, step skipped") for s in steps], dtype=object)


def dense_figure(lines: list[tuple[str, decimate.Line]], title: str, ytitle: str, log: bool = False) -> go.Figure:
    """A dense series chart of lines already reduced to what is drawn (see decimate.dense_line)."""
    traces, positive = [], []  # positive: the log axis's data range, for its ticks
    for i, (label, line) in enumerate(lines):
        if log and len(line.y):
            positive += [float(line.y.min()), float(line.y.max())]
        name = label + (f" ({line.binned})" if line.binned else "")
        traces.append(_line_trace(line, name, PALETTE[i % len(PALETTE)]))
    yaxis = {}
    if log:
        yaxis["type"] = "log"
        if positive:
            yaxis["tickvals"], yaxis["ticktext"] = _log10_ticks(min(positive), max(positive))
    return go.Figure(data=traces, layout=_layout_dict(title, ytitle, **yaxis))


def _dense_figure(
    series: Iterable[Series], column: str, title: str, ytitle: str, log: bool = False, max_points: int = MAX_POINTS
) -> go.Figure:
    lines = [(label, decimate.dense_line(m.step, getattr(m, column), max_points, positive=log)) for label, m in series]
    return dense_figure(lines, title, ytitle, log)


LOSS = ("loss", "Training loss", "loss", False)  # column, title, y-axis title, log axis
GRAD_NORM = ("grad_norm", "Gradient norm (unscaled, L2)", "norm", True)


def loss_figure(series: Iterable[Series], max_points: int = MAX_POINTS) -> go.Figure:
    return _dense_figure(series, *LOSS, max_points=max_points)


def grad_norm_figure(series: Iterable[Series], max_points: int = MAX_POINTS) -> go.Figure:
    return _dense_figure(series, *GRAD_NORM, max_points=max_points)


def grad_histogram_figure(hist: dict, loss_scale: float | None) -> go.Figure:
    """A log2 histogram of unscaled gradient values, and the same values times the loss scale, against fp16's range."""
    from amp_core.analysis.gradients import FP16_MAX, FP16_MIN_NORMAL_LOG2, FP16_MIN_SUBNORMAL_LOG2

    counts = np.asarray(hist["counts"], dtype=np.float64)
    counts[0] = max(0.0, counts[0] - hist.get("zeros", 0))
    total = max(1.0, counts.sum())
    nz = np.flatnonzero(counts)
    edges = hist["log2_lo"] + np.arange(len(counts), dtype=np.float64)
    fig = go.Figure()
    if nz.size:
        sl = slice(nz[0], nz[-1] + 1)
        fig.add_trace(
            go.Bar(
                x=edges[sl] + 0.5,
                y=counts[sl] / total,
                name="unscaled gradients",
                marker_color=PALETTE[0],
                opacity=0.75,
            )
        )
        if loss_scale:
            shift = math.log2(loss_scale)
            fig.add_trace(
                go.Bar(
                    x=edges[sl] + 0.5 + shift,
                    y=counts[sl] / total,
                    name=f"× loss scale 2^{shift:.3g}",
                    marker_color=PALETTE[2],
                    opacity=0.75,
                )
            )
    fig.add_vrect(
        x0=-80,
        x1=FP16_MIN_SUBNORMAL_LOG2,
        fillcolor="#d62728",
        opacity=0.12,
        line_width=0,
        annotation_text="fp16 underflow → 0",
        annotation_position="top left",
    )
    fig.add_vrect(
        x0=FP16_MIN_SUBNORMAL_LOG2,
        x1=FP16_MIN_NORMAL_LOG2,
        fillcolor="#ff7f0e",
        opacity=0.12,
        line_width=0,
        annotation_text="subnormal",
        annotation_position="top left",
    )
    fig.add_vrect(
        x0=math.log2(FP16_MAX),
        x1=40,
        fillcolor="#d62728",
        opacity=0.12,
        line_width=0,
        annotation_text="overflow → inf",
        annotation_position="top right",
    )
    _layout(fig, f"Gradient values at step {hist['step']} (log2 bins)", "share of values")
    lo = float(edges[nz[0]]) - 2 if nz.size else -40.0
    hi = max(20.0, float(edges[nz[-1]] + (math.log2(loss_scale) if loss_scale else 0)) + 3) if nz.size else 20.0
    fig.update_layout(barmode="overlay", xaxis_title="log2 |gradient|", bargap=0)
    fig.update_xaxes(range=[min(lo, FP16_MIN_SUBNORMAL_LOG2 - 4), hi])
    return fig


def whatif_figure(
    steps: np.ndarray, recorded: np.ndarray, replays: Iterable[tuple[str, np.ndarray, np.ndarray]]
) -> go.Figure:
    """The recorded loss scale beside replayed policies (label, scales, skipped), on a log2 axis."""
    fig = go.Figure()
    lines = [("recorded", recorded, None), *replays]
    lo, hi = math.inf, 0.0
    for i, (label, scales, skipped) in enumerate(lines):
        x, y = change_points(steps, scales)
        lo, hi = min(lo, float(np.nanmin(scales))), max(hi, float(np.nanmax(scales)))
        dash = "solid" if i == 0 else "dash"
        name = label if skipped is None else f"{label} (estimate, {int(np.sum(skipped))} skipped)"
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                mode="lines",
                line_shape="hv",
                name=name,
                line=dict(color=PALETTE[i % len(PALETTE)], dash=dash),
            )
        )
    _layout(fig, "What-if: the same gradients under other scaler policies", "loss scale")
    if hi > 0 and lo > 0:
        tickvals, ticktext = _pow2_ticks(lo, hi)
        fig.update_yaxes(type="log", tickvals=tickvals, ticktext=ticktext)
    return fig


def figure_payload_bytes(fig: go.Figure) -> int:
    return len(fig.to_json().encode())


def figure_html(fig: go.Figure) -> str:
    """A standalone HTML file (Plotly's JavaScript embedded, so it opens offline)."""
    return fig.to_html(include_plotlyjs=True, full_html=True)
