"""Plotly figures from run records: pure functions, no Streamlit.

The loss scale is piecewise constant, so it is drawn from its change points as a step line
(`line_shape="hv"`): the same picture from a tiny fraction of the points. Dense series (loss,
gradient norm) are reduced to at most `max_points` by keeping each bucket's first, min and max
points, so a spike survives downsampling. Everything is passed to Plotly as NumPy arrays.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np
import plotly.graph_objects as go

from amp_core.record import RunMetrics, change_points

MAX_POINTS = 4000
MAX_MARKERS = 2000
PALETTE = ("#636efa", "#ef553b", "#00cc96", "#ab63fa", "#ffa15a", "#19d3f3", "#ff6692", "#b6e880")


def downsample(x: np.ndarray, y: np.ndarray, max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most ~max_points of (x, y), keeping each bucket's first, minimum and maximum point."""
    n = len(x)
    if n <= max_points:
        return x, y
    buckets = max(1, max_points // 3)
    edges = np.linspace(0, n, buckets + 1).astype(np.int64)
    filled = np.where(np.isnan(y), np.inf, y)
    keep = [edges[:-1]]
    starts = edges[:-1]
    keep.append(starts + np.array([np.argmin(filled[a:b]) for a, b in zip(edges[:-1], edges[1:])]))
    filled = np.where(np.isnan(y), -np.inf, y)
    keep.append(starts + np.array([np.argmax(filled[a:b]) for a, b in zip(edges[:-1], edges[1:])]))
    keep.append(np.array([n - 1]))
    idx = np.unique(np.concatenate(keep))
    return x[idx], y[idx]


def _thin(x: np.ndarray, y: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray, bool]:
    if len(x) <= max_points:
        return x, y, False
    idx = np.unique(np.linspace(0, len(x) - 1, max_points).astype(np.int64))
    return x[idx], y[idx], True


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


def _layout(fig: go.Figure, title: str, ytitle: str, height: int = 320) -> go.Figure:
    fig.update_layout(
        title=title,
        height=height,
        margin=dict(l=60, r=20, t=70, b=40),
        xaxis_title="optimizer step",
        yaxis_title=ytitle,
        # Above the plot, right-aligned: below it, a legend collides with the x-axis title.
        legend=dict(orientation="h", yanchor="bottom", y=1.02, xanchor="right", x=1.0),
        uirevision="keep",  # keeps a user's zoom across redraws of the same chart where Plotly can
    )
    return fig


Series = tuple[str, RunMetrics]


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
    fig = go.Figure()
    lo, hi = math.inf, 0.0
    injected = np.asarray(sorted(injected), dtype=np.float64)
    for i, (label, m) in enumerate(series):
        color = PALETTE[i % len(PALETTE)]
        valid = ~np.isnan(m.loss_scale) & (m.loss_scale > 0)
        if not valid.any():
            continue
        steps, scale = change_points(m.step[valid], m.loss_scale[valid])
        lo, hi = min(lo, float(scale.min())), max(hi, float(scale.max()))
        fig.add_trace(
            go.Scatter(x=steps, y=scale, mode="lines", line_shape="hv", name=f"{label} scale", line=dict(color=color))
        )
        skipped = valid & (m.skipped > 0)
        forced = skipped & np.isin(m.step, injected) if i == 0 else np.zeros_like(skipped)
        if forced.any():
            fig.add_trace(
                go.Scatter(
                    x=m.step[forced],
                    y=m.loss_scale[forced],
                    mode="markers",
                    name=f"{label} injected ({int(forced.sum())})",
                    marker=dict(symbol="star", size=12, color="#ff7f0e"),
                    hovertemplate="step %{x}: overflow injected on purpose, skipped at scale %{y:.3g}<extra></extra>",
                )
            )
        skipped &= ~forced
        if skipped.any():
            sx, sy, thinned = _thin(m.step[skipped], m.loss_scale[skipped], MAX_MARKERS)
            name = f"{label} skipped ({int(skipped.sum())}{', sampled' if thinned else ''})"
            notes = _notes_at(sx, skip_notes) if i == 0 and skip_notes is not None else None
            hover = (
                "%{customdata}<extra></extra>"
                if notes is not None
                else "step %{x}: overflow, step skipped at scale %{y:.3g}<extra></extra>"
            )
            fig.add_trace(
                go.Scatter(
                    x=sx,
                    y=sy,
                    mode="markers",
                    name=name,
                    marker=dict(symbol="x", size=8, color="#d62728"),
                    customdata=notes,
                    hovertemplate=hover,
                )
            )
    _layout(fig, title, "loss scale")
    if hi > 0:
        tickvals, ticktext = _pow2_ticks(lo, hi)
        fig.update_yaxes(type="log", tickvals=tickvals, ticktext=ticktext)
    else:
        fig.add_annotation(
            text="no GradScaler in this run: bf16 and fp32 need no loss scaling",
            showarrow=False,
            x=0.5,
            y=0.5,
            xref="paper",
            yref="paper",
        )
    return fig


def _notes_at(steps: np.ndarray, skip_notes: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """The ledger's hover text for each marker step; steps the ledger lacks get the plain sentence."""
    known = dict(zip(skip_notes[0].tolist(), skip_notes[1].tolist()))
    return np.array([known.get(int(s), f"step {int(s)}: overflow, step skipped") for s in steps], dtype=object)


def _dense_figure(
    series: Iterable[Series], column: str, title: str, ytitle: str, log: bool = False, max_points: int = MAX_POINTS
) -> go.Figure:
    fig = go.Figure()
    positive: list[float] = []  # the log axis's data range, for its ticks
    for i, (label, m) in enumerate(series):
        y = getattr(m, column)
        keep = np.isfinite(y) & (y > 0 if log else True)
        x, y = downsample(m.step[keep], y[keep], max_points)
        if log and len(y):
            positive += [float(y.min()), float(y.max())]
        fig.add_trace(go.Scatter(x=x, y=y, mode="lines", name=label, line=dict(color=PALETTE[i % len(PALETTE)])))
    _layout(fig, title, ytitle)
    if log:
        fig.update_yaxes(type="log")
        if positive:
            tickvals, ticktext = _log10_ticks(min(positive), max(positive))
            fig.update_yaxes(tickvals=tickvals, ticktext=ticktext)
    return fig


def loss_figure(series: Iterable[Series], max_points: int = MAX_POINTS) -> go.Figure:
    return _dense_figure(series, "loss", "Training loss", "loss", max_points=max_points)


def grad_norm_figure(series: Iterable[Series], max_points: int = MAX_POINTS) -> go.Figure:
    return _dense_figure(series, "grad_norm", "Gradient norm (unscaled, L2)", "norm", log=True, max_points=max_points)


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
