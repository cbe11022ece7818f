"""What is refused before a run starts, what a failed run says about its precision, and the small chart helpers."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from amp_core.analysis.advice import scaler_expectation
from amp_core.charts import _log10_ticks, grad_norm_figure, short_label
from amp_core.training.cli import ConfigError, RunConfig
from amp_core.training.preflight import absent_accelerator, failure_hint, missing_precision_package, precision_risk

ROOT = Path(__file__).resolve().parents[1]
TE_MISSING = importlib.util.find_spec("transformer_engine") is None


@pytest.mark.skipif(not TE_MISSING, reason="transformer_engine is installed here")
@pytest.mark.parametrize("precision", ["transformer-engine", "transformer-engine-float16"])
def test_missing_package_is_refused_in_validate(precision):
    assert "transformer_engine" in missing_precision_package(precision)
    with pytest.raises(ConfigError, match="needs the `transformer_engine` package"):
        RunConfig(precision=precision).validate()


@pytest.mark.skipif(not TE_MISSING, reason="transformer_engine is installed here")
def test_cli_refuses_a_missing_package_with_one_line_and_exit_2(tmp_path):
    env = dict(os.environ, WANDB_MODE="offline")
    out = subprocess.run([sys.executable, "-m", "amp_core.train", "--precision", "transformer-engine", "--runs-dir", str(tmp_path)],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)  # fmt: skip
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith("amp_core.train")]
    assert lines == [f"amp_core.train: error: {missing_precision_package('transformer-engine')}"], out.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []  # no run folder


def test_other_precisions_need_nothing_more():
    for precision in ("16-mixed", "bf16-mixed", "32-true", "16-true", "64-true"):
        assert missing_precision_package(precision) is None


def test_absent_accelerator():
    assert "needs a CUDA GPU" in absent_accelerator("gpu", 0)
    assert absent_accelerator("gpu", None) is None  # not known yet: the worker decides
    assert (
        absent_accelerator("gpu", 1) is None
        and absent_accelerator("cpu", 0) is None
        and absent_accelerator("auto", 0) is None
    )


def test_16_true_risk_and_failure_hint():
    assert "commonly diverges" in precision_risk("16-true")
    assert precision_risk("16-mixed") is None
    hint = failure_hint("16-true", FloatingPointError("the loss has been NaN or inf for 25 steps in a row"))
    assert hint.startswith(". Precision 16-true is the likely reason")
    assert failure_hint("16-mixed", FloatingPointError("NaN")) == ""
    assert failure_hint("16-true", RuntimeError("injected fault: the training step raised at step 10")) == ""


def test_scaler_expectation():
    torch_defaults = scaler_expectation(
        {"precision": "16-mixed", "max_steps": 300, "growth_interval": 2000, "init_scale": 2.0**16}
    )
    assert "within 300 steps it cannot grow" in torch_defaults and "may never overflow" in torch_defaults
    demo = scaler_expectation({"precision": "16-mixed", "max_steps": 300, "growth_interval": 50, "init_scale": 2.0**24})
    assert "at most 6 times in 300 steps" in demo and "likely to overflow" in demo
    assert scaler_expectation({"precision": "bf16-mixed", "max_steps": 300}) is None


def test_log_ticks_are_written_in_full():
    for lo, hi in [(0.15, 1.2), (0.18, 0.23), (1e-3, 30), (1e-9, 1e5), (0.5, 0.5)]:
        vals, text = _log10_ticks(lo, hi)
        assert vals and len(set(text)) == len(text), (lo, hi, text)  # no two ticks read alike
        assert all(float(t) == pytest.approx(v, rel=1e-3) for v, t in zip(vals, text)), text
        assert any(lo / 1.5 <= v <= hi * 1.5 for v in vals)
    assert _log10_ticks(0.15, 1.2)[1] == ["0.1", "0.2", "0.3", "0.5", "1"]


def test_grad_norm_axis_uses_those_ticks():
    import numpy as np

    from amp_core.record import RunMetrics

    n = 10
    m = RunMetrics.from_rows(
        [
            {"step": i, "loss": 1.0, "loss_scale": None, "skipped": False, "grad_norm": 0.1 * (i + 1), "time": float(i)}
            for i in range(n)
        ]
    )
    fig = grad_norm_figure([("a", m)])
    assert fig.layout.yaxis.type == "log"
    assert list(fig.layout.yaxis.ticktext) == _log10_ticks(0.1, 1.0)[1]
    assert np.asarray(fig.data[0].y).max() == pytest.approx(1.0)


def test_short_label():
    assert short_label("20261202-010709-16-mixed-4bb0ee") == "16-mixed 4bb0ee"
    assert short_label("my-run") == "my-run"
