"""The skip ledger read back: why each skipped step was skipped, for the Runs page and the advice.

The monitor writes one line of skips.jsonl per skipped step (see amp_core.training.skip_probe): the scale
before and after, whether the gradients held inf or NaN, the parameter that first held one in
backward order, and whether an LR scheduler stepped although the optimizer did not. Stdlib and
NumPy only: the Streamlit server imports this.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from amp_core.record import Run, load_skips

COLUMNS = ("step", "scale_before", "scale_after", "nonfinite", "param", "scheduler_stepped", "injected")


def skipped_rows(run: Run) -> list[dict[str, Any]]:
    """One row per skipped step of the run (COLUMNS), the ledger's facts joined to metrics.jsonl.

    A run recorded before the ledger existed has its skipped steps with None for what it lacks."""
    ledger = {int(r["step"]): r for r in load_skips(run.path)}
    injected = set(run.config.get("inject_overflow") or ())
    m = run.metrics
    rows = []
    for i in np.flatnonzero(m.skipped > 0):
        step = int(m.step[i])
        known = ledger.get(step, {})
        scale = float(m.loss_scale[i])
        rows.append(
            {
                "step": step,
                "scale_before": known.get("scale_before", None if np.isnan(scale) else scale),
                "scale_after": known.get("scale_after"),
                "nonfinite": known.get("nonfinite"),
                "param": known.get("param"),
                "scheduler_stepped": known.get("scheduler_stepped"),
                "injected": step in injected,
            }
        )
    return rows


def _scale(value: Any) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) else "?"


def hover_text(row: dict[str, Any]) -> str:
    """What a skipped step's marker says on hover."""
    what = (
        f"{row['nonfinite']} in {row['param']}" if row.get("nonfinite") and row.get("param") else "non-finite gradients"
    )
    text = f"step {row['step']} skipped: {what}; scale {_scale(row.get('scale_before'))} → {_scale(row.get('scale_after'))}"
    if row.get("injected"):
        text += " (injected)"
    if row.get("scheduler_stepped"):
        text += "; the LR scheduler stepped anyway"
    return text


def skip_hover(run: Run) -> tuple[np.ndarray, np.ndarray]:
    """(steps, hover texts) of the run's skipped steps, as NumPy arrays for a Plotly trace."""
    rows = skipped_rows(run)
    return np.array([r["step"] for r in rows], dtype=np.int64), np.array([hover_text(r) for r in rows], dtype=object)


def main_culprit(run: Run) -> tuple[str, int, int] | None:
    """(parameter, its skips, natural skips with a named parameter) among the steps not injected on purpose."""
    named = [r["param"] for r in skipped_rows(run) if r["param"] and not r["injected"]]
    if not named:
        return None
    param, count = Counter(named).most_common(1)[0]
    return param, count, len(named)


def scheduler_steps_on_skipped(run: Run) -> list[int]:
    """The skipped steps on which an LR scheduler stepped although the optimizer did not."""
    return [r["step"] for r in skipped_rows(run) if r["scheduler_stepped"]]
