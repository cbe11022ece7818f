"""amp_core.serve.live: one read and one set of figures per live run for every viewer, and the redraw pacer."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from amp_core.record import RunWriter
from amp_core.serve import live
from amp_core.serve.live import LiveRegistry, LiveRun, RedrawPacer, machine_load


def rows(start: int, n: int) -> list[dict]:
    return [{"step": s, "loss": 1.0 / (s + 1), "loss_scale": 2.0 ** (16 - s // 100), "skipped": s % 100 == 99, "grad_norm": 0.5,
             "grad_max": 0.1, "growth_tracker": 0, "time": float(s)} for s in range(start, start + n)]  # fmt: skip


@pytest.fixture
def writer(tmp_path):
    w = RunWriter.create(tmp_path, {"precision": "16-mixed", "max_steps": 10_000, "inject_overflow": [5]}, label="live")
    w.set_status("running")
    yield w
    w.close()


@pytest.fixture
def no_poll_wait(monkeypatch):
    monkeypatch.setattr(live, "POLL_EVERY_S", 0.0)
    monkeypatch.setattr(live, "WAITING_POLL_EVERY_S", 0.0)


def test_viewers_within_the_poll_interval_share_one_read(writer):
    writer.append_metrics(rows(0, 10))
    run = LiveRun(writer.path)
    first = run.snapshot()
    writer.append_metrics(rows(10, 10))
    assert run.snapshot() is first  # asked again at once: the same read
    assert len(first.metrics) == 10 and first.state == "running" and first.config["max_steps"] == 10_000


def test_a_snapshot_never_changes_after_later_reads(writer, no_poll_wait):
    writer.append_metrics(rows(0, 10))
    run = LiveRun(writer.path)
    old = run.snapshot()
    steps_before = old.metrics.step.copy()
    writer.append_metrics(rows(10, 15))
    writer.set_status("completed")
    new = run.snapshot()
    assert new is not old
    assert len(new.metrics) == 25 and new.state == "completed"
    assert len(old.metrics) == 10 and old.state == "running"
    np.testing.assert_array_equal(old.metrics.step, steps_before)


def test_figures_are_built_once_per_step_count(writer, no_poll_wait):
    writer.append_metrics(rows(0, 300))
    run = LiveRun(writer.path)
    snap = run.snapshot()
    figures = run.figures(snap)
    assert run.figures(run.snapshot()) is figures  # nothing new: the same objects
    scale, loss, grad = figures
    assert scale.layout.title.text.startswith("Loss scale")
    assert loss.data[0].x[-1] == 299 and len(loss.data[0].x) == 300
    short = live.charts.short_label(writer.id)  # legends name a run by its precision and suffix
    assert [t.name for t in scale.data] == [f"{short} scale", f"{short} skipped (3)"]
    writer.append_metrics(rows(300, 1))
    assert run.figures(run.snapshot())[1].data[0].x[-1] == 300


def test_live_dense_charts_are_capped_but_reach_the_last_step(writer, no_poll_wait):
    writer.append_metrics(rows(0, 20_000))
    run = LiveRun(writer.path)
    _, loss, grad = run.figures(run.snapshot())
    for fig in (loss, grad):
        x = fig.data[0].x
        assert len(x) <= live.LIVE_MAX_POINTS + 1 and x[0] == 0 and x[-1] == 19_999


def test_many_threads_reading_while_the_run_writes(writer, no_poll_wait):
    run = LiveRun(writer.path)
    errors, seen = [], []
    done = threading.Event()

    def viewer():
        try:
            while not done.is_set():
                snap = run.snapshot()
                lengths = {len(c) for c in snap.metrics.columns.values()}
                assert len(lengths) == 1, lengths  # every column the same length: a whole snapshot
                _, loss, _ = run.figures(snap)
                if len(snap.metrics):
                    assert loss.data[0].x[-1] <= snap.metrics.step[-1]
                seen.append(len(snap.metrics))
        except Exception as e:  # reported below, with the thread's failure
            errors.append(e)

    threads = [threading.Thread(target=viewer) for _ in range(8)]
    for t in threads:
        t.start()
    for start in range(0, 2000, 50):
        writer.append_metrics(rows(start, 50))
        time.sleep(0.002)
    time.sleep(0.05)
    done.set()
    for t in threads:
        t.join(10)
    assert not errors, errors
    assert max(seen) == 2000


def test_pacer_keeps_the_floor_for_a_few_viewers():
    pacer = RedrawPacer(floor_s=1.0, budget=0.5, load=lambda: 1.0)
    for v in range(3):
        pacer.record(f"v{v}", 0.01)
    assert pacer.explain() == (1.0, "")


def test_pacer_stretches_with_viewers_times_cost():
    pacer = RedrawPacer(floor_s=1.0, budget=0.5, load=lambda: 1.0)
    for v in range(20):
        pacer.record(f"v{v}", 0.1)
    every, why = pacer.explain()
    assert every == pytest.approx(20 * 0.1 / 0.5)
    assert why == "20 viewers share the server"


def test_pacer_counts_only_recent_viewers():
    pacer = RedrawPacer(floor_s=1.0, budget=0.5, window_s=0.05, load=lambda: 1.0)
    for v in range(20):
        pacer.record(f"v{v}", 0.1)
    time.sleep(0.1)
    pacer.record("still here", 0.1)
    assert pacer.viewers() == 1
    assert pacer.explain() == (1.0, "")


def test_pacer_stretches_on_a_busy_machine_up_to_its_limits():
    assert RedrawPacer(floor_s=1.0, load=lambda: 3.0).explain() == (3.0, "this machine's CPUs are oversubscribed")
    assert RedrawPacer(floor_s=1.0, max_stretch=5.0, load=lambda: 100.0).interval() == 5.0
    assert RedrawPacer(floor_s=1.0, load=lambda: 1.2).explain() == (1.0, "")  # a little contention is normal
    many = RedrawPacer(floor_s=1.0, ceiling_s=10.0, load=lambda: 1.0)
    for v in range(100):
        many.record(f"v{v}", 1.0)
    assert many.interval() == 10.0


def test_one_slow_redraw_does_not_stretch_everyone():
    pacer = RedrawPacer(floor_s=1.0, budget=0.5, load=lambda: 1.0)
    for _ in range(50):
        pacer.record("a", 0.01)
    pacer.record("b", 2.0)  # a first full read of a long record
    assert pacer.interval() == 1.0


def test_machine_load_reads_pressure_stall_information(tmp_path):
    pressure = tmp_path / "cpu"
    pressure.write_text(
        "some avg10=75.00 avg60=10.00 avg300=1.00 total=123\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
    )
    assert machine_load(str(pressure)) == pytest.approx(4.0)
    pressure.write_text("some avg10=0.00 avg60=0.00 avg300=0.00 total=1\n")
    assert machine_load(str(pressure)) == 1.0


def test_machine_load_falls_back_to_the_load_average(tmp_path):
    (tmp_path / "garbled").write_text("nonsense\n")
    for path in (tmp_path / "missing", tmp_path / "garbled"):
        value = machine_load(str(path))
        assert isinstance(value, float) and value >= 1.0


def test_registry_gives_one_live_run_per_folder_and_forgets_the_oldest(tmp_path):
    registry = LiveRegistry(keep=2)
    a, b, c = (RunWriter.create(tmp_path, {}, label=x).path for x in "abc")
    first = registry.run(a)
    assert registry.run(str(a)) is first  # the same folder, however it is named
    registry.run(b)
    registry.run(c)  # a was least recently used
    assert registry.run(a) is not first
