"""fp16's real underflow, measured where it happens: the 16-bit outputs of backward ops.

`amp_core.analysis.gradients` reads the parameters' fp32 gradients as a stand-in; this counts the real
16-bit tensors that backward produces under autocast (activation gradients, and weight gradients
before autograd casts them to the parameters' float32), as the op recorder sees them. Counts are by
binade: bin k holds |x| in [2**(log2_lo + k), 2**(log2_lo + k + 1)), log2_lo being the format's
smallest subnormal (2**-24 for fp16), so a value that underflowed is an exact zero, counted apart.
The subnormal range is (0, smallest normal): there values keep fewer significant bits.

`MagnitudeCounter.add` uses torch (imported there); the rest is plain Python for the page.
"""

from __future__ import annotations

import math
from typing import Any


class MagnitudeCounter:
    """Counts the magnitudes of 16-bit tensors per dtype: binades, exact zeros, subnormals, non-finite."""

    def __init__(self) -> None:
        self.by_dtype: dict[str, dict[str, Any]] = {}

    def add(self, t: Any) -> None:
        import torch

        info = torch.finfo(t.dtype)
        lo = round(math.log2(info.smallest_normal * info.eps))  # the smallest subnormal: 2**-24 for fp16
        bins = math.floor(math.log2(info.max)) - lo + 1
        a = t.detach().abs().float().flatten()
        finite = torch.isfinite(a)
        nonzero = a[(a > 0) & finite]
        binade = (torch.floor(torch.log2(nonzero)).long() - lo).clamp(0, bins - 1)
        counts = torch.bincount(binade, minlength=bins).tolist()
        name = str(t.dtype).removeprefix("torch.")
        entry = self.by_dtype.setdefault(
            name,
            {
                "dtype": name,
                "log2_lo": lo,
                "log2_min_normal": round(math.log2(info.smallest_normal)),
                "counts": [0] * bins,
                "zeros": 0,
                "subnormal": 0,
                "nonfinite": 0,
                "values": 0,
                "tensors": 0,
            },
        )
        entry["counts"] = [x + y for x, y in zip(entry["counts"], counts)]
        entry["zeros"] += int((a == 0).sum())
        entry["subnormal"] += int(((a > 0) & (a < info.smallest_normal)).sum())
        entry["nonfinite"] += int((~finite).sum())
        entry["values"] += a.numel()
        entry["tensors"] += 1


def shares(entry: dict[str, Any]) -> dict[str, float]:
    """Shares of the counted values that are exactly zero, subnormal, non-finite (0.0 each when none were counted)."""
    total = entry.get("values", 0)
    if not total:
        return {"zero": 0.0, "subnormal": 0.0, "nonfinite": 0.0}
    return {
        "zero": entry["zeros"] / total,
        "subnormal": entry["subnormal"] / total,
        "nonfinite": entry["nonfinite"] / total,
    }


def underflow_rows(underflow: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (measurement, dtype) of an autocast map's `underflow` section, labelled."""
    rows = []
    for key, label in (("scale_1", "at loss scale 1 (no scaling)"), ("run_scale", "at the run's loss scale")):
        m = underflow.get(key)
        if not m:
            continue
        for dtype, entry in sorted(m["by_dtype"].items()):
            s = shares(entry)
            rows.append(
                {
                    "measured": label,
                    "loss scale": m["scale"],
                    "dtype": dtype,
                    "tensors": entry["tensors"],
                    "values": entry["values"],
                    "exactly zero": s["zero"],
                    "subnormal": s["subnormal"],
                    "inf/NaN": s["nonfinite"],
                }
            )
    return rows


def binade_series(entry: dict[str, Any]) -> tuple[list[int], list[int]]:
    """(log2 lower edges, counts) of the non-zero finite values, for a bar chart."""
    lo = entry["log2_lo"]
    return [lo + k for k in range(len(entry["counts"]))], list(entry["counts"])


def binade_figure(underflow: dict[str, Any], dtype: str = "float16") -> Any:
    """Bars of the backward 16-bit magnitudes by binade, at scale 1 and at the run's scale, with the
    subnormal range shaded; the exact zeros are in the legend (they have no binade)."""
    import numpy as np
    import plotly.graph_objects as go

    fig = go.Figure()
    entry = None
    for key, label in (("scale_1", "loss scale 1"), ("run_scale", "the run's loss scale")):
        m = underflow.get(key)
        entry = (m or {}).get("by_dtype", {}).get(dtype) if m else None
        if not entry:
            continue
        edges, counts = binade_series(entry)
        total = max(entry["values"], 1)
        name = f"{label} ({m['scale']:g}): {entry['zeros'] / total:.2%} exactly zero"
        fig.add_bar(x=np.asarray(edges), y=np.asarray(counts) / total, name=name, opacity=0.75)
    if entry:
        fig.add_vrect(
            x0=entry["log2_lo"] - 0.5,
            x1=entry["log2_min_normal"] - 0.5,
            fillcolor="gold",
            opacity=0.15,
            line_width=0,
            annotation_text="subnormal",
            annotation_position="top left",
        )
    fig.update_layout(
        barmode="overlay",
        height=320,
        margin=dict(t=30, b=40, l=50, r=20),
        xaxis_title=f"log2 |value| of {dtype} backward outputs (binade)",
        yaxis_title="share of values",
        legend=dict(orientation="h", y=-0.3),
    )
    return fig
