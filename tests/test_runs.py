"""The run record (amp_core.record): pure file handling, no torch, no Lightning, no training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amp_core.record import (
    CONFIG_FILE,
    METRIC_COLUMNS,
    METRICS_FILE,
    STATUS_FILE,
    STOP_FILE,
    RunFollower,
    RunRecordError,
    RunWriter,
    change_points,
    effective_state,
    finite_or_none,
    list_runs,
    load_run,
    parse_metrics,
    process_alive,
    request_stop,
    run_path,
    stop_requested,
    summarize,
)
from tests.support.processes import dead_pid
from tests.support.records import write_record


def row(step: int, scale: float | None = 1024.0, skipped: bool = False, loss: float | None = 2.0) -> dict:
    return {
        "step": step,
        "loss": loss,
        "loss_scale": scale,
        "skipped": skipped,
        "grad_norm": 0.5,
        "growth_tracker": 0 if skipped else 1,
        "time": 1.0,
    }


# ---------------------------------------------------------------- RunWriter


def test_create_makes_a_unique_folder_with_the_record(tmp_path):
    runs = tmp_path / "runs" / "nested"  # created with parents
    a = RunWriter.create(runs, {"precision": "16-mixed", "max_steps": 5}, label="16 mixed/../x")
    b = RunWriter.create(runs, {"precision": "16-mixed"}, label="16 mixed/../x")
    assert a.path != b.path and a.path.parent == b.path.parent == runs
    assert a.path.name == a.id
    assert "/" not in a.id and " " not in a.id  # the label is slugged into one path component
    run_path(runs, a.id)  # a valid run id
    config = json.loads((a.path / CONFIG_FILE).read_text())
    assert config == {"id": a.id, "precision": "16-mixed", "max_steps": 5}
    assert (a.path / METRICS_FILE).read_bytes() == b""
    assert not (a.path / STATUS_FILE).exists()  # no status until someone sets one
    status = a.set_status("running", pid=123)
    assert status["state"] == "running" and status["pid"] == 123 and "updated_at" in status
    on_disk = json.loads((a.path / STATUS_FILE).read_text())
    assert on_disk == status
    assert not [p for p in a.path.iterdir() if p.name.endswith(".tmp")]  # atomic replace left no temp file


def test_status_updates_merge_and_warnings_are_deduplicated(tmp_path):
    w = RunWriter.create(tmp_path, {})
    w.set_status("running", pid=1, started_at="s")
    w.add_warning("careful")
    w.add_warning("careful")
    w.set_status("completed", ended_at="e")
    status = json.loads((w.path / STATUS_FILE).read_text())
    assert (
        status["state"] == "completed"
        and status["pid"] == 1
        and status["started_at"] == "s"
        and status["ended_at"] == "e"
    )
    assert status["warnings"] == ["careful"]
    reopened = RunWriter.open(w.path)
    reopened.set_status("stopped")
    status = json.loads((w.path / STATUS_FILE).read_text())
    assert status["pid"] == 1 and status["state"] == "stopped"


def test_update_config_keeps_existing_fields(tmp_path):
    w = RunWriter.create(tmp_path, {"precision": "16-mixed"})
    w.update_config(precision_resolved="16-mixed", grad_scaler=True)
    assert json.loads((w.path / CONFIG_FILE).read_text()) == {
        "id": w.id,
        "precision": "16-mixed",
        "precision_resolved": "16-mixed",
        "grad_scaler": True,
    }


def test_append_metrics_writes_whole_lines_and_nonfinite_is_not_json(tmp_path):
    w = RunWriter.create(tmp_path, {})
    w.append_metrics([])
    assert (w.path / METRICS_FILE).read_bytes() == b""
    w.append_metrics([row(0), row(1)])
    # flushed: visible to a reader before close()
    data = (w.path / METRICS_FILE).read_bytes()
    assert data.endswith(b"\n") and data.count(b"\n") == 2
    assert [json.loads(line)["step"] for line in data.splitlines()] == [0, 1]
    with pytest.raises(ValueError):  # allow_nan=False: NaN/inf never reach the file as invalid JSON
        w.append_metrics([{"step": 2, "loss": float("nan")}])
    w.close()
    assert finite_or_none(float("nan")) is None and finite_or_none(float("inf")) is None
    assert finite_or_none(None) is None and finite_or_none(3) == 3.0


class StepClock:
    """A clock a test moves by hand: the writer's cadence is decided by its readings alone."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def lines_on_disk(w: RunWriter) -> list[int]:
    return [json.loads(line)["step"] for line in (w.path / METRICS_FILE).read_text().splitlines()]


def test_queued_rows_are_written_once_per_window(tmp_path):
    clock = StepClock()
    w = RunWriter(RunWriter.create(tmp_path, {}).path, flush_seconds=5, clock=clock)
    assert w.queue_metrics(row(0)) is True  # the first row at once: a live view draws it without waiting
    for step in range(1, 5):
        clock.now = step
        assert w.queue_metrics(row(step)) is False
    assert lines_on_disk(w) == [0]  # rows 1-4 arrived within the window of the write at 0
    clock.now = 5
    assert w.queue_metrics(row(5)) is True
    assert lines_on_disk(w) == [0, 1, 2, 3, 4, 5]
    clock.now = 100  # slower than the window: each row is written as it comes
    assert w.queue_metrics(row(6)) is True and lines_on_disk(w)[-1] == 6
    w.close()


def test_queued_rows_are_written_before_a_status_an_append_and_at_close(tmp_path):
    w = RunWriter(RunWriter.create(tmp_path, {}).path, flush_seconds=5, clock=StepClock())
    w.queue_metrics(row(0))
    w.queue_metrics(row(1))
    w.set_status("completed")  # a reader that sees the final state sees every row
    assert lines_on_disk(w) == [0, 1]
    w.queue_metrics(row(2))
    w.append_metrics([row(3)])  # in order
    assert lines_on_disk(w) == [0, 1, 2, 3]
    w.queue_metrics(row(4))
    w.close()
    assert lines_on_disk(w) == [0, 1, 2, 3, 4]


def test_a_bad_queued_row_fails_at_its_caller_and_spoils_nothing(tmp_path):
    w = RunWriter(RunWriter.create(tmp_path, {}).path, flush_seconds=5, clock=StepClock())
    w.queue_metrics(row(0))
    w.queue_metrics(row(1))
    with pytest.raises(ValueError):  # encoded when queued: the error points at the row, not at a later write
        w.queue_metrics({"step": 2, "loss": float("nan")})
    w.close()
    assert lines_on_disk(w) == [0, 1]


def test_create_refuses_an_unusable_runs_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(RunRecordError, match="cannot create runs directory"):
        RunWriter.create(blocker / "runs", {})
    assert blocker.read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into a read-only directory")
def test_create_refuses_a_read_only_runs_dir(tmp_path):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    try:
        with pytest.raises(RunRecordError, match="not writable"):
            RunWriter.create(d, {})
    finally:
        d.chmod(0o700)


def test_stop_request_round_trip(tmp_path):
    w = RunWriter.create(tmp_path, {})
    assert not stop_requested(w.path)
    request_stop(w.path)
    assert stop_requested(w.path) and (w.path / STOP_FILE).exists()


# ---------------------------------------------------------------- load_run / list_runs


def test_load_run_reads_a_complete_record(tmp_path):
    rows = [row(0, 65536.0, True, 2.5), row(1, 32768.0, False, 2.4), {**row(2, None, False, None), "grad_norm": None}]
    w = write_record(
        tmp_path, rows=rows, config={"precision_resolved": "16-mixed", "max_steps": 3, "accelerator_resolved": "cpu"}
    )
    run = load_run(w.path)
    assert run.problems == [] and run.partial_tail is False
    assert run.id == w.id and run.state == "completed" and run.precision == "16-mixed" and run.max_steps == 3
    assert len(run.metrics) == 3
    assert list(run.metrics.step) == [0, 1, 2]
    assert run.metrics.loss_scale[:2].tolist() == [65536.0, 32768.0] and np.isnan(run.metrics.loss_scale[2])
    assert np.isnan(run.metrics.loss[2]) and np.isnan(run.metrics.grad_norm[2])
    assert run.skipped_steps == 1
    assert run.final_loss_scale == 32768.0  # the last non-null scale
    back = run.metrics.rows()
    assert back[0]["skipped"] is True and back[1]["skipped"] is False
    assert back[2]["loss_scale"] is None and back[0]["step"] == 0 and isinstance(back[0]["step"], int)
    assert set(back[0]) == set(METRIC_COLUMNS)
    with pytest.raises(AttributeError):
        run.metrics.not_a_column  # noqa: B018


def test_summarize_fields(tmp_path):
    w = write_record(
        tmp_path,
        rows=[row(0, 1024.0, True, 2.5), row(1, 512.0, False, 2.25)],
        config={"precision_resolved": "bf16-mixed", "accelerator_resolved": "cpu", "max_steps": 10},
    )
    s = summarize(load_run(w.path))
    assert s == {
        "id": w.id,
        "state": "completed",
        "precision": "bf16-mixed",
        "accelerator": "cpu",
        "steps": 2,
        "max_steps": 10,
        "skipped": 1,
        "final_loss_scale": 512.0,
        "final_loss": 2.25,
        "created_at": "2024-01-01T00:00:00.000+00:00",
        "problems": "",
        "recording": False,
        "provenance": "",
    }
    empty = summarize(load_run(write_record(tmp_path, rows=[], config={"max_steps": "many"}).path))
    assert empty["steps"] == 0 and empty["final_loss"] is None and empty["final_loss_scale"] is None
    assert empty["max_steps"] is None and empty["skipped"] == 0 and empty["precision"] == "16-mixed"
    nan_loss = summarize(load_run(write_record(tmp_path, rows=[row(0, None, False, None)]).path))
    assert nan_loss["final_loss"] is None and nan_loss["final_loss_scale"] is None


def test_list_runs_newest_first_ignoring_what_is_not_a_run(tmp_path):
    old = write_record(tmp_path, created_at="2024-01-01T00:00:00.000+00:00", label="old")
    new = write_record(tmp_path, created_at="2024-06-01T00:00:00.000+00:00", label="new")
    mid = write_record(tmp_path, created_at="2024-03-01T00:00:00.000+00:00", label="mid")
    (tmp_path / "notes.txt").write_text("not a run")
    (tmp_path / "empty-folder").mkdir()  # no record files
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / STATUS_FILE).write_text("{}")  # not a run id
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.mkdir()
    (outside / STATUS_FILE).write_text('{"state": "completed"}')
    (tmp_path / "link-run").symlink_to(outside, target_is_directory=True)
    assert [r.id for r in list_runs(tmp_path)] == [new.id, mid.id, old.id]
    assert list_runs(tmp_path / "does-not-exist") == []


def test_list_runs_defaults_to_the_env_runs_dir(runs_dir):
    w = write_record(runs_dir)
    assert [r.id for r in list_runs()] == [w.id]


def test_damaged_records_are_reported_not_raised(tmp_path):
    good = [json.dumps(row(0)), json.dumps(row(1))]

    truncated = write_record(tmp_path, label="truncated")
    (truncated.path / METRICS_FILE).write_text("\n".join(good) + '\n{"step": 2, "lo')
    invalid = write_record(tmp_path, label="invalid")
    (invalid.path / METRICS_FILE).write_text(
        good[0] + "\nnot json at all\n" + good[1] + '\n["a list"]\n{"no_step": 1}\n'
    )
    no_status = write_record(tmp_path, status=None, label="nostatus")
    (no_status.path / METRICS_FILE).write_text(good[0] + "\n")
    non_object = write_record(tmp_path, label="nonobject")
    (non_object.path / STATUS_FILE).write_text("[1, 2]")
    bad_config = write_record(tmp_path, label="badconfig")
    (bad_config.path / CONFIG_FILE).write_text("{not json")
    no_metrics = write_record(tmp_path, label="nometrics")
    (no_metrics.path / METRICS_FILE).unlink()

    runs = {r.id: r for r in list_runs(tmp_path)}
    assert len(runs) == 6

    r = runs[truncated.id]
    assert len(r.metrics) == 2 and r.partial_tail
    assert any("cut off" in p for p in r.problems)

    r = runs[invalid.id]
    assert list(r.metrics.step) == [0, 1]
    assert any("3 damaged line(s)" in p for p in r.problems)

    r = runs[no_status.id]
    assert any(f"{STATUS_FILE} is missing" in p for p in r.problems)
    assert r.state == "unknown" and len(r.metrics) == 1

    r = runs[non_object.id]
    assert any(f"{STATUS_FILE} is unreadable" in p for p in r.problems) and r.state == "unknown"

    r = runs[bad_config.id]
    assert any(f"{CONFIG_FILE} is unreadable" in p for p in r.problems) and r.config == {}

    r = runs[no_metrics.id]
    assert any(f"{METRICS_FILE} is missing" in p for p in r.problems) and len(r.metrics) == 0

    assert all("problems" in summarize(r) and summarize(r)["problems"] for r in runs.values())


def test_a_running_record_with_a_partial_line_is_not_damaged(tmp_path):
    w = write_record(tmp_path, status="running")
    RunWriter.open(w.path).set_status("running", pid=os.getpid())
    (w.path / METRICS_FILE).write_text(json.dumps(row(0)) + '\n{"step": 1, "lo')
    r = load_run(w.path)
    assert r.state == "running" and r.partial_tail and r.problems == [] and len(r.metrics) == 1


def test_parse_metrics_consumes_only_complete_lines():
    data = (json.dumps(row(0)) + "\n\n" + json.dumps(row(1)) + '\n{"step": 2').encode()
    rows, consumed, damaged = parse_metrics(data)
    assert [r["step"] for r in rows] == [0, 1] and damaged == 0
    assert data[:consumed].endswith(b"\n") and data[consumed:] == b'{"step": 2'
    assert parse_metrics(b"") == ([], 0, 0)
    assert parse_metrics(b'{"step": "x"}\n') == ([], 14, 1)


# ---------------------------------------------------------------- effective state


def test_a_running_record_whose_process_died_is_failed(tmp_path):
    pid = dead_pid()
    assert process_alive(pid) is False
    assert effective_state({"state": "running", "pid": pid}) == "failed"
    assert effective_state({"state": "running", "pid": os.getpid()}) == "running"
    assert (
        effective_state({"state": "running", "pid": pid, "host": "some-other-host.invalid"}) == "running"
    )  # cannot tell
    assert effective_state({"state": "running"}) == "running"
    assert effective_state({"state": "completed", "pid": pid}) == "completed"  # only 'running' is second-guessed
    assert effective_state({}) == "unknown" and effective_state({"state": 3}) == "unknown"

    w = write_record(tmp_path, status="running")
    RunWriter.open(w.path).set_status("running", pid=pid)
    run = load_run(w.path)
    assert run.state == "failed"
    assert any("gone" in p for p in run.problems)
    assert summarize(run)["state"] == "failed"


def test_process_alive_cannot_tell_for_junk_pids():
    assert process_alive(os.getpid()) is True
    assert (
        process_alive("123") is None
        and process_alive(0) is None
        and process_alive(-5) is None
        and process_alive(None) is None
    )


def test_a_zombie_is_not_alive():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    deadline = time.monotonic() + 30
    while process_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        assert process_alive(proc.pid) is False  # exited, not reaped yet: a zombie
    finally:
        proc.wait()


# ---------------------------------------------------------------- RunFollower


def test_follower_reads_only_new_complete_lines(tmp_path):
    w = RunWriter.create(tmp_path, {})
    w.set_status("running", pid=os.getpid())
    f = RunFollower(w.path)
    assert f.poll() == 0 and len(f.metrics) == 0 and f.state == "running"

    w.append_metrics([row(0), row(1)])
    assert f.poll() == 2
    assert f.poll() == 0  # nothing new: nothing re-read
    assert list(f.metrics.step) == [0, 1]

    metrics = w.path / METRICS_FILE
    line = json.dumps(row(2)) + "\n"
    with open(metrics, "a") as out:  # a writer caught in the middle of a line
        out.write(line[:10])
    assert f.poll() == 0 and len(f.metrics) == 2
    with open(metrics, "a") as out:
        out.write(line[10:])
    assert f.poll() == 1 and list(f.metrics.step) == [0, 1, 2]

    with open(metrics, "a") as out:
        out.write("garbage\n")
    w.append_metrics([row(3)])
    assert f.poll() == 1 and f.damaged_lines == 1
    assert list(f.metrics.step) == [0, 1, 2, 3]

    w.set_status("completed")
    f.poll()
    assert f.state == "completed" and f.status["state"] == "completed"
    w.close()


def test_follower_survives_a_missing_or_damaged_folder(tmp_path):
    f = RunFollower(tmp_path / "nothing-here")
    assert f.poll() == 0 and f.state == "unknown"
    w = RunWriter.create(tmp_path, {})
    (w.path / STATUS_FILE).write_text("{half")
    f = RunFollower(w.path)
    assert f.poll() == 0 and f.status == {}


# ---------------------------------------------------------------- change points


def test_change_points_constant_series():
    steps = np.arange(100)
    s, v = change_points(steps, np.full(100, 65536.0))
    assert s.tolist() == [0, 99] and v.tolist() == [65536.0, 65536.0]


def test_change_points_piecewise_series():
    steps = np.arange(10)
    values = np.array([8, 8, 4, 4, 4, 8, 8, 8, 8, 2], dtype=float)
    s, v = change_points(steps, values)
    assert s.tolist() == [0, 2, 5, 9] and v.tolist() == [8, 4, 8, 2]
    s, v = change_points(steps[:9], values[:9])  # last point kept even without a change
    assert s.tolist() == [0, 2, 5, 8] and v.tolist() == [8, 4, 8, 8]


def test_change_points_nan_is_a_value_of_its_own():
    values = np.array([np.nan, np.nan, 4, 4, np.nan, np.nan, np.nan, 2, 2])
    s, v = change_points(np.arange(9), values)
    assert s.tolist() == [0, 2, 4, 7, 8]
    assert np.isnan(v[0]) and v[1] == 4 and np.isnan(v[2]) and v[3] == 2 and v[4] == 2


def test_change_points_empty_and_single():
    s, v = change_points(np.array([]), np.array([]))
    assert len(s) == 0 and len(v) == 0
    s, v = change_points([7], [1.5])
    assert s.tolist() == [7] and v.tolist() == [1.5]


def step_function_value(cp_steps: np.ndarray, cp_values: np.ndarray, step: float) -> float:
    """What a step line (line_shape='hv') through the change points shows at `step`."""
    i = np.searchsorted(cp_steps, step, side="right") - 1
    return float(cp_values[i])


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from([np.nan, 1.0, 2.0, 65536.0, 0.5, 0.0]), min_size=0, max_size=60),
    st.lists(st.integers(min_value=1, max_value=5), min_size=60, max_size=60),
)
def test_change_points_drawn_as_a_step_function_reproduce_every_point(values, gaps):
    values = np.array(values, dtype=float)
    steps = np.cumsum(gaps[: len(values)])  # strictly increasing, not necessarily consecutive
    cp_steps, cp_values = change_points(steps, values)
    assert len(cp_steps) == len(cp_values) <= len(values)
    if len(values) == 0:
        return
    assert cp_steps[0] == steps[0] and cp_steps[-1] == steps[-1]
    for step, value in zip(steps, values):
        shown = step_function_value(cp_steps, cp_values, step)
        assert (np.isnan(shown) and np.isnan(value)) or shown == value
    # minimal: no two consecutive change points (but the last) carry the same value
    inner = cp_values[:-1]
    same = (inner[1:] == inner[:-1]) | (np.isnan(inner[1:]) & np.isnan(inner[:-1]))
    assert not same.any()


# ---------------------------------------------------------------- run_path


@pytest.mark.parametrize(
    "bad", ["../x", "..", ".", "", "/etc", "/tmp/x", "a/b", "a/../b", "-leading-dash", "x" * 200, "spa ce", None, 5]
)
def test_run_path_refuses_ids_that_are_not_run_ids(tmp_path, bad):
    with pytest.raises(RunRecordError):
        run_path(tmp_path, bad)


def test_run_path_accepts_a_run_id_and_refuses_a_symlink_out(tmp_path):
    runs = tmp_path / "runs"
    w = RunWriter.create(runs, {})
    assert run_path(runs, w.id) == w.path.resolve()
    assert run_path(runs, "not-yet-there") == (runs / "not-yet-there").resolve()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (runs / "escape").symlink_to(outside, target_is_directory=True)
    with pytest.raises(RunRecordError, match="outside"):
        run_path(runs, "escape")
    (runs / "alias").symlink_to(w.path, target_is_directory=True)  # a link that stays inside is harmless
    assert run_path(runs, "alias") == w.path.resolve()
    (runs / "deeper").symlink_to(w.path / "sub", target_is_directory=True)  # inside, but not a direct child
    with pytest.raises(RunRecordError, match="outside"):
        run_path(runs, "deeper")
