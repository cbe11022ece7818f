"""The benchmarks' and browser tests' harness: a real `streamlit run` server and headless Chromium.

    with_server = Server("app.py", cwd=REPO, runs_dir=tmp / "runs", log=tmp / "server.log")
    browser = launch_browser(playwright); ctx, page = new_page(browser)

`Server(cold=True)` turns the launcher's warm worker off (each run then imports torch and Lightning
in a fresh worker); `wait_spare()` waits until the warm worker has finished importing. Needs the PyPI
`playwright` package and Chromium at /usr/bin/chromium (or $AMP_CHROMIUM). W&B stays offline.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHROMIUM = os.environ.get("AMP_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
SETTLED = "[data-testid='stApp'][data-test-script-state='notRunning']"
EXCEPTION = "[data-testid='stException']"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_pids(runs_dir: Path) -> list[int]:
    """`amp_core.serve.worker` processes whose environment names `runs_dir`."""
    marker = f"AMP_RUNS_DIR={runs_dir}".encode()
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if b"\0-m\0amp_core.serve.worker\0" not in (entry / "cmdline").read_bytes():
                continue
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                out.append(int(entry.name))
        except OSError:
            continue
    return out


def kill_workers(runs_dir: Path, timeout: float = 10.0) -> list[int]:
    """SIGKILL every worker (and its process group) started for `runs_dir`, wait until they are gone; their pids."""
    pids = worker_pids(runs_dir)
    for pid in pids:
        for kill in (lambda pid=pid: os.killpg(pid, signal.SIGKILL), lambda pid=pid: os.kill(pid, signal.SIGKILL)):
            try:
                kill()
                break
            except (ProcessLookupError, PermissionError):
                continue
    deadline = time.monotonic() + timeout
    while worker_pids(runs_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    return pids


def cpu_ticks(pid: int) -> int | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime
    except (OSError, IndexError, ValueError):
        return None


# `streamlit run` with the launcher's warm worker turned off (Launcher(warm=False) as the default), for
# cold starts: the app has no switch for it, so the server process patches the default, then runs
# Streamlit's own command line exactly as `python -m streamlit` does.
COLD_BOOT = (
    "import sys; import amp_core.serve.launcher as w; "
    "w.Launcher.__init__.__defaults__ = w.Launcher.__init__.__defaults__[:-1] + (False,); "
    "from streamlit.web.cli import main; sys.argv[0] = 'streamlit'; main(prog_name='streamlit')"
)


class Server:
    """`streamlit run <script>` on a free local port, healthy when constructed; `env` adds to its environment."""

    def __init__(
        self,
        script: str,
        cwd: Path,
        runs_dir: Path | None,
        log: Path,
        cold: bool = False,
        env: dict | None = None,
        start_timeout: float = 90,
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.runs_dir = Path(runs_dir).resolve() if runs_dir else None
        environ = dict(
            os.environ, WANDB_MODE="offline", WANDB_SILENT="true", WANDB_DISABLE_GIT="true", PYTHONUNBUFFERED="1"
        )
        environ.pop("STREAMLIT_SERVER_PORT", None)  # the port is ours to choose
        if self.runs_dir:
            self.runs_dir.mkdir(parents=True, exist_ok=True)
            environ["AMP_RUNS_DIR"] = str(self.runs_dir)
            environ["WANDB_DIR"] = str(self.runs_dir.parent)
        environ.update(env or {})
        cmd = [sys.executable, *(["-c", COLD_BOOT] if cold else ["-m", "streamlit"]), "run", script, "--server.headless", "true", "--server.address", "127.0.0.1",
               "--server.port", str(self.port), "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"]  # fmt: skip
        self.log_path = Path(log)
        self._log = open(self.log_path, "wb")
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(
            cmd, cwd=cwd, env=environ, stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        self._wait_healthy(start_timeout)
        self.healthy_after = time.perf_counter() - self.started

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                self.stop()
                raise RuntimeError(
                    f"streamlit exited with code {self.proc.returncode} before it was healthy:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"streamlit was not healthy after {timeout:g} s:\n{self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def spare_ready(self) -> bool:
        """A worker that is not training any run, alive, and idle (blocked reading its job)."""
        busy = set()  # every process that ever took a job (a finished one may still be exiting)
        for status in self.runs_dir.glob("*/status.json"):
            try:
                s = json.loads(status.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(s.get("pid"), int):
                busy.add(s["pid"])
        for pid in worker_pids(self.runs_dir):
            if pid in busy:
                continue
            a = cpu_ticks(pid)
            time.sleep(0.5)
            b = cpu_ticks(pid)
            if a is not None and a == b and a > 50:  # has imported torch (>0.5 s of CPU) and now waits
                return True
        return False

    def wait_spare(self, timeout: float = 90) -> float:
        t0 = time.perf_counter()
        while not self.spare_ready():
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError("the warm worker did not become ready")
            time.sleep(0.2)
        return time.perf_counter() - t0

    def stop(self) -> list[int]:
        """Terminate the server (then kill it), then kill any worker it left; returns those workers' pids."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        leftovers = kill_workers(self.runs_dir) if self.runs_dir else []
        if not self._log.closed:
            self._log.close()
        return leftovers


def launch_browser(p):
    return p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


def new_page(browser, timeout_s: float = 90):
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    ctx.set_default_timeout(timeout_s * 1000)
    return ctx, ctx.new_page()


def check_no_exception(page, where: str) -> None:
    shown = page.locator(EXCEPTION).all_inner_texts()
    if shown:
        raise RuntimeError(f"{where} shows an exception:\n" + "\n".join(shown)[:3000])
