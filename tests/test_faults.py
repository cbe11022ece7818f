"""Hardening: faults, through the real Launcher (real child processes) and in-process.

- a worker killed with SIGKILL mid-run; a training step that raises; a loss that is NaN at every
  step; a simulated out-of-memory: each is recorded as failed with its message, every metric line
  written before is kept, and the launcher goes on to run the next run to completion;
- the server going away while a run trains (and while another waits in the queue) and a new one
  taking over the same runs folder;
- a damaged runs folder;
- W&B not installed, unable to write, online without credentials, raising mid-run.

Every child process a test starts is killed by its pid (from status.json) when the test ends,
whatever happened. Runs are short (20-60 steps) except the ones that are killed on purpose.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from amp_core.record import (
    FINAL_STATES,
    METRICS_FILE,
    STATUS_FILE,
    RunFollower,
    RunRecordError,
    RunWriter,
    effective_state,
    list_runs,
    load_run,
    metrics_csv,
    metrics_json,
    process_alive,
    queued_runs,
    run_path,
    summarize,
)
from amp_core.serve.launcher import Launcher
from amp_core.training.cli import RunConfig, run
from tests.support.cli import run_cli
from tests.support.processes import dead_pid, kill_recorded_processes, read_status, wait_until
from tests.support.records import write_record

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT = 240  # a cold worker imports torch and Lightning; this machine may be busy
LONG = dict(max_steps=100_000, hidden=64, batch_size=16, wandb="disabled", histogram_every=0)  # killed on purpose
SHORT = dict(max_steps=20, hidden=32, batch_size=16, wandb="disabled")


# ---------------------------------------------------------------- helpers


def complete_lines(path: Path) -> list[bytes]:
    """The complete lines of metrics.jsonl now (a line still being written is left out)."""
    try:
        data = (path / METRICS_FILE).read_bytes()
    except OSError:
        return []
    return data[: data.rfind(b"\n") + 1].splitlines()


def metric_rows(path: Path) -> list[dict]:
    """Every line of metrics.jsonl; all must be whole, valid JSON objects with consecutive steps from 0."""
    data = (path / METRICS_FILE).read_bytes()
    assert data == b"" or data.endswith(b"\n"), "a cut-off last line"
    rows = [json.loads(line) for line in data.splitlines()]
    assert all(isinstance(r, dict) for r in rows)
    assert [r["step"] for r in rows] == list(range(len(rows))), "steps are not consecutive from 0"
    return rows


@pytest.fixture
def launchers(runs_dir, monkeypatch):
    """Makes real Launchers on `runs_dir` (workers are real child processes); all closed and every
    process they recorded killed at the end, pass or fail."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # a shared 2-core machine: one thread per worker
    runs_dir.mkdir(parents=True, exist_ok=True)
    made: list[Launcher] = []

    def make(**kwargs) -> Launcher:
        launcher = Launcher(runs_dir, cuda_devices=0, **kwargs)
        made.append(launcher)
        return launcher

    try:
        yield make
    finally:
        kill_recorded_processes(runs_dir)
        for launcher in made:
            launcher.close(stop_runs=True)
        kill_recorded_processes(runs_dir)


# ---------------------------------------------------------------- a worker killed mid-run


def test_sigkill_mid_run_is_failed_and_keeps_every_line(launchers, runs_dir):
    launcher = launchers()
    run_id = launcher.submit(RunConfig(**LONG))
    path = runs_dir / run_id
    wait_until(lambda: len(complete_lines(path)) >= 20, START_TIMEOUT, "20 metric lines")
    status = read_status(path)
    assert status["state"] == "running"
    pid = status["pid"]
    assert os.getpgid(pid) == pid, "the worker should lead its own process group (own session)"
    assert launcher.active() == {"cpu": run_id}

    before = complete_lines(path)
    os.killpg(pid, signal.SIGKILL)
    wait_until(lambda: read_status(path).get("state") != "running", 30, "the launcher to notice the kill")

    status = read_status(path)
    assert status["state"] == "failed"
    assert "SIGKILL" in status["error"] and "without recording an end" in status["error"], status["error"]
    assert status.get("ended_at")
    rows = metric_rows(path)
    after = complete_lines(path)
    assert len(before) >= 20 and len(before) <= len(after) == len(rows)
    assert after[: len(before)] == before, "a line written before the kill changed"
    assert all(isinstance(r["loss"], float) and r["loss_scale"] is not None for r in rows[: len(before)])
    record = load_run(path)
    assert record.state == "failed" and len(record.metrics) == len(rows) and record.problems == []
    assert launcher.active() == {} and launcher._thread.is_alive()


# ---------------------------------------------------------------- faults inside the training step

FAULTS = {
    # fault: (exception type in the error, words of the message, metric lines kept)
    "raise@10": ("RuntimeError", "injected fault: the training step raised at step 10", 10),
    "oom@5": ("OutOfMemoryError", "injected fault: out of memory at step 5", 5),
    "nan@0": ("FloatingPointError", "the loss has been NaN or inf for 25 steps in a row", None),
}


def check_fault_record(path: Path, fault: str) -> None:
    kind, words, kept = FAULTS[fault]
    status = read_status(path)
    assert status["state"] == "failed", status
    assert status["error"].startswith(f"{kind}: ") and words in status["error"], status["error"]
    assert status.get("ended_at") and "Traceback" not in status["error"]
    assert kind in status.get("traceback", "")
    rows = metric_rows(path)
    if kept is not None:
        assert len(rows) == kept, f"{fault}: {len(rows)} lines"
        assert all(isinstance(r["loss"], float) for r in rows), "the steps before the fault had a finite loss"
    else:  # NaN from step 0: every step recorded, every loss null (JSON has no NaN), the guard stops it at 25
        assert 24 <= len(rows) <= 26, len(rows)
        assert all(r["loss"] is None and r["skipped"] is True for r in rows)
    record = load_run(path)
    assert record.state == "failed" and record.problems == [] and len(record.metrics) == len(rows)


def fault_config(fault: str, **kw) -> RunConfig:
    return RunConfig(**{**SHORT, "max_steps": 60 if fault.startswith("nan") else 20, **kw}, fault=fault)


def test_faults_in_workers_are_recorded_and_the_launcher_goes_on(launchers, runs_dir):
    launcher = launchers()
    ids = {fault: launcher.submit(fault_config(fault)) for fault in FAULTS}
    normal = launcher.submit(RunConfig(**SHORT))  # queued behind the faults: must still run and complete
    everything = [*ids.values(), normal]
    wait_until(
        lambda: all(load_run(runs_dir / i).state in FINAL_STATES for i in everything),
        4 * START_TIMEOUT,
        "every run to end",
    )

    for fault, run_id in ids.items():
        check_fault_record(runs_dir / run_id, fault)
    record = load_run(runs_dir / normal)
    assert record.state == "completed" and record.problems == []
    assert len(metric_rows(runs_dir / normal)) == 20
    # the server side is untouched: its scheduler runs, nothing is stuck, no process is left
    wait_until(lambda: launcher.active() == {}, 30, "the launcher to reap the last worker")
    assert launcher._thread.is_alive() and launcher.queue() == []
    assert all(process_alive(read_status(runs_dir / i).get("pid")) is False for i in everything)


@pytest.mark.parametrize("fault", list(FAULTS))
def test_faults_in_process_raise_and_are_recorded(runs_dir, fault):
    config = fault_config(fault, runs_dir=str(runs_dir))
    kind = FAULTS[fault][0]
    with pytest.raises(Exception) as info:
        run(config)
    assert type(info.value).__name__ == kind
    (record,) = list_runs(runs_dir)
    check_fault_record(record.path, fault)


# ---------------------------------------------------------------- the server goes away


def test_server_restart_while_a_run_trains_and_another_waits(launchers, runs_dir):
    a = launchers()
    x = a.submit(RunConfig(**LONG))
    xpath = runs_dir / x
    wait_until(lambda: len(complete_lines(xpath)) >= 3, START_TIMEOUT, "the first run to train")
    y = a.submit(RunConfig(**SHORT))  # the CPU is taken: this one waits in the on-disk queue
    ypath = runs_dir / y
    assert read_status(ypath)["state"] == "queued"
    pid = read_status(xpath)["pid"]

    a.close(stop_runs=False)  # the server goes away (its spare worker with it); the run lives on in its own session
    assert process_alive(pid) is True
    assert read_status(ypath)["state"] == "queued"

    b = launchers()  # the restarted server, on the same runs folder
    assert {r.id: r.state for r in list_runs(runs_dir)} == {x: "running", y: "queued"}
    follower = RunFollower(xpath)
    follower.poll()
    seen = len(follower.metrics)
    wait_until(lambda: follower.poll() > 0 and len(follower.metrics) > seen + 3, 60, "new lines from the surviving run")
    assert follower.state == "running" and list(follower.metrics.step) == list(range(len(follower.metrics)))

    # One run per device holds across the restart: the queued run waits for the surviving one,
    # even once the new server has a warm worker ready for it.
    wait_until(lambda: b.warm_ready, START_TIMEOUT, "the new server's warm worker")
    time.sleep(1.0)  # ten scheduler ticks
    assert read_status(ypath)["state"] == "queued", "a second run started on a device that is still training"

    lines_before_kill = complete_lines(xpath)
    os.killpg(pid, signal.SIGKILL)
    wait_until(lambda: load_run(xpath).state == "failed", 30, "the dead run to read as failed")
    assert read_status(xpath)["state"] == "running"  # nobody recorded its end: the reader says failed anyway
    assert any("died without recording an end" in p for p in load_run(xpath).problems)
    assert complete_lines(xpath)[: len(lines_before_kill)] == lines_before_kill
    metric_rows(xpath)

    # Now the device is free: the new server starts the queued run and completes it.
    wait_until(lambda: load_run(ypath).state in FINAL_STATES, START_TIMEOUT, "the queued run to end")
    assert load_run(ypath).state == "completed" and len(metric_rows(ypath)) == 20
    b.close()

    # A record that says running, whose process is gone: the next server marks it interrupted.
    stale = RunWriter.create(runs_dir, {"precision": "16-mixed"}, label="stale")
    stale.set_status("running", pid=dead_pid(), started_at="2024-01-01T00:00:00.000+00:00")
    assert load_run(stale.path).state == "failed"
    launchers(warm=False)
    for path in (xpath, stale.path):
        status = read_status(path)
        assert status["state"] == "interrupted" and "server restarted" in status["error"], status
    assert read_status(ypath)["state"] == "completed"  # ended runs are left alone


# ---------------------------------------------------------------- a damaged runs folder


def _record(runs: Path, label: str, status: str | None = "completed") -> Path:
    rows = [{"step": i, "loss": 2.0, "loss_scale": 1024.0, "skipped": False} for i in range(3)]
    return write_record(runs, {"max_steps": 10}, status, rows, label=label).path


def test_a_damaged_runs_dir_is_listed_and_flagged_never_raised(tmp_path):
    """Beyond tests/test_runs.py: damage that used to raise (deep JSON nesting, a pid no process can
    have, undecodable bytes, a status that is a folder, symlink loops), and the launcher starting on it."""
    runs = tmp_path / "runs"
    good = _record(runs, "good")
    truncated = _record(runs, "truncated")
    with open(truncated / METRICS_FILE, "ab") as f:
        f.write(b'{"step": 3, "lo')
    invalid = _record(runs, "invalid")
    with open(invalid / METRICS_FILE, "ab") as f:
        f.write(b"not json\n" + b"[" * 5000 + b"\n" + b"\xff\xfe\n" + b'{"step": 3, "loss": 1.0}\n')
    no_status = _record(runs, "nostatus", status=None)
    nested = _record(runs, "nested")
    (nested / STATUS_FILE).write_text("[" * 5000)
    undecodable = _record(runs, "undecodable")
    (undecodable / "config.json").write_bytes(b"\xff\xfe\x00{")
    huge_pid = _record(runs, "hugepid", status="running")
    (huge_pid / STATUS_FILE).write_text(json.dumps({"state": "running", "pid": 2**70}))
    status_dir = _record(runs, "statusdir")
    (status_dir / STATUS_FILE).unlink()
    (status_dir / STATUS_FILE).mkdir()
    (runs / "not-a-run").mkdir()
    (runs / "stray.txt").write_text("a stray file")
    outside = _record(tmp_path / "elsewhere", "outside")
    (runs / "linked-run").symlink_to(outside, target_is_directory=True)
    (runs / "loop").symlink_to(runs / "loop")
    (runs / "dangling").symlink_to(tmp_path / "nothing-here")

    listed = {r.id: r for r in list_runs(runs)}
    expected = {p.name for p in (good, truncated, invalid, no_status, nested, undecodable, huge_pid, status_dir)}
    assert set(listed) == expected
    assert listed[good.name].problems == [] and len(listed[good.name].metrics) == 3

    def problems(path: Path) -> str:
        return "; ".join(listed[path.name].problems)

    assert "cut off" in problems(truncated) and len(listed[truncated.name].metrics) == 3
    assert "3 damaged line(s)" in problems(invalid) and list(listed[invalid.name].metrics.step) == [0, 1, 2, 3]
    assert "status.json is missing" in problems(no_status)
    assert "status.json is unreadable" in problems(nested) and listed[nested.name].state == "unknown"
    assert "config.json is unreadable" in problems(undecodable)
    assert "status.json is unreadable" in problems(status_dir)
    assert listed[huge_pid.name].state in ("running", "failed")  # no such process can exist; never raises
    for r in listed.values():  # what the Runs page does with each: summary, exports
        summarize(r), metrics_csv(r), metrics_json(r)
        follower = RunFollower(r.path)
        follower.poll()

    # run ids that lead out of the folder, or nowhere, are refused
    for bad in ("linked-run", "loop", "../elsewhere", str(outside)):
        with pytest.raises(RunRecordError):
            run_path(runs, bad)
    assert queued_runs(runs) == []

    # a server starting on this folder: the record claiming to run with an impossible pid is interrupted
    launcher = Launcher(runs, cuda_devices=0, warm=False)
    try:
        assert read_status(huge_pid)["state"] == "interrupted"
        assert {r.id for r in list_runs(runs)} == expected
    finally:
        launcher.close()
    assert read_status(good)["state"] == "completed"


# ---------------------------------------------------------------- W&B misbehaving


def check_trained_with_a_wandb_warning(path: Path, steps: int, *words: str) -> dict:
    status = read_status(path)
    assert status["state"] == "completed", status
    assert len(metric_rows(path)) == steps
    warnings = status.get("warnings", [])
    assert any(all(w in warning for w in words) for warning in warnings), warnings
    return status


def test_wandb_not_installed_cli(tmp_path):
    fake = tmp_path / "fake-site"
    (fake / "wandb").mkdir(parents=True)
    (fake / "wandb" / "__init__.py").write_text(
        'raise ImportError("No module named wandb (simulated: not installed)")\n'
    )
    runs = tmp_path / "runs"
    env = {
        **os.environ,
        "PYTHONPATH": f"{fake}{os.pathsep}{REPO}",
        "AMP_RUNS_DIR": str(runs),
        "OMP_NUM_THREADS": "1",
        "HOME": str(tmp_path),
    }
    out = run_cli("amp_core.train", "--wandb offline --max-steps 20 --hidden 32 --batch-size 16".split(), env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("completed: 20 steps")
    (record,) = list_runs(runs)
    check_trained_with_a_wandb_warning(record.path, 20, "W&B is unavailable", "ImportError")
    assert not (record.path / "wandb").exists()


def test_wandb_cannot_write_its_directory(runs_dir, tmp_path, monkeypatch):
    """The run's wandb/ folder is a regular file: W&B cannot start; the run trains without it."""
    monkeypatch.setenv("HOME", str(tmp_path))
    writer = RunWriter.create(runs_dir, {}, label="wandb-blocked")
    (writer.path / "wandb").write_text("a regular file where W&B wants its folder")
    run(RunConfig(**{**SHORT, "wandb": "offline"}, runs_dir=str(runs_dir)), writer)
    check_trained_with_a_wandb_warning(writer.path, 20, "W&B is unavailable", "training without it")
    assert (writer.path / "wandb").is_file()


def test_wandb_online_without_credentials_through_the_launcher(launchers, runs_dir, tmp_path, monkeypatch):
    """The worker inherits the server's environment: no key, no netrc. It must not go online (the
    network stays untouched: WANDB_MODE is offline and the base URL a closed local port) and says so."""
    home = tmp_path / "empty-home"
    home.mkdir()
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("NETRC", str(home / ".netrc"))
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    launcher = launchers()
    run_id = launcher.submit(RunConfig(**{**SHORT, "wandb": "online"}))
    path = runs_dir / run_id
    wait_until(lambda: load_run(path).state in FINAL_STATES, START_TIMEOUT, "the run to end")
    check_trained_with_a_wandb_warning(path, 20, "credentials", "offline instead")
    assert len(list((path / "wandb").glob("offline-run-*"))) == 1
    assert not list((path / "wandb").glob("run-*")), "an online W&B run was started"


def test_wandb_raising_mid_run(runs_dir, tmp_path, monkeypatch):
    import wandb
    from wandb.sdk import wandb_run

    monkeypatch.setenv("HOME", str(tmp_path))
    calls = {"n": 0}
    real_log = wandb_run.Run.log

    def log(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 5:
            raise RuntimeError("simulated W&B failure mid-run")
        return real_log(self, *args, **kwargs)

    monkeypatch.setattr(wandb_run.Run, "log", log)
    try:
        writer = run(RunConfig(**{**SHORT, "wandb": "offline"}, runs_dir=str(runs_dir)))
    finally:
        monkeypatch.undo()
        if wandb.run is not None:  # the broken logger leaves its W&B run open: do not let it leak into other tests
            wandb.finish()
    assert calls["n"] > 5, "W&B was not called often enough to fail mid-run"
    check_trained_with_a_wandb_warning(
        writer.path, 20, "W&B failed", "simulated W&B failure mid-run", "training goes on"
    )
    assert effective_state(read_status(writer.path)) == "completed"
