"""Running the project's command lines as a user does: `python -m amp_core.train` (or `.compare`) in a
child process, with an environment that keeps W&B offline and the run out of any caller's ranks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path

from amp_core.record import list_runs

REPO = Path(__file__).resolve().parents[2]
PREFIX = "amp_core.train: error:"  # how the training CLI starts a one-line refusal
CLI_TIMEOUT_S = 600  # a guard against a hung child on a loaded machine, not a timing assertion


def cli_env(runs_dir: Path | None = None, **extra: str) -> dict:
    """This environment with W&B offline and quiet, no API key, this checkout first on the path, runs
    into `runs_dir` (if given), and none of the variables that would make a child think it is a rank."""
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    for key in ("WANDB_API_KEY", "RANK", "LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "AMP_RUN_DIR"):
        env.pop(key, None)
    if runs_dir is not None:
        env["AMP_RUNS_DIR"] = str(runs_dir)
    env.update(extra)
    return env


def run_cli(
    module: str, args: list[str], env: dict, cwd: Path = REPO, text: bool = True
) -> subprocess.CompletedProcess:
    """`python -m module args` to its end, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=text, timeout=CLI_TIMEOUT_S
    )


def start_cli(args: list[str], runs_dir: Path, **extra: str) -> subprocess.Popen:
    """`python -m amp_core.train args` started, its output piped."""
    return subprocess.Popen(
        [sys.executable, "-m", "amp_core.train", *args],
        cwd=REPO,
        env=cli_env(runs_dir, **extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def only_run(runs_dir: Path):
    """The one run in `runs_dir` (AssertionError if there are more, or none)."""
    runs = list_runs(runs_dir)
    assert len(runs) == 1, [r.id for r in runs]
    return runs[0]


def metrics_lines(run_dir: Path) -> list[dict]:
    """Every line of metrics.jsonl, which must all be valid JSON objects."""
    text = (run_dir / "metrics.jsonl").read_text()
    assert text == "" or text.endswith("\n"), "a cut-off last line"
    return [json.loads(line) for line in text.splitlines()]


def check_ended(status: dict, state: str) -> None:
    """A status in `state`, ended after it started, naming the process and host that ran it."""
    assert status["state"] == state
    started, ended = datetime.fromisoformat(status["started_at"]), datetime.fromisoformat(status["ended_at"])
    assert started <= ended
    assert isinstance(status["pid"], int) and status["host"]
