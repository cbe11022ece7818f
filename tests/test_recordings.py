"""Recordings (amp_core.record.recordings): runs made here on the CPU by the real trainer, published into a
temporary recordings folder (never the repository's demo_runs/, which only GPU runs may enter).

Listed apart from local runs, with their provenance read back; replayable like any run; comparable
as a compare group; read-only for every writer in the project; honest about injected overflows.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from amp_core.analysis import compare
from amp_core.record import (
    METRICS_FILE,
    RunFollower,
    RunRecordError,
    RunWriter,
    list_runs,
    load_histograms,
    load_run,
    request_stop,
    summarize,
)
from amp_core.record.recordings import (
    PROVENANCE_FILE,
    RECORDINGS_DIR_ENV,
    REPO_RECORDINGS,
    RecordingError,
    is_recording,
    list_recordings,
    provenance_line,
    publish,
    recording_path,
)
from amp_core.serve.launcher import Launcher
from amp_core.training.cli import RunConfig, run

REPO = Path(__file__).resolve().parents[1]
SMALL = dict(accelerator="cpu", hidden=32, depth=2, batch_size=16, wandb="disabled")
MACHINE = {"host": None, "cuda": None, "driver": None}  # what machine_facts() gives a machine without CUDA


@pytest.fixture(scope="module")
def staged(tmp_path_factory) -> dict[str, Path]:
    """Real runs, trained once for the module: fp16 with real backoffs and growths, one with an injected
    overflow, and a two-run compare group. Tests publish copies of them."""
    staging = tmp_path_factory.mktemp("staging")
    out = {}
    fp16 = dict(
        SMALL,
        precision="16-mixed",
        max_steps=40,
        init_scale=2.0**24,
        growth_interval=5,
        histogram_every=10,
        runs_dir=str(staging),
    )
    out["fp16"] = run(RunConfig(**fp16)).path
    out["injected"] = run(RunConfig(**{**fp16, "init_scale": 2.0**10, "inject_overflow": (20,)})).path
    configs = compare.plan(
        ["32-true", "bf16-mixed"],
        on_cuda=False,
        max_steps=compare.min_comparison_steps(),
        runs_dir=str(staging),
        **{k: v for k, v in SMALL.items() if k != "wandb"},
    )
    out["compare"] = [run(c).path for c in configs]
    out["group"] = configs[0].compare_group
    return out


@pytest.fixture
def recordings_dir(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "demo_runs"
    monkeypatch.setenv(RECORDINGS_DIR_ENV, str(d))
    return d


def copy_of(path: Path, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    return Path(shutil.copytree(path, into / path.name))


def files_of(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_published_run_is_a_recording_with_its_provenance(staged, recordings_dir, tmp_path):
    src = copy_of(staged["fp16"], tmp_path / "stage")
    metrics_before = (src / METRICS_FILE).read_bytes()
    command = "python -m amp_core.train --precision 16-mixed --init-scale 16777216 --growth-interval 5"
    dest = publish(src, recordings_dir, command, "fp16: a real backoff and a real growth", MACHINE)
    assert dest == recordings_dir / src.name and not src.exists()
    assert (dest / METRICS_FILE).read_bytes() == metrics_before, "publishing changes no byte of the record"

    (rec,) = list_recordings()
    assert (
        rec.recording and rec.problems == [] and rec.state == "completed" and recording_path(rec.id) == dest.resolve()
    )
    with pytest.raises(RunRecordError):
        recording_path("../runs")
    p = rec.provenance
    assert p["device"].startswith("CPU (") and p["accelerator"] == "cpu" and p["cuda"] is None
    assert p["torch"] == md.version("torch") and p["lightning"] == md.version("pytorch-lightning")
    assert p["python"] == rec.config["versions"]["python"] and p["host"] == rec.config["hardware"]["host"]
    assert p["recorded_at"] == rec.status["started_at"] and p["command"] == command
    assert p["label"] == "fp16: a real backoff and a real growth" and p["injected_overflow_steps"] == []
    s = summarize(rec)
    assert s["recording"] is True and s["provenance"] == provenance_line(p)
    assert (
        f"torch {p['torch']}" in s["provenance"]
        and "Lightning" in s["provenance"]
        and "real backoff" in s["provenance"]
    )


def test_local_runs_and_recordings_are_listed_apart(staged, recordings_dir, runs_dir, tmp_path):
    publish(copy_of(staged["fp16"], tmp_path / "stage"), recordings_dir, "cmd", "a recording", MACHINE)
    local = copy_of(staged["injected"], runs_dir)
    assert [(r.id, r.recording) for r in list_runs(runs_dir)] == [(local.name, False)]
    both = {r.id: r.recording for r in list_runs(runs_dir, include_recordings=True)}
    assert both == {local.name: False, staged["fp16"].name: True}
    assert summarize(load_run(local))["provenance"] == "" and load_run(local).provenance == {}
    # the recordings folder asked for with its own recordings: each listed once
    assert [r.id for r in list_runs(recordings_dir, include_recordings=True)] == [staged["fp16"].name]


def test_a_recording_replays_like_the_run_it_was(staged, recordings_dir, tmp_path):
    original = load_run(staged["fp16"])
    rec = load_run(publish(copy_of(staged["fp16"], tmp_path / "stage"), recordings_dir, "cmd", "replay", MACHINE))
    assert len(rec.metrics) == 40
    for column in ("step", "loss", "loss_scale", "skipped", "grad_norm", "growth_tracker"):
        np.testing.assert_array_equal(rec.metrics.columns[column], original.metrics.columns[column])
    assert load_histograms(rec.path) == load_histograms(staged["fp16"]) and len(load_histograms(rec.path)) == 4
    changes = np.diff(rec.metrics.loss_scale)
    assert (changes < 0).any() and (changes > 0).any(), "the scaler backed off and grew, for real"
    follower = RunFollower(rec.path)
    assert follower.poll() == 40 and follower.state == "completed"


def test_recordings_are_read_only(staged, recordings_dir, runs_dir, tmp_path):
    dest = publish(copy_of(staged["fp16"], tmp_path / "stage"), recordings_dir, "cmd", "read-only", MACHINE)
    before = files_of(recordings_dir)
    with pytest.raises(RecordingError, match="read-only"):
        RunWriter.create(recordings_dir, {"precision": "32-true"})
    with pytest.raises(RecordingError, match="read-only"):
        RunWriter.open(dest)
    with pytest.raises(RecordingError, match="read-only"):
        request_stop(dest)
    with pytest.raises(RecordingError, match="running a launcher"):
        Launcher(recordings_dir, cuda_devices=0, warm=False)
    assert issubclass(RecordingError, RunRecordError)  # every caller that handles a bad run folder handles this too
    # A recording copied among local runs keeps its provenance, and stays read-only there.
    copied = copy_of(dest, runs_dir)
    assert load_run(copied).recording and is_recording(copied)
    with pytest.raises(RecordingError):
        RunWriter.open(copied)
    assert files_of(recordings_dir) == before, "nothing wrote into the recordings folder"


def test_an_injected_overflow_is_labelled_as_such(staged, recordings_dir, tmp_path):
    rec = load_run(
        publish(copy_of(staged["injected"], tmp_path / "stage"), recordings_dir, "cmd", "fp16 demo", MACHINE)
    )
    assert rec.provenance["injected_overflow_steps"] == [20]
    assert rec.provenance["label"] == "fp16 demo (overflow injected at steps 20)"
    assert "overflow injected" in summarize(rec)["provenance"]
    assert rec.metrics.skipped[20] == 1.0


def test_a_compare_group_of_recordings_is_comparable(staged, recordings_dir, tmp_path):
    for path in staged["compare"]:
        publish(
            copy_of(path, tmp_path / "stage"),
            recordings_dir,
            "python -m amp_core.compare --precisions 32-true,bf16-mixed",
            "compare",
            MACHINE,
        )
    (group,) = compare.list_groups(recordings_dir)
    assert group["group"] == staged["group"] and group["variants"] == ["32-true", "bf16-mixed"]
    summary = compare.summarize_group(compare.group_runs(recordings_dir, staged["group"]))
    assert summary["complete"] and [r["variant"] for r in summary["rows"]] == ["32-true", "bf16-mixed"]
    assert all(r["median_step_ms"] is not None for r in summary["rows"])


def test_publish_refuses_what_is_not_a_finished_run(staged, recordings_dir, tmp_path):
    with pytest.raises(RecordingError, match="not a run folder"):
        publish(tmp_path, recordings_dir, "cmd", "x", MACHINE)
    queued = RunWriter.create(tmp_path / "stage", {"precision": "32-true"})
    queued.set_status("queued")
    with pytest.raises(RecordingError, match="it is queued"):
        publish(queued.path, recordings_dir, "cmd", "x", MACHINE)
    done = publish(copy_of(staged["fp16"], tmp_path / "stage2"), recordings_dir, "cmd", "x", MACHINE)
    with pytest.raises(RecordingError, match="already a recording"):
        publish(done, tmp_path / "elsewhere", "cmd", "x", MACHINE)
    existed = REPO_RECORDINGS.exists()
    shipped = files_of(REPO_RECORDINGS) if existed else {}
    with pytest.raises(RecordingError, match="only GPU runs are shipped"):
        publish(copy_of(staged["fp16"], tmp_path / "stage3"), REPO_RECORDINGS, "cmd", "x", MACHINE)
    assert REPO_RECORDINGS.exists() == existed and (files_of(REPO_RECORDINGS) if existed else {}) == shipped


def test_missing_or_damaged_provenance_is_a_problem_not_a_crash(staged, recordings_dir):
    bare = copy_of(staged["fp16"], recordings_dir)  # a folder dropped into demo_runs/ by hand
    rec = load_run(bare)
    assert rec.recording and rec.provenance == {} and any("provenance.json is missing" in p for p in rec.problems)
    (bare / PROVENANCE_FILE).write_text("{not json")
    rec = load_run(bare)
    assert rec.recording and any("provenance.json is unreadable" in p for p in rec.problems)
    assert summarize(rec)["recording"] is True and summarize(rec)["provenance"] == ""
    (bare / PROVENANCE_FILE).write_text("[1, 2]")
    assert any("not a JSON object" in p for p in load_run(bare).problems)


def test_the_cli_publishes_and_lists(staged, recordings_dir, tmp_path):
    src = copy_of(staged["fp16"], tmp_path / "stage")
    cli = [sys.executable, "-m", "amp_core.record.recordings"]
    out = subprocess.run(
        [
            *cli,
            "publish",
            "--into",
            str(recordings_dir),
            "--command",
            "python -m amp_core.train",
            "--label",
            "cli",
            str(src),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(recordings_dir / src.name)
    provenance = json.loads((recordings_dir / src.name / PROVENANCE_FILE).read_text())
    assert (
        provenance["command"] == "python -m amp_core.train"
        and provenance["label"] == "cli"
        and provenance["cuda"] is None
    )
    listed = subprocess.run([*cli, "list", str(recordings_dir)], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert listed.returncode == 0 and src.name in listed.stdout and "cli" in listed.stdout
    bad = subprocess.run(
        [*cli, "publish", "--into", str(recordings_dir), "--command", "c", str(tmp_path / "nothing")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert bad.returncode == 2 and "not a run folder" in bad.stderr and "Traceback" not in bad.stderr


def test_reading_recordings_imports_no_torch():
    code = "import sys, amp_core.record.recordings, amp_core.record; amp_core.record.recordings.list_recordings(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


def test_the_shipped_recordings_folder_is_the_repositorys_demo_runs():
    from amp_core.record.recordings import REPO_RECORDINGS

    assert REPO_RECORDINGS == Path(__file__).resolve().parents[1] / "demo_runs"
