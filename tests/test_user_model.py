"""Your own LightningModule through `python -m amp_core.train --model ... [--data ...] [--path ...]`.

The model file is tests/user_models/tiny_net.py (not a built-in model). Real Lightning runs on CPU;
every way the import or build can fail is one line on stderr, exit 2, and no run folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from amp_core.record import RunWriter, list_runs, load_run
from amp_core.training.cli import main, run
from amp_core.training.config import RunConfig
from amp_core.training.workloads import user_models_allowed
from tests.support.cli import PREFIX, cli_env, only_run, run_cli

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "tests" / "user_models"
FAST = ["--max-steps", "12", "--wandb", "disabled", "--accelerator", "cpu", "--path", str(MODELS)]


def test_cli_trains_the_users_module_in_fp16_with_the_monitor(tmp_path):
    runs_dir = tmp_path / "runs"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "amp_core.train",
            "--model",
            "tiny_net:TinyRegressor",
            "--precision",
            "16-mixed",
            "--init-scale",
            "1024",
            "--growth-interval",
            "4",
            *FAST,
        ],
        cwd=tmp_path,
        env=cli_env(runs_dir, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("completed: 12 steps at 16-mixed on cpu")
    r = only_run(runs_dir)
    assert r.state == "completed" and r.problems == []
    c = r.config
    assert c["workload"] == "user" and c["workload_settings"] == {
        "model": "tiny_net:TinyRegressor",
        "data": "",
        "path": str(MODELS),
    }
    assert c["model_class"] == "tiny_net.TinyRegressor" and c["data_source"] == "the model's train_dataloader"
    assert c["grad_scaler"] is True and c["autocast_dtype"] == "float16" and c["matmul_flops_per_step"] is None
    assert list(r.metrics.step) == list(range(12))
    assert r.metrics.loss_scale[0] == 1024 and r.metrics.loss_scale.max() > 1024, "4 clean steps grow the scale"
    assert (r.path / "histograms.jsonl").exists()


@pytest.mark.parametrize("data", ["tiny_net:make_loader", "tiny_net:PointsData"])
def test_data_from_a_callable_or_a_datamodule(runs_dir, data, capsys):
    assert main(["--model", "tiny_net:make_regressor", "--data", data, "--precision", "bf16-mixed", *FAST]) == 0, (
        capsys.readouterr().err
    )
    r = only_run(runs_dir)
    assert r.state == "completed" and len(r.metrics) == 12
    assert r.config["data_source"] == data and r.config["model_class"] == "tiny_net.TinyRegressor"


BAD = {
    "no such module": (["--model", "no_such_module_here:Net"], "no module named 'no_such_module_here'"),
    "module importing a missing package": (
        ["--model", "needs_missing_package:Net"],
        "importing 'needs_missing_package' failed: ModuleNotFoundError",
    ),
    "module raising on import": (
        ["--model", "import_fails:Net"],
        "raised RuntimeError: this module is broken on purpose",
    ),
    "no such attribute": (["--model", "tiny_net:Missing"], "has no attribute 'Missing'"),
    "a torch module": (["--model", "tiny_net:PlainModule"], "the class PlainModule, not a LightningModule subclass"),
    "a number": (["--model", "tiny_net:NUMBER"], "is an int, not a LightningModule"),
    "a callable returning a string": (["--model", "tiny_net:returns_a_string"], "gave a str, not a LightningModule"),
    "no data": (
        ["--model", "tiny_net:NoLoaderRegressor"],
        "no data: model 'tiny_net:NoLoaderRegressor' has no train_dataloader",
    ),
    "data that is not data": (
        ["--model", "tiny_net:NoLoaderRegressor", "--data", "tiny_net:NUMBER"],
        "no data: 'tiny_net:NUMBER' gave an int",
    ),
    "manual optimization": (
        ["--model", "tiny_net:ManualRegressor"],
        "manual optimization (automatic_optimization = False): the loss-scale monitor follows",
    ),
    "constructor raising": (
        ["--model", "tiny_net:BrokenInit"],
        "calling it raised ValueError: hidden must be positive",
    ),
    "not an import path": (["--model", "tiny_net.TinyRegressor"], "model must be pkg.module:attr"),
    "path not a folder": (
        ["--model", "tiny_net:TinyRegressor", "--path", "/no/such/folder"],
        "path '/no/such/folder' is not a folder",
    ),
    "model settings on another workload": (
        ["--workload", "gpt", "--model", "tiny_net:TinyRegressor"],
        "only for your own model",
    ),
    "user workload without a model": (["--workload", "user"], "needs --model"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_model_exits_2_with_one_line_and_no_folder(case, runs_dir, capsys):
    args, mention = BAD[case]
    argv = [*FAST, *args]  # a later --path wins
    assert main(argv) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(PREFIX) and mention in lines[0], captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    assert not runs_dir.exists() or list_runs(runs_dir) == []


def test_a_bad_model_as_a_subprocess_is_one_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "amp_core.train", "--model", "tiny_net:BrokenInit", *FAST],
        cwd=tmp_path,
        env=cli_env(tmp_path / "runs"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2 and out.stdout == ""
    assert (
        out.stderr.strip()
        == f"{PREFIX} model 'tiny_net:BrokenInit': calling it raised ValueError: hidden must be positive"
    )
    assert not (tmp_path / "runs").exists()


def test_a_queued_run_records_the_build_error_as_failed(runs_dir):
    """What the worker does for a run from the page: the record, not the server, gets the line."""
    writer = RunWriter.create(runs_dir, {"precision": "32-true"})
    writer.set_status("queued")
    config = RunConfig(
        workload="user",
        model="tiny_net:ManualRegressor",
        path=str(MODELS),
        precision="32-true",
        accelerator="cpu",
        wandb="disabled",
        runs_dir=str(runs_dir),
    )
    with pytest.raises(Exception, match="manual optimization"):
        run(config, writer)
    r = load_run(writer.path)
    assert (
        r.state == "failed" and "manual optimization" in r.status["error"] and len(r.status["error"].splitlines()) == 1
    )


def test_validating_a_user_config_imports_nothing():
    """The server validates what the page submits; only the worker imports the user's code."""
    sys.modules.pop("tiny_net", None)
    RunConfig(workload="user", model="tiny_net:TinyRegressor", data="tiny_net:make_loader", path=str(MODELS)).validate()
    assert "tiny_net" not in sys.modules


@pytest.mark.parametrize(
    "address, env, allowed",
    [
        ("127.0.0.1", {}, True),
        ("localhost", {}, True),
        ("::1", {}, True),
        ("[::1]", {}, True),
        ("127.0.0.2", {}, True),
        ("0.0.0.0", {}, False),
        ("", {}, False),  # Streamlit's default: every interface
        (None, {}, False),
        ("192.168.1.20", {}, False),
        ("example.org", {}, False),
        ("0.0.0.0", {"AMP_ALLOW_USER_MODELS": "1"}, True),
        ("0.0.0.0", {"AMP_ALLOW_USER_MODELS": "yes"}, False),
    ],
)
def test_user_models_are_offered_only_on_loopback_unless_allowed(address, env, allowed):
    ok, why = user_models_allowed(address, env)
    assert ok is allowed
    assert why and len(why.splitlines()) == 1
    if not allowed:
        assert "AMP_ALLOW_USER_MODELS=1" in why and "127.0.0.1" in why


def test_compare_runs_the_users_model_under_two_precisions(tmp_path):
    from amp_core.analysis.compare import group_runs

    runs_dir = tmp_path / "runs"
    args = ["--workload", "user", "--model", "tiny_net:TinyRegressor", "--path", str(MODELS)]
    args += "--precisions 32-true,bf16-mixed --max-steps 17 --accelerator cpu".split()
    out = run_cli(
        "amp_core.compare",
        [*args, "--runs-dir", str(runs_dir)],
        env=cli_env(runs_dir, OMP_NUM_THREADS="1"),
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    runs = group_runs(runs_dir, summary["group"])
    assert [r.precision for r in runs] == ["32-true", "bf16-mixed"]
    assert all(
        r.state == "completed" and r.config["model_class"] == "tiny_net.TinyRegressor" and len(r.metrics) == 17
        for r in runs
    )
