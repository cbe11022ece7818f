"""What every benchmark returns: figures, each with its goal, and side-by-side ratios.

A figure is one measured number with the goal it is held to (or none) and one line saying how it
was measured. Speed figures are ratios of two things measured in the same run, interleaved (A B B A
...), so a machine that slows down or speeds up mid-run affects both sides alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass


@dataclass
class Figure:
    section: str  # e.g. "monitor", "first point", "redraw", "compare", "cuda"
    name: str
    value: float | None  # None: not measured (then `how` says why)
    unit: str
    goal: str | None  # e.g. "<= 1.03"; None where no goal applies
    met: bool | None  # None where no goal applies or nothing was measured
    how: str  # one line

    def to_json(self) -> dict:
        return asdict(self)


def figure(
    section: str,
    name: str,
    value: float | None,
    unit: str,
    how: str,
    *,
    at_most: float | None = None,
    at_least: float | None = None,
) -> Figure:
    """A Figure whose goal and `met` follow from `at_most` / `at_least` (neither: no goal)."""
    if at_most is not None and at_least is not None:
        raise ValueError("a figure has one goal: at_most or at_least")
    goal, met = None, None
    if at_most is not None:
        goal = f"<= {at_most:g}"
        met = None if value is None else value <= at_most
    elif at_least is not None:
        goal = f">= {at_least:g}"
        met = None if value is None else value >= at_least
    return Figure(section, name, value, unit, goal, met, how)


def not_measured(section: str, name: str, unit: str, why: str, goal: str | None = None) -> Figure:
    """A figure that could not be measured; `met` stays None and `how` says why."""
    return Figure(section, name, None, unit, goal, None, f"not measured: {why}")


@dataclass
class Ratio:
    ratio: float  # median of b/a over the pairs
    a_median: float
    b_median: float
    pairs: int


def interleaved_ratio(a: Callable[[], float], b: Callable[[], float], pairs: int) -> Ratio:
    """Median of b()/a() over `pairs` pairs, run in ABBA order.

    Each callable returns the quantity measured (a duration in seconds, say); alternating which goes
    first cancels a drift that favours the first or the second of a pair.
    """
    if pairs < 1:
        raise ValueError("pairs must be at least 1")
    ratios, xs, ys = [], [], []
    for i in range(pairs):
        if i % 2 == 0:
            x, y = a(), b()
        else:
            y, x = b(), a()
        xs.append(x)
        ys.append(y)
        ratios.append(y / x)
    return Ratio(statistics.median(ratios), statistics.median(xs), statistics.median(ys), pairs)


def timed(fn: Callable[[], object]) -> Callable[[], float]:
    """`fn` as a callable returning how long one call took (perf_counter seconds)."""

    def run() -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    return run
