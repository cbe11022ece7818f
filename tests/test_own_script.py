"""Runs recorded from your own script: the README's script as a subprocess, and RunRecordLogger's
states (failed when fit raises, stopped by the app's Stop, a RunWriter still accepted)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import pytorch_lightning as pl

from amp_core import LossScaleMonitor, RunRecordLogger, fp16_mixed
from amp_core.record import RunFollower, RunWriter, list_runs, load_run, request_stop
from amp_core.training.model import DemoMLP, synthetic_loader
from tests.support.cli import check_ended, cli_env, only_run
from tests.support.readme import readme_script


def test_the_readme_script_is_short_and_complete():
    lines = [line for line in readme_script().splitlines() if line.strip()]
    assert len(lines) <= 12, lines
    assert "RunRecordLogger(" in readme_script() and "LossScaleMonitor(" in readme_script()


def test_the_readme_script_makes_a_record_that_is_live_then_complete(tmp_path):
    script = tmp_path / "my_script.py"
    script.write_text(readme_script())
    runs_dir = tmp_path / "runs"
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=cli_env(runs_dir, OMP_NUM_THREADS="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen_running: list[int] = []  # metrics counts seen while the record said 'running'
    follower = None
    try:
        deadline = time.monotonic() + 600
        while proc.poll() is None and time.monotonic() < deadline:
            if follower is None and list_runs(runs_dir):
                follower = RunFollower(list_runs(runs_dir)[0].path)
            if follower is not None:
                follower.poll()
                if follower.state == "running":
                    seen_running.append(len(follower.metrics))
            time.sleep(0.05)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    assert len(set(seen_running)) >= 2, (
        f"the record was not seen growing while running: {sorted(set(seen_running))[:5]}"
    )
    r = only_run(runs_dir)
    assert r.state == "completed" and r.problems == [], (r.status, r.problems)
    check_ended(r.status, "completed")
    assert list(r.metrics.step) == list(range(300)) and r.status["global_step"] == 300
    c = r.config
    assert c["label"] == "my-script" and c["model_class"] == "amp_core.training.model.DemoMLP" and c["max_steps"] == 300
    assert c["precision"] == "16-mixed" and c["precision_plugin"] == "MixedPrecision" and c["grad_scaler"] is True
    assert c["init_scale"] == 2**16 and c["growth_interval"] == 2000 and c["accelerator"] == "cpu"
    assert c["hardware"]["cpu_count"] >= 1 and "torch" in c["versions"]
    assert r.final_loss_scale == 2**16 and (r.path / "histograms.jsonl").read_text().count("\n") == 12


class FailsAtStep5(DemoMLP):
    def training_step(self, batch, batch_idx):
        if self.trainer.global_step == 5:
            raise RuntimeError("broken at step 5")
        return super().training_step(batch, batch_idx)


class StopsItselfAtStep8(DemoMLP):
    """Asks for a stop the way the app's Stop button does (the stop file), then keeps training."""

    def training_step(self, batch, batch_idx):
        if self.trainer.global_step == 8:
            request_stop(self.trainer.loggers[0].writer.path)
        return super().training_step(batch, batch_idx)


def fit(model, runs_dir, steps=30, logger=None):
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        logger=logger or RunRecordLogger(runs_dir, name="in-process"),
        callbacks=[LossScaleMonitor()],
        plugins=[fp16_mixed("cpu", init_scale=2.0**10, growth_interval=5)],
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    trainer.fit(model, synthetic_loader(batch_size=16, batches=10))


def test_a_fit_that_raises_is_recorded_as_failed_with_its_error(tmp_path):
    with pytest.raises(RuntimeError, match="broken at step 5"):
        fit(FailsAtStep5(hidden=32), tmp_path / "runs")
    r = only_run(tmp_path / "runs")
    assert r.state == "failed" and r.status["error"] == "RuntimeError: broken at step 5"
    assert "training_step" in r.status["traceback"] and r.status["global_step"] == 5
    check_ended(r.status, "failed")
    assert list(r.metrics.step) == list(range(5)) and r.config["growth_interval"] == 5


def test_the_apps_stop_ends_a_script_run_as_stopped(tmp_path):
    fit(StopsItselfAtStep8(hidden=32), tmp_path / "runs", steps=1000)
    r = only_run(tmp_path / "runs")
    assert r.state == "stopped" and 9 <= len(r.metrics) < 1000
    check_ended(r.status, "stopped")


def test_default_folder_is_amp_runs_dir_and_checkpoints_stay_in_the_run(runs_dir):
    fit(DemoMLP(hidden=32), None, steps=12)
    r = only_run(runs_dir)
    assert r.state == "completed" and r.config["label"] == "in-process"
    assert [p.name for p in runs_dir.iterdir()] == [r.id], "Lightning's checkpoints go inside the run's folder"


def test_a_runwriter_is_still_accepted_and_its_state_left_to_its_owner(tmp_path):
    writer = RunWriter.create(tmp_path / "runs", {"precision": "16-mixed", "label": "mine"})
    writer.set_status("running")
    fit(DemoMLP(hidden=32), None, steps=6, logger=RunRecordLogger(writer))
    r = load_run(writer.path)
    assert r.status["state"] == "running" and len(r.metrics) == 6 and r.config["label"] == "mine"
