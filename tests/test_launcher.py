"""The launcher's handle on a worker process: its process group is signalled only while it is ours.

A worker runs in a session of its own, so a stop that runs late kills its whole process group (id:
the worker's pid). A pid is free for reuse once its process has been reaped, so the check "still
running?" and the kill must not let any thread reap the worker in between. These tests use cheap
real children (a few lines of Python) in the worker's place: what is tested is the handle, not
training.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path

from amp_core.serve.launcher import _Worker
from tests.support.processes import wait_until

WAITS_FOR_A_JOB = "import sys; print('ready', flush=True); sys.stdin.readline()"


def process_state(pid: int) -> str:
    """The state letter in /proc/<pid>/stat ('Z' for a zombie: exited, not yet reaped), '' once reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def test_no_thread_reaps_a_worker_during_a_check_and_kill(tmp_path):
    worker = _Worker(tmp_path, command=[sys.executable, "-c", WAITS_FOR_A_JOB])
    wait_until(worker.ready.is_set, 60, "the child to say ready")
    pid = worker.proc.pid
    with worker._reap_lock:  # a check-and-kill in progress (Worker.signal_group)...
        os.kill(pid, signal.SIGKILL)  # ... and the child ends right after the check
        wait_until(lambda: process_state(pid) == "Z", 30, "the child to exit")
        asking = threading.Thread(target=worker.exit_code)  # another thread asks meanwhile (a session's warm_ready)
        asking.start()
        asking.join(0.5)
        assert asking.is_alive(), "another thread reaped the worker between the check and the kill"
        # Unreaped, its pid (the group's id) cannot belong to another process: a kill now reaches none.
        assert process_state(pid) == "Z"
    asking.join(30)
    assert worker.exit_code() == -signal.SIGKILL
    assert worker.signal_group(signal.SIGKILL) is False  # ended and reaped: nothing is signalled
    worker.kill()  # closes its log; the process is long gone
    assert process_state(pid) == ""


def test_signal_group_reaches_what_the_worker_started(tmp_path):
    grandchild_file = tmp_path / "grandchild.pid"
    starts_a_grandchild = (
        "import subprocess, sys; "
        "p = subprocess.Popen(['sleep', '300']); "
        f"open({str(grandchild_file)!r}, 'w').write(str(p.pid)); "
        "print('ready', flush=True); sys.stdin.readline()"
    )
    worker = _Worker(tmp_path, command=[sys.executable, "-c", starts_a_grandchild])
    wait_until(worker.ready.is_set, 60, "the child to say ready")
    grandchild = int(grandchild_file.read_text())
    try:
        assert process_state(grandchild) not in ("", "Z")
        assert worker.signal_group(signal.SIGKILL) is True
        assert worker.wait(30) == -signal.SIGKILL
        # The grandchild (a DataLoader worker, say) was in the worker's group: killed with it. Its
        # parent is gone, so init reaps it.
        wait_until(lambda: process_state(grandchild) in ("", "Z"), 30, "the grandchild to be killed too")
    finally:
        if process_state(grandchild) not in ("", "Z"):
            os.kill(grandchild, signal.SIGKILL)
        worker.kill()
