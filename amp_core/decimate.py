"""What of a long series a chart draws: min/max bins, change points, every skipped step (pure NumPy).

A chart is a few hundred pixels wide; a run may have a million steps. Dense series (loss, gradient
norm) are cut into bins of `width` consecutive steps and each bin is drawn by its smallest and its
largest value, in step order, so a spike is never lost; the first and the last recorded points are
always drawn exactly. Widths are powers of two and bins start at step index 0, so a growing run's
earlier bins never move: the line does not shimmer from one live redraw to the next, and a viewer
(`amp_core.serve.live`) can keep the bins it has and bin only the new steps.

The loss scale is piecewise constant: its change points drawn as a step line are the same picture
as every point. Skipped steps are each marked; only past `max_markers` are they binned, and then
each marker says how many skipped steps its bin holds. Whatever is binned says so (`Line.binned`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Line:
    x: np.ndarray  # optimizer steps
    y: np.ndarray
    binned: str = ""  # "" when every point is drawn; else what one drawn point stands for


@dataclass(frozen=True)
class Marks:
    """Markers at skipped steps: one per step, or (binned) one per bin holding `counts[i]` of them."""

    x: np.ndarray  # the first skipped step in each marker's bin (binned) or each skipped step
    y: np.ndarray  # the loss scale at that step
    total: int  # skipped steps marked, all of them
    counts: np.ndarray | None = None  # binned: skipped steps in each marker's bin
    last: np.ndarray | None = None  # binned: the last skipped step in each marker's bin
    width: int = 1  # binned: steps per bin


def bin_width(n: int, bins: int) -> int:
    """The smallest power of two that cuts n points into at most `bins` bins."""
    width = 1
    while -(-n // width) > bins:
        width *= 2
    return width


def steps_for_display(x: np.ndarray) -> np.ndarray:
    """Steps as int32 where that is exact (half the bytes of float64 on the wire), else as they are."""
    x = np.asarray(x)
    if len(x) and np.isfinite(x).all() and (x == np.floor(x)).all() and x.min() >= 0 and x.max() < 2**31:
        return x.astype(np.int32)
    return x


def drawable(y: np.ndarray, positive: bool = False) -> np.ndarray:
    """Which values a chart can draw: finite, and above 0 on a log axis."""
    ok = np.isfinite(y)
    return ok & (y > 0) if positive else ok


def min_max_indices(y: np.ndarray, width: int, start: int = 0, positive: bool = False) -> np.ndarray:
    """Indices of the smallest and the largest drawable value of each bin of y[start:], sorted.

    Bins hold `width` consecutive values (the last may hold fewer); `start` is a multiple of
    `width`. A bin with nothing drawable adds nothing. Ties go to the earliest index.
    """
    seg = np.asarray(y, dtype=np.float64)[start:]
    if len(seg) == 0:
        return np.empty(0, dtype=np.int64)
    ok = drawable(seg, positive)
    whole = bool(ok.all())
    full = len(seg) // width * width
    parts = []
    if full:
        parts += _block_extrema(seg[:full], ok[:full], whole, width)
    if full < len(seg):
        tail = _block_extrema(seg[full:], ok[full:], whole, len(seg) - full)
        parts += [t + full for t in tail]
    idx = np.unique(np.concatenate(parts)) if parts else np.empty(0, dtype=np.int64)
    return idx + start


def _block_extrema(seg: np.ndarray, ok: np.ndarray, whole: bool, width: int) -> list[np.ndarray]:
    low = seg if whole else np.where(ok, seg, np.inf)
    high = seg if whole else np.where(ok, seg, -np.inf)
    lo = low.reshape(-1, width).argmin(axis=1)
    hi = high.reshape(-1, width).argmax(axis=1)
    starts = np.arange(0, len(seg), width)
    keep = ok.reshape(-1, width).any(axis=1)
    return [(starts + lo)[keep], (starts + hi)[keep]]


def binned_text(width: int) -> str:
    return f"binned: min and max of each {width:,} steps"


def dense_line(steps: np.ndarray, y: np.ndarray, max_points: int, positive: bool = False) -> Line:
    """A dense series as drawn: every drawable point, or, past `max_points`, min/max bins."""
    y = np.asarray(y, dtype=np.float64)
    ok = drawable(y, positive)
    if len(y) <= max_points:
        idx = np.flatnonzero(ok)
        return Line(steps_for_display(steps[idx]), y[idx])
    width = bin_width(len(y), max(1, (max_points - 2) // 2))
    ends = np.flatnonzero(ok)[[0, -1]] if ok.any() else np.empty(0, dtype=np.int64)
    idx = np.union1d(min_max_indices(y, width, positive=positive), ends)
    return Line(steps_for_display(steps[idx]), y[idx], binned_text(width))


def change_indices(values: np.ndarray, start: int = 0) -> np.ndarray:
    """Indices in values[start:] where a value differs from the one before it (index `start` counts
    as a change only when start is 0). NaN counts as a value of its own."""
    v = np.asarray(values, dtype=np.float64)
    a = max(0, start - 1)
    seg = v[a:]
    if len(seg) == 0:
        return np.empty(0, dtype=np.int64)
    nan = np.isnan(seg)
    changed = (seg[1:] != seg[:-1]) & ~(nan[1:] & nan[:-1])
    idx = np.flatnonzero(changed) + a + 1
    return np.concatenate([[0], idx]) if start == 0 else idx


def scale_line(steps: np.ndarray, scale: np.ndarray, max_points: int) -> Line:
    """The loss scale's change points (and its last point) for a step line; binned past `max_points`."""
    scale = np.asarray(scale, dtype=np.float64)
    valid = drawable(scale, positive=True)
    idx = np.flatnonzero(valid)
    if len(idx) == 0:
        return Line(steps_for_display(steps[idx]), scale[idx])
    keep = idx[np.union1d(change_indices(scale[idx]), [len(idx) - 1])]
    return _scale_line_of(steps, scale, keep, max_points)


def _scale_line_of(steps: np.ndarray, scale: np.ndarray, keep: np.ndarray, max_points: int) -> Line:
    """The step line through the records at `keep` (its change points), binned past `max_points`."""
    if len(keep) <= max_points:
        return Line(steps_for_display(steps[keep]), scale[keep])
    # A scale that changes at nearly every step: its change points binned like a dense series.
    width = bin_width(len(keep), max(1, (max_points - 2) // 2))
    sub = np.union1d(min_max_indices(scale[keep], width), [0, len(keep) - 1])
    return Line(steps_for_display(steps[keep[sub]]), scale[keep[sub]], f"binned: min and max of each {width:,} changes")


def skipped_marks(steps: np.ndarray, scale: np.ndarray, idx: np.ndarray, max_markers: int) -> Marks:
    """Markers for the skipped steps at indices `idx` (ascending): each one, or past `max_markers`
    one per bin of steps, counting the skipped steps it holds."""
    x, y = steps[idx], scale[idx]
    if len(idx) <= max_markers:
        return Marks(steps_for_display(x), y, len(idx))
    lo = int(np.floor(x[0]))
    width = bin_width(int(x[-1]) - lo + 1, max_markers)
    bins = ((x - lo) // width).astype(np.int64)
    _, first, counts = np.unique(bins, return_index=True, return_counts=True)
    last = np.append(first[1:], len(x)) - 1
    return Marks(steps_for_display(x[first]), y[first], len(idx), counts, steps_for_display(x[last]), width)


class _GrowingBins:
    """min/max bins of one growing column, kept between updates: only new steps are binned."""

    def __init__(self, max_points: int, positive: bool):
        self.max_points, self.positive = max_points, positive
        self.bins = max(1, (max_points - 2) // 2)
        self.width, self.done, self.kept = 0, 0, np.empty(0, dtype=np.int64)
        self.first: int | None = None  # the first drawable index, once seen
        self.searched = 0  # indices looked at for it

    def update(self, steps: np.ndarray, y: np.ndarray) -> Line:
        n = len(y)
        if n <= self.max_points:
            return dense_line(steps, y, self.max_points, self.positive)
        width = bin_width(n, self.bins)
        if width != self.width:  # the bins doubled (rarely: log2 of the run's growth): bin again
            self.width, self.done, self.kept = width, 0, np.empty(0, dtype=np.int64)
        full = n // width * width
        if full > self.done:
            self.kept = np.concatenate([self.kept, min_max_indices(y[:full], width, self.done, self.positive)])
            self.done = full
        tail = min_max_indices(y, width, self.done, self.positive)
        idx = np.union1d(np.concatenate([self.kept, tail]), self._ends(y))
        return Line(steps_for_display(steps[idx]), y[idx], binned_text(width))

    def _ends(self, y: np.ndarray) -> list[int]:
        if self.first is None and self.searched < len(y):
            found = np.flatnonzero(drawable(y[self.searched :], self.positive))
            self.first = int(found[0]) + self.searched if len(found) else None
            self.searched = len(y)
        if self.first is None:
            return []
        end = len(y)
        while end > self.first:  # the last drawable point: nearly always the very last one
            found = np.flatnonzero(drawable(y[max(self.first, end - 4096) : end], self.positive))
            if len(found):
                return [self.first, int(found[-1]) + max(self.first, end - 4096)]
            end -= 4096
        return [self.first]


class GrowingRun:
    """What the live charts draw of one run that grows, updated from only the steps added since.

    Gives exactly what the whole-series functions give (dense_line, scale_line, skipped_marks) for
    the same steps, at the cost of the new steps plus the few thousand drawn points. `reset()` when
    the record was read again from its start.
    """

    def __init__(self, dense: dict[str, bool], max_points: int, max_markers: int, injected=()):
        self.dense, self.max_points, self.max_markers = dense, max_points, max_markers
        self.injected = np.asarray(sorted(injected), dtype=np.float64)
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.bins = {c: _GrowingBins(self.max_points, positive) for c, positive in self.dense.items()}
        self.changes = np.empty(0, dtype=np.int64)  # where the valid loss scale changes
        self.last_valid: int | None = None  # the last record with a valid loss scale
        self.skipped = np.empty(0, dtype=np.int64)
        self.forced = np.empty(0, dtype=np.int64)

    def update(self, m) -> tuple[Line, Marks, Marks, dict[str, Line]]:
        """(loss-scale line, skipped marks, injected marks, {column: dense line}) of `m` (a RunMetrics)."""
        n = len(m)
        if n < self.n:
            self.reset()
        steps, scale = m.step, m.loss_scale
        idx = np.flatnonzero(drawable(scale[self.n :], positive=True)) + self.n
        if len(idx):
            values = scale[idx]
            before = scale[self.last_valid] if self.last_valid is not None else np.nan
            changed = np.concatenate([[values[0] != before], values[1:] != values[:-1]])
            self.changes = np.concatenate([self.changes, idx[changed]])
            self.last_valid = int(idx[-1])
            hit = idx[m.skipped[idx] > 0]
            forced = np.isin(steps[hit], self.injected)
            self.skipped = np.concatenate([self.skipped, hit[~forced]])
            self.forced = np.concatenate([self.forced, hit[forced]])
        self.n = n
        return (
            self._scale_line(steps, scale),
            skipped_marks(steps, scale, self.skipped, self.max_markers),
            skipped_marks(steps, scale, self.forced, self.max_markers),
            {c: b.update(steps, getattr(m, c)) for c, b in self.bins.items()},
        )

    def _scale_line(self, steps: np.ndarray, scale: np.ndarray) -> Line:
        if self.last_valid is None:
            return Line(steps_for_display(steps[:0]), scale[:0])
        keep = np.union1d(self.changes, [self.last_valid])
        return _scale_line_of(steps, scale, keep, self.max_points)
