"""The server side of training: queue, start and stop runs, each in a child process of its own.

The `Launcher` never trains and never forks the server: each run goes to a child started with
`python -m amp_core.serve.worker` (see there), which imports torch and Lightning while it waits
(seconds), says `ready`, then takes one job on stdin. A crash, an out-of-memory or a kill of the
child cannot take the server down, and a fresh process per run leaves no state (W&B run, CUDA
memory) behind. One child is kept warm, so that Start does not wait for those imports.

The queue lives on disk: a submitted run is a run record in state `queued`, so every session sees
it, and a restarted server finds it again. One run trains at a time per device (the CPU, or each
GPU). Stop writes the run's stop file (the trainer ends at its next step); a run that has not
ended 1.5 s later is killed, and keeps every metric it wrote.

Stdlib and amp_core.record only: the Streamlit server imports this module.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from amp_core.record import (
    STATUS_FILE,
    RunWriter,
    list_runs,
    load_run,
    now_iso,
    process_alive,
    queued_runs,
    request_stop,
    run_path,
)
from amp_core.training.config import ConfigError, RunConfig

STOP_GRACE_S = 1.5
POLL_S = 0.1
IDLE_SCAN_S = 2.0  # with nothing queued, the runs folder is scanned this often (a restart's leftovers, other writers)
# Warming a worker imports torch and Lightning for seconds on every core it can get: wait until a
# run that just started is past its own start-up, so the two do not compete.
SPARE_DELAY_S = 3.0


class _Worker:
    """One child process: warming up, ready, or running a job.

    Its process group (id: the child's pid) is signalled only while the child is unreaped. A pid is
    not reused while its process is a zombie, so a group signalled then is ours; every poll, wait
    and signal of the child goes through `_reap_lock`, so no thread can reap it between another's
    check and its kill.
    """

    def __init__(self, log_dir: Path, on_ready: Callable[[], None] | None = None, command: list[str] | None = None):
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.log_path = log_dir / f"worker-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{id(self):x}.log"
        self._log = open(self.log_path, "ab")
        self._reap_lock = threading.Lock()
        self.proc = subprocess.Popen(
            command or [sys.executable, "-m", "amp_core.serve.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            start_new_session=True,  # a Ctrl+C to the server's terminal is not a Ctrl+C to the runs
        )
        self.ready = threading.Event()
        self.run_id: str | None = None
        self.device: str | None = None
        self.started = time.monotonic()
        self._on_ready = on_ready
        threading.Thread(target=self._read_stdout, name="amp-worker-stdout", daemon=True).start()

    def _read_stdout(self) -> None:
        for line in self.proc.stdout:
            if line.strip() == b"ready":
                self.ready.set()
                if self._on_ready is not None:
                    self._on_ready()  # a run waiting for this worker (a cold start) is handed over now
        self.proc.stdout.close()

    def exit_code(self) -> int | None:
        """The child's exit code once it has ended (reaping it), else None."""
        with self._reap_lock:
            return self.proc.poll()

    def alive(self) -> bool:
        return self.exit_code() is None

    def signal_group(self, sig: int) -> bool:
        """Send `sig` to the child's process group while the child is unreaped; False if it had ended."""
        with self._reap_lock:
            if self.proc.poll() is not None:
                return False
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return False
            except PermissionError:  # its group holds a process that is not ours to signal: the child alone
                self.proc.send_signal(sig)
            return True

    def start(self, run_id: str, run_dir: Path, config: dict, device: str) -> None:
        self.run_id, self.device = run_id, device
        self.dispatched = time.monotonic()
        job = json.dumps({"run_dir": str(run_dir), "config": config, "device": device}) + "\n"
        self.proc.stdin.write(job.encode())
        self.proc.stdin.close()

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the child to end (subprocess.TimeoutExpired after `timeout`)."""
        with self._reap_lock:
            return self.proc.wait(timeout)

    def kill(self) -> None:
        self.signal_group(signal.SIGKILL)
        self.wait()
        self._log.close()


class Launcher:
    """Starts, queues and stops runs for one runs directory. Thread-safe; shared by all sessions."""

    def __init__(self, runs_dir: str | os.PathLike, cuda_devices: int | None = None, warm: bool = True):
        from amp_core.record.recordings import refuse_if_recording

        # Recordings are read-only: no queue, no .workers/ there.
        refuse_if_recording(runs_dir, "running a launcher on it")
        self.runs_dir = Path(runs_dir)
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir = self.runs_dir / ".workers"
        self.log_dir.mkdir(exist_ok=True)
        self._lock = threading.RLock()
        self._running: dict[str, _Worker] = {}  # device -> worker
        self._spare: _Worker | None = None
        self._stops: dict[str, float] = {}  # run id -> when stop was asked
        self._warm = warm
        self._cuda_devices = cuda_devices
        self._hardware: dict | None = None
        self._forced: set[str] = set()  # runs killed for not stopping in time
        self._adopted: dict[str, dict] = {}  # device -> status of a run an earlier server started, still training
        self._next_scan = 0.0
        self._closed = threading.Event()
        self._adopt_orphans()
        if warm:
            self._spare = self._new_worker()
        if cuda_devices is None:
            threading.Thread(target=self._probe_hardware, name="amp-hardware-probe", daemon=True).start()
        self._thread = threading.Thread(target=self._loop, name="amp-launcher", daemon=True)
        self._thread.start()

    # -- what sessions call ------------------------------------------------------------------

    def submit(self, config: RunConfig, normalize_precision: Callable[[Any], str] | None = None) -> str:
        """Validate and queue a run; it starts as soon as its device is free. Returns the run id.

        `normalize_precision`: see RunConfig.validate (a page passes the precision table's, torch-free)."""
        config.validate(normalize_precision)
        config.runs_dir = str(self.runs_dir)
        if config.devices * config.num_nodes > 1:
            # Lightning launches the other ranks by running this process's command again: the CLI's.
            raise ConfigError(
                "multi-process runs start from the command line: python -m amp_core.train --devices N --strategy ddp"
            )
        if config.accelerator == "gpu" and self.cuda_devices == 0:
            raise ConfigError("accelerator 'gpu' needs CUDA, and no CUDA GPU is visible here; choose cpu or auto")
        writer = RunWriter.create(self.runs_dir, {**asdict(config), "created_at": now_iso()}, label=config.precision)
        writer.set_status("queued", created_at=now_iso(), queued_at=time.time())
        self._wake()
        return writer.id

    def stop(self, run_id: str) -> str:
        """Ask a run to stop; returns what happened ('stopping', 'removed from queue', or its state)."""
        path = run_path(self.runs_dir, run_id)
        with self._lock:
            run = load_run(path)
            if run.state == "queued":
                RunWriter.open(path).set_status("stopped", ended_at=now_iso(), error="stopped before it started")
                return "removed from queue"
            if run.state not in ("starting", "running"):
                return run.state
            request_stop(path)
            self._stops.setdefault(run_id, time.monotonic())
        self._wake()
        return "stopping"

    def queue(self) -> list[dict]:
        """Queued runs in the order they will start."""
        return [
            {"id": r.id, "precision": r.precision, "accelerator": r.config.get("accelerator"), "position": i + 1}
            for i, r in enumerate(queued_runs(self.runs_dir))
        ]

    def active(self) -> dict[str, str]:
        """device -> id of the run training there now."""
        with self._lock:
            return {dev: w.run_id for dev, w in self._running.items()}

    @property
    def cuda_devices(self) -> int | None:
        """How many GPUs runs can use; None until the hardware probe has answered."""
        return self._cuda_devices

    @property
    def hardware(self) -> dict | None:
        return self._hardware

    def _probe_hardware(self) -> None:
        from amp_core.serve.hardware import probe

        self._hardware = probe()
        self._cuda_devices = len(self._hardware.get("devices", []))
        self._wake()

    @property
    def warm_ready(self) -> bool:
        spare = self._spare
        return spare is not None and spare.ready.is_set() and spare.alive()

    def close(self, stop_runs: bool = False) -> None:
        self._closed.set()
        self._thread.join(timeout=5)
        with self._lock:
            if self._spare is not None:
                self._spare.kill()
                self._spare = None
            if stop_runs:
                for w in self._running.values():
                    request_stop(self.runs_dir / w.run_id)
                deadline = time.monotonic() + 5
                for w in list(self._running.values()):
                    try:
                        w.wait(timeout=max(0.1, deadline - time.monotonic()))
                    except subprocess.TimeoutExpired:
                        w.kill()

    # -- the scheduler thread ----------------------------------------------------------------

    def _wake(self) -> None:
        self._next_scan = 0.0
        self._tick()

    def _loop(self) -> None:
        while not self._closed.wait(POLL_S):
            self._tick_safely()

    def _tick_safely(self) -> None:
        if self._closed.is_set():
            return
        try:
            self._tick()
        except Exception as e:  # the scheduler must outlive anything a run does
            print(f"amp_core.serve.launcher: scheduler error: {type(e).__name__}: {e}", file=sys.stderr)

    def _device_for(self, config: dict) -> str | None:
        """The device a queued run should go to: 'cpu', a free 'cuda:i' (or a busy one to wait for),
        None while it cannot be told yet (the GPU count is still being probed)."""
        accel = config.get("accelerator", "auto")
        if accel == "cpu":
            return "cpu"
        if self.cuda_devices is None:
            return None
        if self.cuda_devices == 0:
            return "cpu"  # 'auto' means the CPU here; 'gpu' then fails in the run with a clear message
        free = [
            f"cuda:{i}"
            for i in range(self.cuda_devices)
            if f"cuda:{i}" not in self._running and f"cuda:{i}" not in self._adopted
        ]
        return free[0] if free else "cuda:0"

    def _tick(self) -> None:
        with self._lock:
            if self._reap():
                self._next_scan = 0.0
            self._enforce_stops()
            if time.monotonic() < self._next_scan:
                self._keep_spare()
                return
            queued = queued_runs(self.runs_dir)
            self._next_scan = time.monotonic() + (POLL_S if queued else IDLE_SCAN_S)
            adopted = self._adopted_devices() if queued else set()
            for run in queued:
                device = self._device_for(run.config)
                if device is None or device in self._running or device in adopted:
                    continue
                worker = self._take_worker()
                if worker is None:
                    break
                if not worker.ready.is_set():  # cold start: it will take the job once warm
                    self._spare = worker
                    break
                # "starting" before the job is handed over: the child writes "running" as soon as it has it.
                RunWriter.open(run.path).set_status(
                    "starting", pid=worker.proc.pid, host=socket.gethostname(), device=device, started_at=now_iso()
                )
                worker.start(
                    run.id,
                    run.path,
                    {k: v for k, v in run.config.items() if k in RunConfig.__dataclass_fields__},
                    device,
                )
                self._running[device] = worker
            self._keep_spare()

    def _keep_spare(self) -> None:
        if not self._warm or self._spare is not None or self._closed.is_set():
            return
        if all(time.monotonic() - w.dispatched > SPARE_DELAY_S for w in self._running.values()):
            self._spare = self._new_worker()

    def _take_worker(self) -> _Worker | None:
        spare, self._spare = self._spare, None
        if spare is not None and spare.alive():
            return spare
        if spare is not None:  # it died while warming up (import error): say so in its log, start another
            spare.kill()
        return self._new_worker()

    def _new_worker(self) -> _Worker:
        # Told when it is ready: a run queued behind a cold start goes to it then, not at the next poll.
        return _Worker(self.log_dir, on_ready=self._wake_safely)

    def _wake_safely(self) -> None:
        self._next_scan = 0.0
        self._tick_safely()

    def _reap(self) -> bool:
        """Handle workers that exited; True if any did."""
        reaped = False
        for device, worker in list(self._running.items()):
            code = worker.exit_code()
            if code is None:
                continue
            reaped = True
            del self._running[device]
            worker.kill()
            self._stops.pop(worker.run_id, None)
            forced = worker.run_id in self._forced
            self._forced.discard(worker.run_id)
            path = self.runs_dir / worker.run_id
            status = _read_status(path)
            if status.get("state") in ("running", "starting", "queued"):
                reason = f"killed by signal {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
                if forced:
                    RunWriter.open(path).set_status(
                        "stopped", ended_at=now_iso(), error=f"did not stop within {STOP_GRACE_S} s and was killed"
                    )
                else:
                    RunWriter.open(path).set_status(
                        "failed",
                        ended_at=now_iso(),
                        error=f"the training process {reason} without recording an end (see {worker.log_path.name})",
                    )
        return reaped

    def _enforce_stops(self) -> None:
        now = time.monotonic()
        for run_id, asked in list(self._stops.items()):
            worker = next((w for w in self._running.values() if w.run_id == run_id), None)
            if worker is None:
                self._stops.pop(run_id)
            elif now - asked > STOP_GRACE_S and worker.signal_group(signal.SIGKILL):
                self._forced.add(run_id)

    def _adopt_orphans(self) -> None:
        """After a server restart: runs whose process is gone are marked interrupted; a run still training
        keeps its device until it ends (one run per device holds across a restart too)."""
        for run in list_runs(self.runs_dir):
            state = run.status.get("state")
            if state not in ("running", "starting"):
                continue
            if process_alive(run.status.get("pid"), run.status.get("host")) is not True:
                RunWriter.open(run.path).set_status(
                    "interrupted", ended_at=now_iso(), error="the server restarted and the training process was gone"
                )
            elif isinstance(run.status.get("device"), str):
                self._adopted[run.status["device"]] = dict(run.status)

    def _adopted_devices(self) -> set[str]:
        """Devices still held by runs an earlier server started (dropping those whose process has ended)."""
        for device, status in list(self._adopted.items()):
            if process_alive(status.get("pid"), status.get("host")) is not True:
                del self._adopted[device]
        return set(self._adopted)


def _read_status(path: Path) -> dict:
    try:
        return json.loads((path / STATUS_FILE).read_text())
    except (OSError, ValueError, RecursionError):
        return {}


_launchers: dict[Path, Launcher] = {}
_launchers_lock = threading.Lock()


def get_launcher(runs_dir: str | os.PathLike, **kwargs: Any) -> Launcher:
    """The one launcher for `runs_dir` in this process."""
    key = Path(runs_dir).resolve()
    with _launchers_lock:
        if key not in _launchers:
            _launchers[key] = Launcher(key, **kwargs)
        return _launchers[key]


def running_launcher(runs_dir: str | os.PathLike) -> Launcher | None:
    """The launcher for `runs_dir` if this process has started one (None otherwise)."""
    with _launchers_lock:
        return _launchers.get(Path(runs_dir).resolve())


def close_launchers(stop_runs: bool = True) -> None:
    """Close every launcher of this process (tests, shutdown); `stop_runs` also stops what they run."""
    with _launchers_lock:
        launchers = list(_launchers.values())
        _launchers.clear()
    for launcher in launchers:
        launcher.close(stop_runs=stop_runs)
