"""A runs folder of real run records, as users leave them: made by short `python -m amp_core.train` runs.

`make_record_set(root)` builds, once, a folder holding:

- a comparison (one compare group): 32-true completed; 16-mixed completed, with injected overflows
  (backoffs), growth and gradient histograms; bf16-mixed failed (`--fault raise@10`);
- stopped: a long run sent SIGTERM once it has written steps (the CLI turns SIGTERM into a stop request);
- interrupted: a long run killed with SIGKILL: its status still says running, with a pid that is gone;
- multi-rank: a 2-process DDP run on CPU (gloo), each rank's loss scales recorded;
- queued: a run submitted as the launcher submits one (state queued, waiting for a worker);
- damaged: copies of the 16-mixed record with a cut-off and a junk metrics line (and a damaged
  histogram file), and one with an unreadable status.json. Copies, they stay in the comparison's group:
  a comparison must also cope with a damaged member.

Every CLI run is started at once (they are short) and waited for; `copy_record_set` gives each test its
own copy, so what a test does to its folder (runs it starts, stops it asks for) stays there.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from amp_core.analysis import compare
from amp_core.record import CONFIG_FILE, HISTOGRAMS_FILE, METRICS_FILE, STATUS_FILE, RunWriter, now_iso
from amp_core.training.cli import RunConfig
from tests.support.cli import cli_env
from tests.support.processes import kill_pid, wait_until

REPO = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 600  # a guard against a hung run on a loaded machine, not a timing assertion
SMALL = ["--hidden", "32", "--batch-size", "16", "--wandb", "disabled"]
LONG = ["--max-steps", "100000", "--histogram-every", "0"]  # stopped or killed once it has written steps


@dataclass
class RecordSet:
    """The runs folder and the id of each record in it, by what it shows."""

    path: Path
    ids: dict[str, str] = field(default_factory=dict)  # kind -> run id
    group: str = ""  # the comparison's compare group

    def __getitem__(self, kind: str) -> str:
        return self.ids[kind]


CREATED_AT = "2024-01-01T00:00:00.000+00:00"


def write_record(
    runs_dir: Path,
    config: dict | None = None,
    status: str | None = "completed",
    rows=(),
    created_at: str = CREATED_AT,
    label: str = "run",
    **status_fields,
) -> RunWriter:
    """A run record written through RunWriter, without training: config.json (precision 16-mixed unless
    `config` says otherwise), status.json in state `status` with `status_fields` (None: no status.json),
    and the metric `rows`."""
    writer = RunWriter.create(
        runs_dir, {"precision": "16-mixed", "created_at": created_at, **(config or {})}, label=label
    )
    if status is not None:
        writer.set_status(status, created_at=created_at, **status_fields)
    writer.append_metrics(list(rows))
    writer.close()
    return writer


def child_env() -> dict:
    return cli_env(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def start_cli_run(staging: Path, *flags: str) -> subprocess.Popen:
    """`python -m amp_core.train` into its own staging folder (so its record is the only one there)."""
    staging.mkdir(parents=True, exist_ok=True)
    log = open(staging.parent / f"{staging.name}.log", "wb")
    cmd = [sys.executable, "-m", "amp_core.train", *flags, "--runs-dir", str(staging)]
    return subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env(), cwd=REPO, start_new_session=True
    )


def only_record(staging: Path) -> Path:
    folders = [p for p in staging.iterdir() if p.is_dir()]
    assert len(folders) == 1, f"{staging} holds {len(folders)} run folders, not one"
    return folders[0]


def metric_lines(staging: Path) -> int:
    try:
        return (only_record(staging) / METRICS_FILE).read_bytes().count(b"\n")
    except (AssertionError, OSError):
        return 0


def _comparison_flags(staging: Path) -> list[tuple[str, list[str]]]:
    """The three runs of one comparison, planned as the Compare page plans them."""
    configs = compare.plan(
        ["32-true", "16-mixed", "bf16-mixed"],
        on_cuda=False,
        max_steps=20,
        batch_size=16,
        hidden=32,
        depth=2,
        accelerator="cpu",
        runs_dir=str(staging),
    )
    extra = {
        "16-mixed": [
            "--init-scale",
            str(2.0**30),
            "--growth-interval",
            "3",
            "--inject-overflow",
            "5,12",
            "--histogram-every",
            "5",
        ],
        "bf16-mixed": ["--fault", "raise@10"],
    }
    return [(f"compare-{c.precision}", [*compare.train_argv(c), *extra.get(c.precision, [])]) for c in configs]


def _end_long_run(proc: subprocess.Popen, staging: Path, sig: signal.Signals) -> None:
    wait_until(
        lambda: metric_lines(staging) >= 5 or proc.poll() is not None, RUN_TIMEOUT_S, f"steps from {staging.name}", 0.1
    )
    if proc.poll() is None:
        os.kill(proc.pid, sig)


def _run_all(staging_root: Path) -> dict[str, Path]:
    """Start every CLI run at once, end the long ones on cue, wait for all; kind -> its run folder."""
    starts = {
        **dict(_comparison_flags(staging_root / "compare")),
        "stopped": [*SMALL, *LONG, "--precision", "16-mixed"],
        "interrupted": [*SMALL, *LONG, "--precision", "32-true"],
        "multi-rank": [
            *SMALL,
            "--max-steps",
            "20",
            "--accelerator",
            "cpu",
            "--devices",
            "2",
            "--strategy",
            "ddp",
            "--precision",
            "16-mixed",
            "--init-scale",
            str(2.0**24),
            "--growth-interval",
            "5",
        ],
    }
    # The comparison's runs share its group but each goes to its own staging folder first.
    procs = {
        kind: start_cli_run(staging_root / kind, *[f for f in flags if not f.startswith("--runs-dir")])
        for kind, flags in starts.items()
    }
    try:
        _end_long_run(procs["stopped"], staging_root / "stopped", signal.SIGTERM)
        _end_long_run(procs["interrupted"], staging_root / "interrupted", signal.SIGKILL)
        for kind, proc in procs.items():
            code = proc.wait(timeout=RUN_TIMEOUT_S)
            log = (staging_root / f"{kind}.log").read_text(errors="replace")[-3000:]
            expected = {"compare-bf16-mixed": 1, "interrupted": -signal.SIGKILL}.get(kind, 0)
            assert code == expected, f"{kind}: exit code {code}, expected {expected}\n{log}"
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                kill_pid(proc.pid)
                proc.wait()
    return {kind: only_record(staging_root / kind) for kind in starts}


def _queued_record(runs_dir: Path) -> Path:
    """A run waiting for a worker, written as Launcher.submit writes it."""
    config = RunConfig(max_steps=20, hidden=32, batch_size=16, wandb="disabled", histogram_every=0).validate()
    config.runs_dir = str(runs_dir)
    writer = RunWriter.create(runs_dir, {**asdict(config), "created_at": now_iso()}, label=config.precision)
    writer.set_status("queued", created_at=now_iso(), queued_at=time.time())
    return writer.path


def _damaged_copy(source: Path, runs_dir: Path, label: str) -> Path:
    """A copy of a real record under a new run id (its config's id follows)."""
    writer = RunWriter.create(runs_dir, {}, label=label)
    shutil.rmtree(writer.path)
    shutil.copytree(source, writer.path)
    config = (writer.path / CONFIG_FILE).read_text()
    (writer.path / CONFIG_FILE).write_text(config.replace(source.name, writer.id))
    return writer.path


def _damage_lines(path: Path) -> None:
    """Two thirds of the lines, a junk line in the middle, and the last line cut in half."""
    lines = path.read_bytes().splitlines(keepends=True)
    keep = lines[: max(2, 2 * len(lines) // 3)]
    keep.insert(len(keep) // 2, b"not json at all\n")
    keep[-1] = keep[-1][: len(keep[-1]) // 2]
    path.write_bytes(b"".join(keep))


def make_record_set(root: Path) -> RecordSet:
    """Build the record set under `root` (takes a minute or so: seven short training processes)."""
    runs_dir = root / "runs"
    runs_dir.mkdir(parents=True)
    made = _run_all(root / "staging")
    records = RecordSet(runs_dir)
    for kind, folder in made.items():
        shutil.move(str(folder), runs_dir / folder.name)
        records.ids[kind] = folder.name
    records.group = compare.list_groups(runs_dir)[0]["group"]
    records.ids["queued"] = _queued_record(runs_dir).name
    fp16 = runs_dir / records["compare-16-mixed"]
    damaged = _damaged_copy(fp16, runs_dir, "damaged-lines")
    _damage_lines(damaged / METRICS_FILE)
    _damage_lines(damaged / HISTOGRAMS_FILE)
    records.ids["damaged-lines"] = damaged.name
    unreadable = _damaged_copy(fp16, runs_dir, "damaged-status")
    (unreadable / STATUS_FILE).write_text('{"state": "compl')
    records.ids["damaged-status"] = unreadable.name
    return records


def copy_record_set(records: RecordSet, dest: Path) -> RecordSet:
    """Each test's own copy of the folder (ids unchanged); `dest` may exist (empty)."""
    shutil.copytree(records.path, dest, symlinks=True, dirs_exist_ok=True)
    return RecordSet(dest, dict(records.ids), records.group)
