"""amp_core.train end to end: real CPU training through the CLI (a few subprocesses) and in-process.

The CLI runs are started together in one module fixture so their imports overlap; everything that
does not need a separate process calls `main()` or `run()` directly.
"""

from __future__ import annotations

import math
import os
import signal
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import amp_core.training.model
from amp_core.record import RunFollower, RunWriter, list_runs, load_run, request_stop, stop_requested, summarize
from amp_core.training import run_loop
from amp_core.training.cli import ConfigError, RunConfig, main, run
from amp_core.training.model import DemoMLP
from tests.support.cli import PREFIX, check_ended, metrics_lines, only_run, start_cli
from tests.support.processes import wait_until
from tests.support.scaler import check_scaler_rules

REPO = Path(__file__).resolve().parents[1]
HUGE = 1099511627776  # 2**40: the first fp16 steps overflow
GROWTH_INTERVAL = 10
SMALL = [
    "--hidden",
    "32",
    "--batch-size",
    "16",
    "--accelerator",
    "cpu",
]  # a fast model for runs that are not about the scale


# ---------------------------------------------------------------- CLI runs, started together


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
    """The CLI runs, two at a time (this may be a 2-core machine), torch single-threaded in each."""
    base = tmp_path_factory.mktemp("cli")
    (base / "file").write_text("a regular file")
    jobs = {
        "fp16": [
            "--precision",
            "16-mixed",
            "--init-scale",
            str(HUGE),
            "--growth-interval",
            str(GROWTH_INTERVAL),
            "--max-steps",
            "60",
            "--wandb",
            "offline",
            *SMALL,
        ],  # CPU even where CUDA is
        "bf16": ["--precision", "bf16", "--max-steps", "12", "--wandb", "disabled", *SMALL],
        "bad-precision": ["--precision", "17"],
        "runs-dir-under-file": ["--runs-dir", str(base / "file" / "runs")],
    }
    results, running = {}, []

    def finish(name, proc, runs_dir):
        out, err = proc.communicate(timeout=300)
        results[name] = (proc.returncode, out, err, runs_dir, proc.pid)

    for name, args in jobs.items():
        if len(running) == 2:
            finish(*running.pop(0))
        running.append((name, start_cli(args, base / name, OMP_NUM_THREADS="1"), base / name))
    for job in running:
        finish(*job)
    return results


def test_cli_fp16_run_records_real_backoffs(cli):
    rc, out, err, runs_dir, pid = cli["fp16"]
    assert rc == 0, err
    run = only_run(runs_dir)
    assert run.problems == [] and run.state == "completed"
    assert out.splitlines()[0].startswith("completed: 60 steps at 16-mixed on cpu")
    assert out.splitlines()[1] == str(run.path)

    rows = metrics_lines(run.path)
    assert [r["step"] for r in rows] == list(range(60))
    scale = np.array([r["loss_scale"] for r in rows], dtype=float)
    skipped = np.array([r["skipped"] for r in rows], dtype=bool)
    tracker = np.array([r["growth_tracker"] for r in rows], dtype=float)
    assert skipped[:15].all(), "2**40 must overflow fp16 gradients for many steps"
    assert (~skipped).sum() >= 2 * GROWTH_INTERVAL
    check_scaler_rules(scale, skipped, tracker, float(HUGE), GROWTH_INTERVAL)
    assert (np.diff(scale) > 0).any(), "growth after growth-interval clean steps"
    assert all(r["grad_norm"] is None for r, s in zip(rows, skipped) if s)  # inf/NaN is stored as null
    assert all(
        r["grad_norm"] is not None and 0 < r["grad_norm"] < 100 for r, s in zip(rows, skipped) if not s
    )  # unscaled
    assert run.skipped_steps == skipped.sum() and f"{skipped.sum()} skipped" in out
    assert run.final_loss_scale == scale[-1]

    c = run.config
    assert c["precision"] == "16-mixed" and c["precision_resolved"] == "16-mixed"
    assert "explicit MixedPrecision" in c["amp_path"] and "CPU GradScaler" in c["amp_path"]
    assert c["grad_scaler"] is True and c["autocast_dtype"] == "float16" and c["precision_plugin"] == "MixedPrecision"
    assert c["init_scale"] == HUGE and c["growth_interval"] == GROWTH_INTERVAL and c["max_steps"] == 60
    assert c["accelerator_resolved"] == "cpu" and c["runs_dir"] == str(runs_dir)
    assert (
        c["hardware"]["cuda"] is torch.cuda.is_available() and c["hardware"]["cpu_count"] >= 1 and c["hardware"]["host"]
    )
    assert c["versions"]["torch"] == torch.__version__ and {"python", "pytorch-lightning", "wandb", "numpy"} <= set(
        c["versions"]
    )
    check_ended(run.status, "completed")
    assert run.status["pid"] == pid and run.status["global_step"] == 60
    assert "warnings" not in run.status, run.status.get("warnings")


def test_cli_wandb_offline_run_lives_in_the_run_folder(cli):
    rc, _, err, runs_dir, _ = cli["fp16"]
    assert rc == 0, err
    run = only_run(runs_dir)
    offline = list((run.path / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and any(offline[0].glob("*.wandb"))
    assert not (Path(REPO) / "wandb").exists() or not any((Path(REPO) / "wandb").glob(f"*{run.id}*"))


@pytest.mark.parametrize("name, resolved, dtype", [("bf16", "bf16-mixed", "bfloat16"), ("32", "32-true", None)])
def test_cli_aliases_without_a_scaler(cli, name, resolved, dtype, runs_dir, capsys):
    if name in cli:  # a real subprocess
        rc, out, err, runs_dir, _ = cli[name]
    else:  # the same main() in this process: one subprocess fewer
        rc = main(["--precision", name, "--max-steps", "12", "--wandb", "disabled", *SMALL])
        out, err = capsys.readouterr()
    assert rc == 0, err
    run = only_run(runs_dir)
    assert run.state == "completed" and run.problems == []
    assert run.config["precision"] == resolved and run.config["precision_resolved"] == resolved
    assert run.config["grad_scaler"] is False and run.config["autocast_dtype"] == dtype
    rows = metrics_lines(run.path)
    assert [r["step"] for r in rows] == list(range(12))
    assert all(r["loss_scale"] is None and r["growth_tracker"] is None and r["skipped"] is False for r in rows)
    assert all(r["grad_norm"] is not None and r["loss"] is not None for r in rows)
    assert f"completed: 12 steps at {resolved} on cpu, 0 skipped, final loss scale none" in out


@pytest.mark.parametrize("name", ["bad-precision", "runs-dir-under-file"])
def test_cli_bad_input_exits_2_with_one_line(cli, name):
    rc, out, err, runs_dir, _ = cli[name]
    assert rc == 2, (out, err)
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(PREFIX), err
    assert out == ""
    assert not runs_dir.exists() or list(runs_dir.iterdir()) == []


# ---------------------------------------------------------------- bad input, in-process (same main())


BAD_INPUT = {
    "precision 17": (["--precision", "17"], "17"),
    "precision fp8": (["--precision", "fp8"], "fp8"),
    "negative steps": (["--max-steps", "-5"], "max-steps"),
    "zero steps": (["--max-steps", "0"], "max-steps"),
    "huge steps": (["--max-steps", str(10**12)], "max-steps"),
    "non-numeric steps": (["--max-steps", "ten"], "max-steps"),
    "fractional steps": (["--max-steps", "2.5"], "max-steps"),
    "non-numeric growth": (["--growth-factor", "fast"], "growth-factor"),
    "zero growth": (["--growth-factor", "0"], "growth-factor"),
    "non-numeric backoff": (["--backoff-factor", "half"], "backoff-factor"),
    "zero backoff": (["--backoff-factor", "0"], "backoff-factor"),
    "backoff 1.0": (["--backoff-factor", "1.0"], "backoff-factor"),
    "non-numeric init scale": (["--init-scale", "big"], "init-scale"),
    "zero init scale": (["--init-scale", "0"], "init-scale"),
    "nan init scale": (["--init-scale", "nan"], "init-scale"),
    "inf init scale": (["--init-scale", "inf"], "init-scale"),
    "zero growth interval": (["--growth-interval", "0"], "growth-interval"),
    "unknown accelerator": (["--accelerator", "tpu"], "accelerator"),
    "unknown wandb mode": (["--wandb", "sometimes"], "wandb"),
    "unknown option": (["--bogus", "1"], "--bogus"),
    "gpu without cuda": (["--accelerator", "gpu"], "CUDA"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_exits_2_before_any_folder(case, runs_dir, tmp_path, monkeypatch, capsys):
    args, mention = BAD_INPUT[case]
    if case == "gpu without cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    assert main([*args, "--max-steps", "3"] if "--max-steps" not in args else args) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(PREFIX) and mention in lines[0], captured.err
    assert captured.out == ""
    assert not runs_dir.exists(), "a run folder was made for an invalid configuration"


def test_wandb_online_without_credentials_falls_back_to_offline(runs_dir, tmp_path, monkeypatch, capsys):
    """Not an input error (any more): the run goes on, logs to W&B offline, and says so in its status."""
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / ".netrc"))
    assert main(["--wandb", "online", "--max-steps", "3", *SMALL]) == 0
    r = only_run(runs_dir)
    assert r.state == "completed"
    assert any("credentials" in w and "offline" in w for w in r.status.get("warnings", [])), r.status
    assert len(list((r.path / "wandb").glob("offline-run-*"))) == 1
    assert not list((r.path / "wandb").glob("run-*"))  # no online run folder


def test_unwritable_runs_dir_under_a_file(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["--runs-dir", str(blocker / "runs"), "--max-steps", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(PREFIX) and "runs directory" in err and len(err.splitlines()) == 1


@pytest.mark.skipif(os.geteuid() == 0, reason="running as root: chmod 0o500 does not stop root from writing")
def test_read_only_runs_dir(tmp_path, capsys):
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    try:
        assert main(["--runs-dir", str(d), "--max-steps", "2"]) == 2
        assert capsys.readouterr().err.startswith(PREFIX)
        assert list(d.iterdir()) == []
    finally:
        d.chmod(0o700)


def test_run_config_validate_normalises_and_refuses():
    assert RunConfig(precision="bf16").validate().precision == "bf16-mixed"
    assert RunConfig(precision="16").validate().precision == "16-mixed"
    c = RunConfig(max_steps=5.0, init_scale=1024).validate()
    assert c.max_steps == 5 and isinstance(c.max_steps, int) and isinstance(c.init_scale, float)
    for bad in (
        {"max_steps": True},
        {"max_steps": "5"},
        {"lr": float("nan")},
        {"depth": 0},
        {"seed": -1},
        {"backoff_factor": 1},
    ):
        with pytest.raises(ConfigError):
            RunConfig(**bad).validate()


# ---------------------------------------------------------------- in-process runs


def small_config(runs_dir, **kw) -> RunConfig:
    return RunConfig(
        **{
            "hidden": 32,
            "batch_size": 16,
            "max_steps": 10,
            "accelerator": "cpu",
            "wandb": "disabled",
            "runs_dir": str(runs_dir),
            **kw,
        }
    )


@pytest.mark.parametrize("precision", ["bf16-mixed", "32-true"])
def test_in_process_run_without_a_scaler(runs_dir, precision):
    writer = run(small_config(runs_dir, precision=precision))
    r = load_run(writer.path)
    assert r.state == "completed" and r.problems == []
    assert r.config["precision_resolved"] == precision and r.config["grad_scaler"] is False
    assert r.config["amp_path"] == f"Lightning precision={precision!r}"
    assert list(r.metrics.step) == list(range(10))
    assert np.isnan(r.metrics.loss_scale).all() and r.skipped_steps == 0 and r.final_loss_scale is None
    s = summarize(r)
    assert s["steps"] == 10 and s["max_steps"] == 10 and s["skipped"] == 0 and s["accelerator"] == "cpu"


@pytest.mark.parametrize("before", [None, "/a/run/folder/of/the/caller"])
def test_the_run_dir_variable_names_the_run_while_it_trains_and_is_put_back(runs_dir, monkeypatch, before):
    seen = []
    fit = run_loop.fit

    def recording_fit(*args, **kwargs):
        seen.append(os.environ.get(run_loop.RUN_DIR_ENV))  # what the processes Lightning launches inherit
        return fit(*args, **kwargs)

    monkeypatch.setattr(run_loop, "fit", recording_fit)
    if before is None:
        monkeypatch.delenv(run_loop.RUN_DIR_ENV, raising=False)
    else:
        monkeypatch.setenv(run_loop.RUN_DIR_ENV, before)
    writer = run(small_config(runs_dir, precision="32-true", max_steps=2))
    assert load_run(writer.path).state == "completed" and seen == [str(writer.path)]
    assert os.environ.get(run_loop.RUN_DIR_ENV) == before


def test_in_process_fp16_into_a_queued_record(runs_dir):
    writer = RunWriter.create(runs_dir, {"precision": "16-mixed", "label": "from the queue"})
    writer.set_status("queued", created_at="2024-01-01T00:00:00.000+00:00")
    config = small_config(runs_dir, precision="16", init_scale=2.0**30, growth_interval=3, max_steps=20)
    assert run(config, writer) is writer
    r = load_run(writer.path)
    assert r.state == "completed" and r.id == writer.id
    assert (
        r.config["label"] == "from the queue"
        and r.config["precision"] == "16-mixed"
        and r.config["grad_scaler"] is True
    )
    assert r.status["created_at"] == "2024-01-01T00:00:00.000+00:00"
    check_scaler_rules(r.metrics.loss_scale, r.metrics.skipped.astype(bool), r.metrics.growth_tracker, 2.0**30, 3)
    assert r.skipped_steps >= 1


def test_stop_request_stops_an_in_process_run(runs_dir):
    errors: list[BaseException] = []

    def target():
        try:
            run(small_config(runs_dir, precision="32-true", max_steps=100_000))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    wait_until(lambda: list_runs(runs_dir) or not thread.is_alive(), what="the run folder")
    path = list_runs(runs_dir)[0].path
    follower = RunFollower(path)
    wait_until(
        lambda: follower.poll() is not None and len(follower.metrics) >= 20 or not thread.is_alive(), what="20 steps"
    )
    assert thread.is_alive() and errors == [], f"the run ended early: {errors!r}, {load_run(path).status}"
    assert follower.state == "running"
    request_stop(path)
    thread.join(timeout=120)
    assert not thread.is_alive() and errors == []
    r = load_run(path)
    assert r.state == "stopped" and r.problems == [] and stop_requested(path)
    rows = metrics_lines(path)
    assert 20 <= len(rows) < 100_000
    assert [row["step"] for row in rows] == list(range(len(rows)))
    assert r.status["global_step"] == len(rows)
    check_ended(r.status, "stopped")


def test_sigterm_stops_a_cli_run(tmp_path):
    runs_dir = tmp_path / "runs"
    proc = start_cli(["--precision", "32-true", "--max-steps", "100000", "--wandb", "disabled", *SMALL], runs_dir)
    try:
        wait_until(
            lambda: (
                proc.poll() is not None
                or (list_runs(runs_dir) and len(load_run(list_runs(runs_dir)[0].path).metrics) >= 10)
            ),
            what="10 steps",
        )
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out.startswith("stopped:")
    r = only_run(runs_dir)
    assert r.state == "stopped" and r.problems == []
    rows = metrics_lines(r.path)
    assert 10 <= len(rows) < 100_000 and [row["step"] for row in rows] == list(range(len(rows)))
    check_ended(r.status, "stopped")


class FailingMLP(DemoMLP):
    """The demo model, failing in its training step at global step 7."""

    def training_step(self, batch, batch_idx):
        if self.trainer.global_step == 7:
            raise RuntimeError("injected failure at step 7")
        return super().training_step(batch, batch_idx)


def test_a_failing_training_step_is_recorded_as_failed(runs_dir, monkeypatch):
    monkeypatch.setattr(
        amp_core.training.model, "DemoMLP", FailingMLP
    )  # run() imports DemoMLP from amp_core.training.model
    with pytest.raises(RuntimeError, match="injected failure"):
        run(small_config(runs_dir, precision="16-mixed", init_scale=2.0**10, max_steps=50))
    r = only_run(runs_dir)
    assert r.state == "failed"
    assert r.status["error"] == "RuntimeError: injected failure at step 7"
    assert "training_step" in r.status["traceback"]
    check_ended(r.status, "failed")
    rows = metrics_lines(r.path)
    assert [row["step"] for row in rows] == list(range(7))
    assert all(row["loss_scale"] is not None and math.isfinite(row["loss"]) for row in rows)


def test_a_failing_run_exits_1_from_main(runs_dir, monkeypatch, capsys):
    monkeypatch.setattr(amp_core.training.model, "DemoMLP", FailingMLP)
    assert main(["--max-steps", "20", "--wandb", "disabled", *SMALL]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "amp_core.train: the run failed: RuntimeError: injected failure at step 7"
    assert only_run(runs_dir).state == "failed"
