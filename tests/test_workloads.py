"""Workloads and the configuration table: each built-in workload through the CLI (real CPU runs),
the gpt model's shape and data, and one table driving validation, CLI flags and widget bounds."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch

from amp_core.training import config as cfg
from amp_core.training.cli import config_from_args, parser
from amp_core.training.config import RULES, ConfigError, RunConfig, widget_bounds, workload_settings
from amp_core.training.workloads import WORKLOADS, workload_of
from tests.support.cli import cli_env, metrics_lines, only_run, run_cli, start_cli

REPO = Path(__file__).resolve().parents[1]
TINY_GPT = "--workload gpt --layers 1 --heads 2 --width 32 --context 16".split()


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """One short fp16 run of each built-in workload, two at a time."""
    base = tmp_path_factory.mktemp("workloads")
    jobs = {
        "mlp": ["--workload", "mlp", "--hidden", "32", "--batch-size", "16"],
        "gpt": [*TINY_GPT, "--batch-size", "8", "--histogram-every", "5"],
    }
    procs = {
        name: start_cli(
            [*args, "--max-steps", "15", "--accelerator", "cpu", "--wandb", "disabled"],
            base / name,
            OMP_NUM_THREADS="1",
        )
        for name, args in jobs.items()
    }
    return {name: (*p.communicate(timeout=600), p.returncode, base / name) for name, p in procs.items()}


@pytest.mark.parametrize("name", ["mlp", "gpt"])
def test_each_workload_trains_through_the_cli(cli_runs, name):
    out, err, rc, runs_dir = cli_runs[name]
    assert rc == 0, err
    assert out.startswith("completed: 15 steps at 16-mixed on cpu")
    r = only_run(runs_dir)
    assert r.state == "completed" and r.problems == []
    rows = metrics_lines(r.path)
    assert [row["step"] for row in rows] == list(range(15))
    assert all(row["loss"] is not None for row in rows)
    assert r.config["workload"] == name and r.config["grad_scaler"] is True
    assert r.config["workload_settings"] == {k: r.config[k] for k in workload_settings(name)}
    assert isinstance(r.config["matmul_flops_per_step"], int) and r.config["matmul_flops_per_step"] > 0


def test_gpt_record_notes_its_corpus_and_learns(cli_runs):
    from amp_core.training.workloads.corpus import stdlib_corpus

    r = only_run(cli_runs["gpt"][3])
    assert r.config["workload_settings"] == {"layers": 1, "heads": 2, "width": 32, "context": 16}
    corpus = r.config["corpus"]
    expected = stdlib_corpus()
    assert (
        corpus["sha256"] == expected.sha256
        and corpus["characters"] == len(expected.text)
        and corpus["files"] == len(expected.files)
    )
    assert corpus["train_characters"] + corpus["held_out_characters"] == corpus["characters"]
    assert r.config["model_class"] == "amp_core.training.workloads.gpt.CharGPT"
    loss = r.metrics.loss
    assert abs(loss[0] - np.log(corpus["vocab_size"])) < 0.5, "GPT-2's init starts near a uniform guess"
    assert loss[-3:].mean() < loss[:3].mean()
    assert len((r.path / "histograms.jsonl").read_text().splitlines()) >= 3


def test_records_without_a_workload_read_as_mlp():
    assert (
        workload_of({}) == "mlp"
        and workload_of({"workload": None}) == "mlp"
        and workload_of({"workload": "gpt"}) == "gpt"
    )


# ---------------------------------------------------------------- gpt: model and data


def test_gpt_is_causal_tied_and_counts_its_flops():
    from amp_core.training.workloads.gpt import CharGPT

    torch.manual_seed(0)
    m = CharGPT(vocab_size=50, layers=2, heads=4, width=32, context=16).eval()
    assert m.lm_head.weight is m.wte.weight
    x = torch.randint(0, 50, (2, 16))
    y = x.clone()
    y[:, 10:] = (y[:, 10:] + 1) % 50  # change only the future
    with torch.no_grad():
        assert torch.allclose(m(x)[:, :10], m(y)[:, :10], atol=1e-6)
        assert not torch.allclose(m(x)[:, 10:], m(y)[:, 10:])
    proj = m.blocks[0].attn.c_proj.weight.std().item()
    assert 0.5 < proj / (0.02 / np.sqrt(2 * 2)) < 1.5, "GPT-2's scaled init of the residual projections"
    n = sum(p.numel() for p in m.parameters()) - 16 * 32
    assert m.matmul_flops_per_step(8) == (6 * n + 12 * 2 * 32 * 16) * 16 * 8


def test_gpt_data_is_the_stdlib_split_by_seed():
    from amp_core.training.workloads.corpus import split, stdlib_corpus, window_loader

    corpus = stdlib_corpus()
    assert list(corpus.files) == sorted(corpus.files) and corpus.files[0].endswith(".py")
    a_train, a_held = split(corpus.ids, seed=0)
    b_train, _ = split(corpus.ids, seed=0)
    c_train, _ = split(corpus.ids, seed=1)
    assert torch.equal(a_train, b_train) and not torch.equal(a_train, c_train)
    assert len(a_train) + len(a_held) == len(corpus.ids) and 0.05 < len(a_held) / len(corpus.ids) < 0.15
    x, y = next(iter(window_loader(a_train, context=12, batch_size=4, batches=2, seed=0)))
    assert x.shape == (4, 12) and torch.equal(x[:, 1:], y[:, :-1])


# ---------------------------------------------------------------- one table: validation, flags, bounds


def test_every_field_has_one_rule_and_one_flag_with_help():
    assert [f.name for f in fields(RunConfig)] and {f.name for f in fields(RunConfig)} == set(RULES)
    actions = {a.dest: a for a in parser()._actions if a.option_strings and a.dest != "help"}
    assert set(actions) == {name for name, rule in RULES.items() if rule.flag}
    for name, action in actions.items():
        assert action.option_strings == ["--" + name.replace("_", "-")]
        assert RULES[name].help in action.help
        assert (action.nargs == 0) == (RULES[name].kind == "bool")
    for name in workload_settings("gpt"):
        assert "[gpt]" in actions[name].help
    assert set(workload_settings("gpt")) == {"layers", "heads", "width", "context"}
    assert set(workload_settings("mlp")) == {"hidden", "depth"} and set(workload_settings("user")) == {
        "model",
        "data",
        "path",
    }


@pytest.mark.parametrize("name", [n for n, r in RULES.items() if r.kind in ("int", "float")])
def test_widget_bounds_are_what_validation_accepts(name):
    b = widget_bounds(name)
    flag = "--" + name.replace("_", "-")
    for value in (b["min_value"], b["max_value"]):
        if name == "backoff_factor" and value == 1:
            continue  # the one bound that is refused itself (a scale that never drops)
        c = RunConfig(**{name: value}).validate()
        assert getattr(c, name) == value
    below = b["min_value"] - 1 if RULES[name].kind == "int" else (0.0 if RULES[name].lo_open else b["min_value"] - 1)
    for value in (below, b["max_value"] + 1 if RULES[name].kind == "int" else b["max_value"] * 2):
        with pytest.raises(ConfigError, match=flag[2:]):
            RunConfig(**{name: value}).validate()


def test_choices_come_from_the_table():
    assert widget_bounds("workload")["options"] == list(WORKLOADS)
    assert widget_bounds("accelerator")["options"] == list(cfg.ACCELERATORS)
    assert (
        widget_bounds("batch_size", "gpt")["value"]
        == WORKLOADS["gpt"].defaults["batch_size"]
        != widget_bounds("batch_size")["value"]
    )
    assert config_from_args(["--workload", "gpt"]).batch_size == widget_bounds("batch_size", "gpt")["value"]
    assert config_from_args(["--workload", "gpt", "--batch-size", "3"]).batch_size == 3
    assert config_from_args(["--model", "m:Net"]).workload == "user"
    with pytest.raises(ConfigError, match="heads must divide width"):
        RunConfig(workload="gpt", width=64, heads=3).validate()


def test_what_the_server_imports_stays_light():
    """The page side (config, workloads registry, the train CLI module) imports neither torch nor Lightning."""
    code = "import sys, amp_core.training.config, amp_core.training.workloads, amp_core.train; print(sorted(m for m in ('torch', 'pytorch_lightning') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=cli_env(REPO / "runs"), capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.replace("'", '"')) == []


def test_compare_passes_the_workload_through(tmp_path):
    from amp_core.analysis.compare import group_runs

    runs_dir = tmp_path / "runs"
    args = [*TINY_GPT, *"--batch-size 4 --precisions 32-true --max-steps 17 --accelerator cpu".split()]
    out = run_cli("amp_core.compare", [*args, "--runs-dir", str(runs_dir)], env=cli_env(runs_dir, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, out.stderr[-2000:]
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    (run,) = group_runs(runs_dir, summary["group"])
    assert run.config["workload"] == "gpt" and run.config["workload_settings"] == {
        "layers": 1,
        "heads": 2,
        "width": 32,
        "context": 16,
    }
    assert run.status["steps_per_s"] > 0 and summary["rows"][0]["state"] == "completed"


def test_the_scaler_expectation_follows_the_gradscaler_rule():
    from amp_core.analysis.advice import scaler_expectation

    def said(**c):
        return scaler_expectation(
            {"precision": "16-mixed", "max_steps": 300, "init_scale": 2.0**24, "growth_interval": 50, **c}
        )

    torch_defaults = said(init_scale=2.0**16, growth_interval=2000)
    assert (
        torch_defaults.startswith("With growth interval 2000")
        and "within 300 steps it cannot grow" in torch_defaults
        and "2^16" in torch_defaults
    )
    assert "at most 6 times in 300 steps" in said()
    assert "at most 1 time in 60 steps" in said(max_steps=60)
    assert scaler_expectation({"precision": "bf16-mixed", "max_steps": 300}) is None
