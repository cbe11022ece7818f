"""Waiting for a condition or for a run to end, reading a run's status, and killing the training processes a test started."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from amp_core.record import FINAL_STATES, STATUS_FILE, Run, load_run


def wait_until(predicate, timeout: float = 120.0, what: str = "condition", interval: float = 0.05):
    """Poll `predicate` until it is truthy and return its value; AssertionError after `timeout` s.

    A guard against hanging, not a timing assertion: timeouts are generous (the machine is shared).
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout} s waiting for {what}")
        time.sleep(interval)


def wait_final(run_dir: str | os.PathLike, timeout: float = 240.0) -> Run:
    """The run's record once its state is final (completed, failed, stopped, interrupted)."""
    wait_until(lambda: load_run(run_dir).state in FINAL_STATES, timeout, f"run {Path(run_dir).name} to end", 0.3)
    return load_run(run_dir)


def read_status(path: str | os.PathLike) -> dict:
    """A run folder's status.json, or {} while it is missing or half written."""
    try:
        data = json.loads((Path(path) / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def dead_pid() -> int:
    """The pid of a process that has exited and been reaped: free, and not a zombie of ours."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def is_training_process(pid: int) -> bool:
    """Only processes tests start: a worker or a CLI run of amp_core, never this process."""
    if pid == os.getpid():
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"amp_core.serve.worker" in cmdline or b"amp_core.train" in cmdline


def kill_pid(pid) -> None:
    """SIGKILL a training process (and its process group: workers run in their own session)."""
    if not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0 or not is_training_process(pid):
        return
    try:
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def kill_recorded_processes(runs_dir: str | os.PathLike) -> None:
    """Kill every training process a run folder under `runs_dir` names in its status (by pid)."""
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return
    for p in runs_dir.iterdir():
        if p.is_dir() and not p.is_symlink():
            kill_pid(read_status(p).get("pid"))


def memory_capped_python(folder: Path, limit_bytes: int) -> Path:
    """A launcher script for this Python with its address space capped (ulimit -v), for the children of a test.

    Tests that let random input start runs point `sys.executable` at it: the app's workers then fail
    with a clear out-of-memory record, as on a small machine, instead of taking the shared machine's memory.
    """
    script = Path(folder) / "python-memory-capped"
    script.write_text(f'#!/bin/sh\nulimit -v {limit_bytes // 1024}\nexec {shlex.quote(sys.executable)} "$@"\n')
    script.chmod(0o755)
    return script
