"""Floating-point formats of mixed precision, measured with torch: their range, their rounding, a number line.

Every property is computed by torch (`torch.finfo`, bit patterns viewed as the dtype, real casts), never typed
in. tf32 has no torch dtype: it is fp32 storage whose mantissa tensor cores cut to 10 bits in matmuls. Here it
is **emulated**: float32 rounded to 10 mantissa bits, round-to-nearest-even, on the float32 bits (an int32
view). That is the IEEE rounding; a GPU's own conversion may differ (truncate, or round ties away from zero).

Two torch behaviours this module reports as they are, not as one might expect (torch 2.13):

- a cast from float64 goes through float32 (`c10::Half` and friends are built from a float), so a float64
  value is rounded twice: `1 + 2**-11 + 2**-40` becomes 1.0 in fp16, not the nearest fp16 `1 + 2**-10`;
- float8_e4m3fn has no inf and its casts saturate: anything above 448, inf included, becomes 448 (NaN stays NaN).
"""

from __future__ import annotations

import math
import numbers
import sys
from dataclasses import dataclass
from functools import cache

import numpy as np
import plotly.graph_objects as go
import torch

TF32_DROPPED_BITS = 13  # float32's 23 mantissa bits, of which tf32 keeps 10
# name, storage dtype, mantissa bits dropped from the storage's, what it is for
FORMAT_TABLE = (
    ("fp32", torch.float32, 0, "IEEE single: weights, optimizer state, the master copy under AMP"),
    (
        "tf32",
        torch.float32,
        TF32_DROPPED_BITS,
        "emulated: fp32 storage, 10-bit mantissa inside Ampere+ tensor-core matmuls",
    ),
    ("fp16", torch.float16, 0, "IEEE half: 16-mixed autocast; its narrow range needs a loss scale"),
    ("bf16", torch.bfloat16, 0, "brain float: fp32's exponent range, 7 mantissa bits; bf16-mixed, no scaler"),
    ("fp8 e4m3fn", torch.float8_e4m3fn, 0, "float8: more precision, tiny range, no inf (forward activations, weights)"),
    ("fp8 e5m2", torch.float8_e5m2, 0, "float8: fp16's exponent range, 2 mantissa bits (gradients)"),
)
SIGNED_INT_OF_WIDTH = {8: torch.int8, 16: torch.int16, 32: torch.int32}
VERDICTS = {
    "exact": "the format holds the value exactly",
    "rounded": "rounded to the nearest value the format holds (relative error at most eps/2)",
    "subnormal": "below the smallest normal: fewer significant bits, a larger relative error",
    "underflow": "too small: it became zero",
    "overflow": "too large: inf, NaN, or clamped to the largest value",
    "nan": "not a number in, not a number out",
}


@dataclass(frozen=True)
class Format:
    name: str
    storage: torch.dtype
    dropped_bits: int
    bits: int
    exponent_bits: int
    mantissa_bits: int
    max: float
    smallest_normal: float
    smallest_subnormal: float
    eps: float
    overflow: str  # what a value far above max becomes: "inf", "saturates" (to ±max) or "nan"
    note: str

    @property
    def emulated(self) -> bool:
        return self.dropped_bits > 0

    @property
    def dtype_name(self) -> str:
        return str(self.storage).removeprefix("torch.") + (f" (emulated {self.name})" if self.emulated else "")

    @property
    def tiny(self) -> float:  # torch.finfo's name for the smallest normal
        return self.smallest_normal

    @property
    def overflow_threshold(self) -> float:
        """Half an ulp above max: a value beyond it rounds past the largest finite number."""
        return self.max + self.eps * 2.0 ** (math.frexp(self.max)[1] - 1) / 2


def round_mantissa(x: torch.Tensor, dropped_bits: int) -> torch.Tensor:
    """float32 `x` with its last `dropped_bits` mantissa bits rounded off, to nearest, ties to even.

    Adding half an ulp minus one, plus the kept last bit, then clearing the dropped bits is round-half-even; a
    carry out of the mantissa bumps the exponent, and out of the largest exponent gives inf, as IEEE rounding does.
    """
    x = x.to(torch.float32)
    nan = torch.isnan(x)
    bits = torch.where(nan, 0, x.view(torch.int32))  # a NaN's payload could carry into the sign bit
    kept_lsb = (bits >> dropped_bits) & 1
    rounded = ((bits + (1 << (dropped_bits - 1)) - 1 + kept_lsb) & -(1 << dropped_bits)).view(torch.float32)
    return torch.where(nan, x, rounded)


def round_to_tf32(x: torch.Tensor) -> torch.Tensor:
    """`x` (cast to float32) rounded to tf32's 10 mantissa bits, still in float32 (emulated; see the module doc)."""
    return round_mantissa(x, TF32_DROPPED_BITS)


def _cast(x: torch.Tensor, storage: torch.dtype, dropped_bits: int) -> torch.Tensor:
    y = x.to(storage)
    return round_mantissa(y, dropped_bits) if dropped_bits else y


def to_format(x: torch.Tensor, fmt: Format) -> torch.Tensor:
    """`x` cast to `fmt`, in its storage dtype (tf32: float32 holding tf32's rounding)."""
    return _cast(x, fmt.storage, fmt.dropped_bits)


def _bit_pattern(pattern: int, storage: torch.dtype) -> float:
    width = torch.finfo(storage).bits
    return torch.tensor(pattern, dtype=SIGNED_INT_OF_WIDTH[width]).view(storage).item()


def _describe(name: str, storage: torch.dtype, dropped: int, note: str) -> Format:
    fi = torch.finfo(storage)
    storage_mantissa = round(-math.log2(fi.eps))
    largest_bits = torch.tensor(fi.max, dtype=storage).view(SIGNED_INT_OF_WIDTH[fi.bits]).item()
    largest = _bit_pattern(largest_bits & -(1 << dropped), storage)  # fi.max, or with tf32's dropped bits cleared
    landed = _cast(torch.tensor(4 * largest, dtype=torch.float64), storage, dropped).item()
    return Format(
        name=name,
        storage=storage,
        dropped_bits=dropped,
        bits=fi.bits - dropped,
        exponent_bits=fi.bits - 1 - storage_mantissa,
        mantissa_bits=storage_mantissa - dropped,
        max=largest,
        smallest_normal=fi.smallest_normal,
        smallest_subnormal=_bit_pattern(1 << dropped, storage),  # the bit pattern 0...01: the smallest positive value
        eps=fi.eps * 2.0**dropped,
        overflow="nan" if math.isnan(landed) else "inf" if math.isinf(landed) else "saturates",
        note=note,
    )


@cache
def formats() -> tuple[Format, ...]:
    """Every format, fp32 first, with its properties as torch reports them."""
    return tuple(_describe(*row) for row in FORMAT_TABLE)


def _as_float(value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"expected a real number (int or float), got {type(value).__name__} {repr(value)[:40]}")
    try:
        return float(value)
    except OverflowError:  # an int beyond float64: every format overflows from float64's largest just as well
        return sys.float_info.max if value > 0 else -sys.float_info.max


def _relative_error(x: float, r: float) -> float:
    if r == x:
        return 0.0
    if not math.isfinite(x):
        return math.nan if math.isnan(x) else math.inf
    return abs(r - x) / abs(x)


def _verdict(x: float, r: float, fmt: Format) -> str:
    checks = (  # the first that holds
        ("nan", math.isnan(x)),
        ("overflow", (math.isfinite(x) and not math.isfinite(r)) or (abs(x) > fmt.overflow_threshold and r != x)),
        ("underflow", r == 0 and x != 0),
        ("exact", r == x),
        ("subnormal", abs(r) < fmt.smallest_normal),
        ("rounded", True),
    )
    return next(verdict for verdict, holds in checks if holds)


def _bit_fields(y: torch.Tensor, fmt: Format) -> str:
    width = torch.finfo(fmt.storage).bits
    raw = (int(y.view(SIGNED_INT_OF_WIDTH[width]).item()) & ((1 << width) - 1)) >> fmt.dropped_bits
    s = format(raw, f"0{fmt.bits}b")
    return f"{s[0]} {s[1 : 1 + fmt.exponent_bits]} {s[1 + fmt.exponent_bits :]}"


def round_to_formats(value: float) -> list[dict]:
    """`value` cast to every format by torch: the result, its relative error, a verdict (see VERDICTS), the bits.

    Any real number is accepted (NaN, inf, huge, negative); anything else raises ValueError.
    """
    x = _as_float(value)
    xt = torch.tensor(x, dtype=torch.float64)
    rows = []
    for fmt in formats():
        y = to_format(xt, fmt)
        r = y.to(torch.float64).item()
        rows.append(
            {
                "format": fmt.name,
                "result": r,
                "relative_error": _relative_error(x, r),
                "verdict": _verdict(x, r, fmt),
                "bits": _bit_fields(y, fmt),
            }
        )
    return rows


MARKER_SYMBOLS = {"exact": "circle", "rounded": "circle", "subnormal": "circle-open", "underflow": "x", "overflow": "x"}
SUBNORMAL_OPACITY, NORMAL_OPACITY = 0.3, 0.9
MARKER_COLORS = ("#d62728", "#2ca02c")


def _where_it_fits(label: str, v: float, rows: list[dict]) -> str:
    groups = {"fits": ("exact", "rounded"), "subnormal in": ("subnormal",), "lost in": ("underflow", "overflow")}
    parts = [f"<b>{label}</b> = {v:.3g} = 2<sup>{math.log2(v):.1f}</sup>"]
    for title, verdicts in groups.items():
        names = [
            f"{r['format']}" + (f" ({r['verdict']})" if title == "lost in" else "")
            for r in rows
            if r["verdict"] in verdicts
        ]
        parts.append(f"{title}: {', '.join(names) or 'none'}")
    return " · ".join(parts)


def number_line_figure(gradient: float | None = None, loss_scale: float | None = None) -> go.Figure:
    """Each format's range on a log2 number line (subnormals pale, normals dark), |gradient| and
    |gradient| × loss_scale marked, with the formats each lands in."""
    fmts = formats()
    lo = np.log2(np.array([f.smallest_subnormal for f in fmts]))
    mid = np.log2(np.array([f.smallest_normal for f in fmts]))
    hi = np.log2(np.array([f.max for f in fmts]))
    fig = go.Figure([_range_bar(f, lo[i], mid[i], hi[i]) for i, f in enumerate(fmts)])
    points = [] if gradient is None else [("|gradient|", abs(gradient))]
    if gradient is not None and loss_scale is not None:
        points.append((f"|gradient| × loss scale {loss_scale:g}", abs(gradient) * abs(loss_scale)))
    notes, left, right = [], float(lo.min()), float(hi.max())
    for (label, v), color in zip(points, MARKER_COLORS):
        if not (math.isfinite(v) and v > 0):
            notes.append(f"<b>{label}</b> = {v:g}: no place on a log2 axis")
            continue
        left, right = min(left, math.log2(v)), max(right, math.log2(v))
        notes.append(_mark_value(fig, fmts, label, v, color))
    _lay_out_number_line(fig, notes, left, right, len(fmts))
    return fig


def _range_bar(f: Format, lo: float, mid: float, hi: float) -> go.Bar:
    """One format's subnormal and normal ranges as two overlaid horizontal bars."""
    return go.Bar(
        orientation="h",
        y=np.array([f.name, f.name]),
        base=np.array([lo, mid]),
        x=np.array([mid - lo, hi - mid]),
        name=f.name,
        showlegend=False,
        marker=dict(color="#636efa", opacity=np.array([SUBNORMAL_OPACITY, NORMAL_OPACITY])),
        customdata=np.array([[lo, mid, f.smallest_subnormal, f.smallest_normal], [mid, hi, f.smallest_normal, f.max]]),
        text=np.array(["subnormal", "normal"]),
        textposition="none",
        hovertemplate=f"{f.name} %{{text}}: 2<sup>%{{customdata[0]:.2f}}</sup> (%{{customdata[2]:.3g}}) "
        "to 2<sup>%{customdata[1]:.2f}</sup> (%{customdata[3]:.3g})<extra></extra>",
    )


def _mark_value(fig: go.Figure, fmts: tuple[Format, ...], label: str, v: float, color: str) -> str:
    """Mark `v` on every format's line (its symbol says what the format makes of it); returns the note."""
    rows = round_to_formats(v)
    x = math.log2(v)
    fig.add_trace(
        go.Scatter(
            x=np.full(len(fmts), x),
            y=np.array([f.name for f in fmts]),
            mode="markers",
            name=label,
            marker=dict(
                color=color,
                size=12,
                line=dict(width=2, color=color),
                symbol=np.array([MARKER_SYMBOLS[r["verdict"]] for r in rows]),
            ),
            text=np.array([f"{r['verdict']}: {r['result']:.4g}" for r in rows]),
            hovertemplate=f"{label} = {v:.4g} in %{{y}}: %{{text}}<extra></extra>",
        )
    )
    fig.add_vline(x=x, line=dict(color=color, dash="dot", width=1))
    return _where_it_fits(label, v, rows)


def _lay_out_number_line(fig: go.Figure, notes: list[str], left: float, right: float, n_formats: int) -> None:
    """The notes above the plot, a log2 axis over [left, right] with margin, room for every line."""
    for k, text in enumerate(notes):
        fig.add_annotation(
            text=text,
            xref="paper",
            yref="paper",
            x=0,
            y=1.02 + 0.09 * (len(notes) - 1 - k),
            xanchor="left",
            yanchor="bottom",
            showarrow=False,
            align="left",
        )
    ticks = np.arange(16 * math.floor((left - 4) / 16), math.ceil(right + 4) + 16, 16, dtype=np.int64)
    fig.update_xaxes(
        range=[left - 4, right + 4],
        tickvals=ticks,
        ticktext=[f"2<sup>{k}</sup>" for k in ticks],
        title="magnitude (log2 scale)",
        zeroline=False,
    )
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(
        barmode="overlay",
        height=90 + 50 * n_formats + 40 * len(notes),
        margin=dict(l=90, r=20, t=30 + 40 * len(notes), b=50),
        legend=dict(orientation="h", y=-0.25),
        title=None,
    )
