"""amp_core.decimate and the charts drawn from it: what a binned chart shows stays honest (every
skipped step marked or counted, each bin's min and max, the last point exact, the binning said), and
the live, incremental reduction draws exactly what the whole-series one draws."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amp_core import charts, decimate
from amp_core.record import RunMetrics


def metrics(n: int, seed: int = 0, skip_every: int | None = None, nan_share: float = 0.01) -> RunMetrics:
    rng = np.random.default_rng(seed)
    skipped = rng.random(n) < 0.01 if skip_every is None else (np.arange(n) % skip_every == 0)
    scale = 2.0 ** (16 - np.cumsum(skipped) % 8)
    grad = np.exp(rng.normal(-1.5, 0.5, n))
    grad[skipped | (rng.random(n) < nan_share)] = np.nan
    cols = {"step": np.arange(n, dtype=np.float64), "loss": rng.normal(1.0, 0.1, n), "loss_scale": scale,
            "skipped": skipped.astype(np.float64), "grad_norm": grad, "grad_max": grad, "growth_tracker": np.zeros(n),
            "time": np.arange(n, dtype=np.float64)}  # fmt: skip
    return RunMetrics(cols)


def test_a_binned_loss_keeps_every_bins_min_and_max_and_the_exact_last_point():
    m = metrics(100_003, seed=1)
    loss = m.loss.copy()
    loss[54_321], loss[77_777] = 50.0, -50.0  # a spike each way
    m.columns["loss"] = loss
    fig = charts.loss_figure([("run", m)], max_points=1500)
    x, y = np.asarray(fig.data[0].x), np.asarray(fig.data[0].y)
    assert len(x) <= 1500 and x.dtype == np.int32
    assert x[0] == 0 and x[-1] == 100_002 and y[-1] == loss[-1]
    assert 54_321 in x and 77_777 in x
    width = decimate.bin_width(len(loss), (1500 - 2) // 2)
    for a in range(0, len(loss), width):  # each bin's extremes are drawn
        seg = loss[a : a + width]
        assert seg.min() in y and seg.max() in y
    assert "binned: min and max of each" in fig.data[0].name and "binned" in fig.data[0].hovertemplate


def test_a_short_run_draws_every_point_and_says_nothing_of_bins():
    m = metrics(300)
    fig = charts.grad_norm_figure([("run", m)])
    finite = np.isfinite(m.grad_norm)
    np.testing.assert_array_equal(np.asarray(fig.data[0].x), m.step[finite])
    assert fig.data[0].name == "run" and "binned" not in fig.data[0].hovertemplate


def test_every_skipped_step_is_marked_below_the_marker_cap():
    m = metrics(100_000, seed=2)  # about 1,000 skipped steps
    fig = charts.loss_scale_figure([("run", m)])
    marks = next(t for t in fig.data if " skipped (" in t.name)
    np.testing.assert_array_equal(np.asarray(marks.x), m.step[m.skipped > 0])
    assert marks.name == f"run skipped ({int(m.skipped.sum())})"


def test_past_the_cap_skipped_steps_are_binned_and_each_marker_counts_its_steps():
    m = metrics(50_000, skip_every=3)  # 16,667 skipped steps
    fig = charts.loss_scale_figure([("run", m)])
    marks = next(t for t in fig.data if " skipped (" in t.name)
    total = int(m.skipped.sum())
    assert len(marks.x) <= charts.MAX_MARKERS and f"({total}; binned per" in marks.name
    counts = [int(text.split(" ")[0]) for text in marks.customdata]
    assert sum(counts) == total  # none lost: the hover counts add up to every skipped step
    assert marks.x[0] == 0 and marks.customdata[-1].endswith(f"–{int(m.step[m.skipped > 0][-1])}")


def test_the_loss_scale_line_reaches_the_last_step():
    m = metrics(10_000, seed=3)
    line = charts.loss_scale_figure([("run", m)]).data[0]
    assert line.x[-1] == 9_999 and line.y[-1] == m.loss_scale[-1] and line.line.shape == "hv"


def growing(m: RunMetrics, n: int) -> RunMetrics:
    return RunMetrics({c: v[:n] for c, v in m.columns.items()})


def whole(m: RunMetrics, max_points: int, max_markers: int, injected) -> tuple:
    s = charts.scale_series("run", m, injected, max_points, max_markers)
    dense = {c: decimate.dense_line(m.step, getattr(m, c), max_points, positive=log) for c, log in DENSE.items()}
    return s.line, s.skipped, s.injected, dense


DENSE = {"loss": False, "grad_norm": True}


def assert_same(a, b) -> None:
    if isinstance(a, tuple):
        assert len(a) == len(b)
        for u, v in zip(a, b):
            assert_same(u, v)
        return
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
        return
    for name in a.__dataclass_fields__:
        u, v = getattr(a, name), getattr(b, name)
        if isinstance(u, np.ndarray) or isinstance(v, np.ndarray):
            np.testing.assert_array_equal(u, v, err_msg=name)
        else:
            assert u == v, name


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(0, 6000),
    cuts=st.lists(st.integers(0, 6000), max_size=8),
    seed=st.integers(0, 1000),
    skip_every=st.sampled_from([None, 2, 7]),
    max_points=st.sampled_from([50, 301, 1500]),
)
def test_the_live_reduction_equals_the_whole_one_at_every_step_count(n, cuts, seed, skip_every, max_points):
    m = metrics(n, seed, skip_every, nan_share=0.2)
    injected = [int(s) for s in m.step[m.skipped > 0][:3]]
    live = decimate.GrowingRun(DENSE, max_points, 40, injected)
    for k in sorted({min(c, n) for c in cuts}) + [n]:
        part = growing(m, k)
        scale, skipped, forced, dense = live.update(part)
        assert_same((scale, skipped, forced), whole(part, max_points, 40, injected)[:3])
        assert_same(dense, whole(part, max_points, 40, injected)[3])


def test_the_live_reduction_starts_again_on_a_shorter_record():
    m = metrics(5000, seed=4)
    live = decimate.GrowingRun(DENSE, 300, 40)
    live.update(m)
    short = growing(metrics(5000, seed=5), 2000)
    assert_same(live.update(short)[3], whole(short, 300, 40, ())[3])


@pytest.mark.parametrize("n", [0, 1, 2])
def test_tiny_series(n):
    m = metrics(n)
    for fig in (
        charts.loss_scale_figure([("r", m)]),
        charts.loss_figure([("r", m)]),
        charts.grad_norm_figure([("r", m)]),
    ):
        assert all(len(t.x) <= n for t in fig.data)
