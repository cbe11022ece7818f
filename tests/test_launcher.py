"""The launcher: its handle on a worker process (whose process group is signalled only while it is
ours), and a Start from the Train page that loads no torch or Lightning into the server.

A worker runs in a session of its own, so a stop that runs late kills its whole process group (id:
the worker's pid). A pid is free for reuse once its process has been reaped, so the check "still
running?" and the kill must not let any thread reap the worker in between. These tests use cheap
real children (a few lines of Python) in the worker's place: what is tested is the handle, not
training.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from amp_core.serve.launcher import _Worker
from tests.support.processes import kill_recorded_processes, wait_until

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


# Runs in a fresh interpreter: the Train page, then Start (precision "16", an alias the server must
# normalise), then what the process has loaded.
START_FROM_THE_PAGE = """
import json, os, sys
from streamlit.testing.v1 import AppTest
from amp_core.record import list_runs
from amp_core.serve.launcher import close_launchers
at = AppTest.from_file(os.path.join(os.getcwd(), "pages/2_Train.py"), default_timeout=600).run()
next(n for n in at.number_input if n.label == "Steps").set_value(5)
next(r for r in at.radio if r.label == "W&B").set_value("disabled")
next(s for s in at.selectbox if s.label == "Precision").select("16")
next(b for b in at.button if b.label == "Start run").click()
at.run()
report = {
    "problems": [e.value for e in at.exception] + [e.value for e in at.error],
    "heavy": sorted(m for m in ("torch", "pytorch_lightning", "lightning_fabric", "lightning") if m in sys.modules),
    "precisions": [r.config.get("precision") for r in list_runs(os.environ["AMP_RUNS_DIR"])],
}
close_launchers(stop_runs=True)
print("REPORT " + json.dumps(report))
"""


def test_start_on_the_train_page_imports_no_torch_into_the_server(tmp_path):
    root = Path(__file__).resolve().parents[1]
    runs_dir = tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(root), "WANDB_MODE": "offline", "AMP_RUNS_DIR": str(runs_dir)}
    try:
        done = subprocess.run(
            [sys.executable, "-c", START_FROM_THE_PAGE], cwd=root, env=env, capture_output=True, text=True, timeout=900
        )
    finally:
        kill_recorded_processes(runs_dir)
    line = next((x for x in done.stdout.splitlines() if x.startswith("REPORT ")), None)
    assert line is not None, done.stdout[-2000:] + done.stderr[-3000:]
    report = json.loads(line.removeprefix("REPORT "))
    assert report["problems"] == []
    assert report["precisions"] == ["16-mixed"]  # normalised in the server, by Lightning's own answer (the table)
    assert report["heavy"] == []
