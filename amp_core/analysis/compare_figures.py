"""A comparison summary (amp_core.analysis.compare_summary) as a plain-text table and as Plotly figures.

Pure functions of the summary dict. Rows with too few timed steps are drawn grey and say so: their
step times are shown, but they are not a measurement to judge by.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go

from amp_core import charts
from amp_core.analysis.compare_summary import TOO_FEW_STEPS, variant_of
from amp_core.charts import PALETTE
from amp_core.record import Run

TABLE_COLUMNS = (  # (row key, header, format); "tflops" is shown in the unit flops_unit picks
    ("variant", "variant", "{}"),
    ("state", "state", "{}"),
    ("timed_steps", "timed", "{}"),
    ("median_step_ms", "step ms", "{:.2f}"),
    ("steps_per_s", "steps/s", "{:.3g}"),
    ("samples_per_s", "samples/s", "{:.0f}"),
    ("tflops", "TFLOP/s", "{:.3g}"),
    ("peak_share", "of peak", "{:.1%}"),
    ("memory_mib", "memory MiB", "{:.1f}"),
    ("final_loss", "final loss", "{:.4f}"),
    ("loss_diff", "loss diff", "{:+.4f}"),
    ("skipped_steps", "skipped", "{}"),
    ("speedup", "speedup", "{:.2f}x"),
    ("memory_ratio", "memory", "{:.2f}x"),
    ("verdict", "verdict", "{}"),
)
CHECK_MARK = {True: "pass", False: "fail", None: "-"}
LOG_AXIS_SPREAD = 30
LOSS_DASHES = ("solid", "dash", "dot", "dashdot", "longdash")
GREY = "#B8B8B8"
# Throughput units, largest first: the first whose size the largest value reaches is used (a CPU
# runs at GFLOP/s; Plotly's own SI ticks would read "20n" TFLOP/s there).
FLOPS_UNITS = (("TFLOP/s", 1.0), ("GFLOP/s", 1e-3), ("MFLOP/s", 1e-6))
# Plain numbers on the axes: d3's "~g" never writes SI prefixes (no "20n", no "1.5k").
TICK_FORMAT = "~g"


def flops_unit(rows: list[dict]) -> tuple[str, float]:
    """(unit, factor): multiply a row's `tflops` by factor to have it in unit."""
    values = [r["tflops"] for r in rows if r.get("tflops")]
    top = max(values, default=1.0)
    name, size = next(((n, s) for n, s in FLOPS_UNITS if top >= s), FLOPS_UNITS[-1])
    return name, 1.0 / size


def peak_label(row: dict) -> str:
    """The share of the GPU's peak as text; why there is none where there is none."""
    if row["peak_share"] is not None:
        return f"{row['peak_share']:.1%}"
    return "n/a, CPU" if row["device"] == "cpu" else "n/a"


def _cell(value: Any, fmt: str) -> str:
    return "n/a" if value is None else fmt.format(value)


def format_table(summary: dict) -> str:
    """The comparison as a plain-text table, its settings above and the per-target checks below."""
    s = summary["settings"]
    unit, factor = flops_unit(summary["rows"])
    head = [unit if k == "tflops" else h for k, h, _ in TABLE_COLUMNS]

    def cell(row: dict, key: str, fmt: str) -> str:
        if key == "peak_share":
            return peak_label(row)
        return _cell(None if row[key] is None else row[key] * factor, fmt) if key == "tflops" else _cell(row[key], fmt)

    body = [[cell(r, k, fmt) for k, _, fmt in TABLE_COLUMNS] for r in summary["rows"]]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    t = summary["targets"]
    checks = [
        f"  {r['variant']}: "
        + (
            f"{TOO_FEW_STEPS} ({r['timed_steps'] or 0} timed, {summary['min_timed_steps']} needed): no verdict"
            if r["verdict"] == TOO_FEW_STEPS
            else f"speedup {CHECK_MARK[r['speedup_ok']]}, memory {CHECK_MARK[r['memory_ok']]}, loss {CHECK_MARK[r['loss_ok']]}"
        )
        for r in summary["rows"]
        if r["verdict"] != "baseline"
    ]
    return "\n".join(
        [
            f"comparison {summary['group']} on {summary['device']}: hidden {s['hidden']} x depth {s['depth']}, batch {s['batch_size']}, "
            f"{s['max_steps']} steps, seed {s['seed']}; {(s['matmul_flops_per_step'] or 0) / 1e9:.3g} GFLOP of matmuls per step; "
            f"memory = {summary['memory_kind']}",
            line(head),
            *(line(b) for b in body),
            f"targets against {summary['baseline']}: speedup >= {t['speedup']}x, memory reduction >= {t['memory_reduction']:.0%}, |loss diff| < {t['loss_diff']}",
            *checks,
        ]
    )


def _too_few(row: dict) -> bool:
    return row.get("verdict") == TOO_FEW_STEPS or (row["state"] == "completed" and not row["enough_timed_steps"])


def _bars(summary: dict, key: str, factor: float = 1.0) -> tuple[list[str], np.ndarray, list[str]]:
    """x, y and colours; a row with too few timed steps is grey in the timing figures."""
    rows = summary["rows"]
    values = np.array([np.nan if r[key] is None else r[key] * factor for r in rows], dtype=np.float64)
    timing = key in ("median_step_ms", "tflops", "speedup")
    colors = [GREY if timing and _too_few(r) else PALETTE[i % len(PALETTE)] for i, r in enumerate(rows)]
    return [r["variant"] for r in rows], values, colors


def _bar_layout(fig: go.Figure, title: str, ytitle: str) -> go.Figure:
    fig.update_layout(
        title=title,
        height=320,
        margin=dict(l=60, r=20, t=50, b=40),
        yaxis_title=ytitle,
        showlegend=False,
        uirevision="keep",
    )
    return fig.update_yaxes(tickformat=TICK_FORMAT)


def bar_figure(summary: dict, key: str) -> go.Figure:
    """One measured quantity per variant: 'median_step_ms', 'tflops' or 'memory_mib'."""
    unit, factor = flops_unit(summary["rows"]) if key == "tflops" else ("", 1.0)
    title, ytitle = {
        "median_step_ms": ("Median step time (lower is faster)", "ms per step"),
        "tflops": ("Achieved matmul throughput", unit),
        "memory_mib": (f"Memory ({summary['memory_kind']})", "MiB"),
    }[key]
    x, y, colors = _bars(summary, key, factor)
    text = []
    for v, r in zip(y, summary["rows"]):
        label = (
            ""
            if np.isnan(v)
            else f"{v:.3g}"
            + (f" · {r['peak_share']:.1%} of peak" if key == "tflops" and r["peak_share"] is not None else "")
        )
        text.append(f"{label} · {TOO_FEW_STEPS}" if label and key != "memory_mib" and _too_few(r) else label)
    fig = _bar_layout(go.Figure(go.Bar(x=x, y=y, marker_color=colors, text=text, name=key)), title, ytitle)
    finite = y[np.isfinite(y) & (y > 0)]
    if len(finite) and finite.max() > LOG_AXIS_SPREAD * finite.min():  # emulated fp16 on a CPU: 40x the others
        fig.update_yaxes(type="log", title=f"{ytitle} (log axis)")
    return fig


def loss_figure(runs: list[Run]) -> go.Figure:
    """The runs' losses overlaid; dashed lines, since with one seed and one data order they often coincide."""
    fig = charts.loss_figure([(variant_of(r), r.metrics) for r in runs])
    for i, trace in enumerate(fig.data):
        trace.line.dash = LOSS_DASHES[i % len(LOSS_DASHES)]
    return fig.update_layout(title="Training loss (same seed, same batches)")


def ratio_figure(summary: dict) -> go.Figure:
    """Speedup and memory against 32-true, with the AMP targets drawn in."""
    x, speedup, speedup_colors = _bars(summary, "speedup")
    _, memory, _ = _bars(summary, "memory_ratio")
    fig = go.Figure(
        [
            go.Bar(
                x=x,
                y=speedup,
                name="speedup (32-true step time / this)",
                marker_color=[PALETTE[0] if c != GREY else GREY for c in speedup_colors],
            ),
            go.Bar(x=x, y=memory, name="memory (this / 32-true)", marker_color=PALETTE[1]),
        ]
    )
    t = summary["targets"]
    fig.add_hline(
        y=t["speedup"], line_dash="dash", line_color=PALETTE[0], annotation_text=f"speedup target {t['speedup']}x"
    )
    fig.add_hline(
        y=1 - t["memory_reduction"],
        line_dash="dot",
        line_color=PALETTE[1],
        annotation_text=f"memory target {1 - t['memory_reduction']:.1f}x",
    )
    _bar_layout(fig, f"Against {summary['baseline']}", "ratio (x)")
    return fig.update_layout(barmode="group", showlegend=True, legend=dict(orientation="h", y=-0.2))
