"""Recordings: run records shipped with the project (demo_runs/), made on a real GPU, read-only.

A recording is an ordinary run folder (config.json, status.json, metrics.jsonl, histograms.jsonl)
plus `provenance.json`: the device, torch, CUDA and Lightning versions, the date and the command
that made it, and a label (an injected overflow always says so). The Runs page replays them like
local runs and the Compare page reads their compare groups; nothing in the project writes into them:
`RunWriter`, `request_stop` and the `Launcher` refuse a recording.

A recording is made by training with the project's own CLI into a staging folder, then publishing
the finished run: `publish` writes its provenance and moves it into the recordings folder. That move
is the only write a recording ever gets (bench/record_demo_runs.py does it on the GPU machine).

    python -m amp_core.record.recordings list [DIR]
    python -m amp_core.record.recordings publish --into DIR --command "python -m amp_core.train ..." --label "..." RUN_DIR...

For the Runs and Compare pages: `list_runs(runs_dir, include_recordings=True)` (each Run has `recording`
and `provenance`), `summarize(run)["recording"]` and `["provenance"]` (one line, `provenance_line`),
`list_recordings()`, `recording_path(run_id)`, and `amp_core.compare.list_groups(default_recordings_dir())`
/ `group_runs(default_recordings_dir(), group)` for the recorded comparisons.

Only the standard library and NumPy at import (through amp_core.record): the app imports this.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from amp_core.record import (
    CONFIG_FILE,
    FINAL_STATES,
    PROVENANCE_FILE,
    Run,
    RunRecordError,
    list_runs,
    load_run,
    now_iso,
    run_path,
)

RECORDINGS_DIR_ENV = "AMP_RECORDINGS_DIR"
REPO_RECORDINGS = Path(__file__).resolve().parents[2] / "demo_runs"
# What provenance.json holds; readers show these (None where unknown), and keep any other field.
PROVENANCE_FIELDS = (
    "label",
    "device",
    "accelerator",
    "compute_capability",
    "torch",
    "cuda",
    "driver",
    "lightning",
    "python",
    "host",
    "recorded_at",
    "published_at",
    "command",
    "injected_overflow_steps",
    "fault",
)


class RecordingError(RunRecordError):
    """A recording that cannot be written, published or changed; the message says why."""


def default_recordings_dir() -> Path:
    """Where shipped recordings live: demo_runs/ in the repository root, or $AMP_RECORDINGS_DIR."""
    return Path(os.environ.get(RECORDINGS_DIR_ENV) or REPO_RECORDINGS)


def is_recording(path: str | os.PathLike) -> bool:
    """Whether `path` is a recording (holds provenance.json) or lies in the recordings folder."""
    path = Path(path)
    try:
        if (path / PROVENANCE_FILE).is_file():
            return True
        root, p = default_recordings_dir().resolve(), path.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop
        return False
    return p == root or root in p.parents


def refuse_if_recording(path: str | os.PathLike, what: str) -> None:
    if is_recording(path):
        raise RecordingError(f"{Path(path).name or path} is a recording, and recordings are read-only: {what} refused")


def read_provenance(path: str | os.PathLike) -> tuple[dict, str | None]:
    """A recording's provenance and, where it is missing or damaged, a problem to report (never raises)."""
    try:
        data = json.loads((Path(path) / PROVENANCE_FILE).read_text())
    except FileNotFoundError:
        return {}, f"{PROVENANCE_FILE} is missing: where and how this recording was made is unknown"
    except (OSError, ValueError, RecursionError) as e:
        return {}, f"{PROVENANCE_FILE} is unreadable ({type(e).__name__})"
    if not isinstance(data, dict):
        return {}, f"{PROVENANCE_FILE} is not a JSON object"
    return {**dict.fromkeys(PROVENANCE_FIELDS), **data}, None


def provenance_line(provenance: dict) -> str:
    """One line for a runs table: device, versions, date and label (empty for a local run)."""
    if not provenance:
        return ""
    p = provenance
    parts = [
        str(p.get("device") or "unknown device"),
        f"torch {p['torch']}" if p.get("torch") else None,
        f"CUDA {p['cuda']}" if p.get("cuda") else None,
        f"Lightning {p['lightning']}" if p.get("lightning") else None,
        f"recorded {str(p['recorded_at'])[:10]}" if p.get("recorded_at") else None,
        str(p["label"]) if p.get("label") else None,
    ]
    return " · ".join(x for x in parts if x)


def recording_path(run_id: str, recordings_dir: str | os.PathLike | None = None) -> Path:
    """The folder of recording `run_id` (raises RunRecordError for an id that is not one, as `run_path` does)."""
    return run_path(recordings_dir if recordings_dir is not None else default_recordings_dir(), run_id)


def list_recordings(recordings_dir: str | os.PathLike | None = None) -> list[Run]:
    """Every recording in `recordings_dir` (default: demo_runs/), newest first; each has `recording` set."""
    return list_runs(recordings_dir if recordings_dir is not None else default_recordings_dir())


# -- making recordings (on the machine that trained them) ------------------------------------


def machine_facts() -> dict[str, Any]:
    """What the run record does not hold about this machine: the CUDA runtime and the driver."""
    facts: dict[str, Any] = {"host": socket.gethostname(), "cuda": None, "driver": None}
    try:
        import torch  # only here: publishing happens where the runs were trained

        facts["cuda"] = torch.version.cuda
    except ImportError:
        pass
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        facts["driver"] = out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else None
    except (OSError, subprocess.TimeoutExpired):
        pass
    return facts


def provenance_for(run: Run, command: str, label: str, machine: dict) -> dict:
    """The provenance of a finished run, from its own record plus `machine` (the publishing machine's facts)."""
    c = run.config
    hardware, versions = c.get("hardware") or {}, c.get("versions") or {}
    same_machine = machine.get("host") == hardware.get("host")
    injected = sorted(int(s) for s in c.get("inject_overflow") or ())
    if injected and "inject" not in label.lower():  # an injected overflow is never shown as a natural one
        label = f"{label} (overflow injected at steps {', '.join(map(str, injected))})".strip()
    gpu = c.get("accelerator_resolved") == "gpu"
    return {
        "label": label,
        "device": hardware.get("device_name") if gpu else f"CPU ({hardware.get('cpu_capability') or 'unknown'})",
        "accelerator": c.get("accelerator_resolved"),
        "compute_capability": hardware.get("compute_capability"),
        "torch": versions.get("torch"),
        "cuda": machine.get("cuda") if gpu and same_machine else None,
        "driver": machine.get("driver") if gpu and same_machine else None,
        "lightning": versions.get("pytorch-lightning"),
        "python": versions.get("python"),
        "host": hardware.get("host"),
        "recorded_at": run.status.get("started_at") or c.get("created_at"),
        "published_at": now_iso(),
        "command": command,
        "injected_overflow_steps": injected,
        "fault": c.get("fault") or None,
    }


def publish(
    run_dir: str | os.PathLike, into: str | os.PathLike, command: str, label: str, machine: dict | None = None
) -> Path:
    """Write the provenance of the finished run in `run_dir` and move it into the recordings folder `into`.

    Refuses a run that has not finished, a damaged record, a folder that is already a recording, and
    a run trained on a CPU when `into` is the repository's demo_runs/ (only GPU runs are shipped).
    """
    src, into = Path(run_dir), Path(into)
    if not (src / CONFIG_FILE).is_file():
        raise RecordingError(f"{src} is not a run folder (no {CONFIG_FILE})")
    if (src / PROVENANCE_FILE).exists():
        raise RecordingError(f"{src.name} is already a recording")
    run = load_run(src)
    if run.state not in FINAL_STATES or run.problems:
        raise RecordingError(
            f"{src.name} cannot be published: it is {run.state}"
            + (f" ({'; '.join(run.problems)})" if run.problems else "")
        )
    if into.resolve() == REPO_RECORDINGS.resolve() and run.config.get("accelerator_resolved") != "gpu":
        raise RecordingError(f"{src.name} ran on a CPU: only GPU runs are shipped in {REPO_RECORDINGS.name}/")
    dest = into / src.name
    if dest.exists():
        raise RecordingError(f"{dest} exists already")
    provenance = provenance_for(run, command, label, machine if machine is not None else machine_facts())
    into.mkdir(parents=True, exist_ok=True)
    (src / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2))
    shutil.move(str(src), str(dest))
    return dest


# -- the CLI ---------------------------------------------------------------------------------


def _list(recordings_dir: str | None) -> int:
    from amp_core.record import summarize

    runs = list_recordings(recordings_dir)
    for run in runs:
        s = summarize(run)
        print(
            f"{s['id']}  {s['state']}  {s['precision']}  {s['steps']} steps  {s['provenance']}"
            + (f"  [{s['problems']}]" if s["problems"] else "")
        )
    if not runs:
        print(f"no recordings in {recordings_dir or default_recordings_dir()}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m amp_core.record.recordings", description="List or publish recordings (demo_runs/)."
    )
    sub = p.add_subparsers(dest="verb", required=True)
    sub.add_parser("list", help="the recordings and their provenance").add_argument("dir", nargs="?", default=None)
    pub = sub.add_parser(
        "publish", help="write the provenance of finished runs and move them into the recordings folder"
    )
    pub.add_argument("--into", required=True)
    pub.add_argument("--command", required=True, help="the command that made the runs")
    pub.add_argument("--label", default="", help="what the runs show (an injected overflow is added by itself)")
    pub.add_argument("run_dirs", nargs="+")
    args = p.parse_args(argv)
    if args.verb == "list":
        return _list(args.dir)
    machine = machine_facts()
    try:
        for run_dir in args.run_dirs:
            print(publish(run_dir, args.into, args.command, args.label, machine))
    except RecordingError as e:
        print(f"amp_core.record.recordings: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
