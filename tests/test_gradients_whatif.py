"""Gradient histograms, overflow injection, the scaler what-if and advice, on real CPU runs."""

import math

import numpy as np
import pytest
import torch

from amp_core.analysis.advice import advise
from amp_core.analysis.gradients import shares
from amp_core.analysis.scaler_policies import (
    HysteresisPolicy,
    OverflowModel,
    TorchGradScalerPolicy,
    overflow_model_for,
    replay_own_policy,
)
from amp_core.record import load_histograms, load_run
from amp_core.training.callbacks import LossScaleMonitor
from amp_core.training.cli import RunConfig, run


def _run(tmp_path_factory, **kw):
    d = tmp_path_factory.mktemp("runs")
    cfg = dict(precision="16-mixed", wandb="disabled", runs_dir=str(d))
    cfg.update(kw)
    return load_run(run(RunConfig(**cfg)).path)


@pytest.fixture(scope="module")
def backoff_run(tmp_path_factory):
    return _run(tmp_path_factory, max_steps=300, init_scale=2.0**40, growth_interval=10, histogram_every=50)


@pytest.fixture(scope="module")
def calm_run(tmp_path_factory):
    return _run(tmp_path_factory, max_steps=300, init_scale=2.0**24, growth_interval=50, seed=3)


def test_histogram_counts_known_proportions():
    grads = [
        torch.cat([torch.full((1000,), 2.0**-30), torch.full((3000,), -(2.0**-10) * 1.5)]),
        torch.cat([torch.zeros(500), torch.full((10,), float("inf")), torch.full((490,), 2.0**3)]),
    ]
    h = LossScaleMonitor()._histogram(grads, torch.tensor(0.0)).tolist()
    zeros, nonfinite, counts = h[0], h[1], h[2:]
    lo = LossScaleMonitor.LOG2_LO
    assert zeros == 500 and nonfinite == 10
    assert counts[-30 - lo] == 1000 and counts[-10 - lo] == 3000 and counts[3 - lo] == 490
    assert counts[0] == 500  # zeros land in the first bin (and are counted apart)
    hist = {
        "step": 0,
        "log2_lo": lo,
        "counts": [int(c) for c in counts],
        "zeros": int(zeros),
        "nonfinite": int(nonfinite),
    }
    total = 5000
    sh = shares(hist, 2.0**16)
    assert sh["values"] == total
    assert sh["zero"] == pytest.approx(500 / total)
    assert sh["underflow_unscaled"] == pytest.approx(1000 / total)  # 2^-30 < 2^-24
    assert sh["underflow_scaled"] == 0  # 2^-30 * 2^16 = 2^-14: normal
    assert sh["overflow_scaled"] == pytest.approx(490 / total)  # 2^3 * 2^16 > 65504
    assert shares(hist, 2.0**4)["underflow_scaled"] == pytest.approx(1000 / total)
    # An unscale by the loss scale (fused optimizers) shifts every bin down.
    shifted = LossScaleMonitor()._histogram(grads, torch.tensor(8.0)).tolist()[2:]
    assert shifted[-38 - lo] == 1000 and shifted[-18 - lo] == 3000


def test_runs_record_histograms(backoff_run):
    hists = load_histograms(backoff_run.path)
    assert [h["step"] for h in hists] == [0, 50, 100, 150, 200, 250]
    n_params = sum(
        p.numel() for p in __import__("amp_core.training.model", fromlist=["DemoMLP"]).DemoMLP().parameters()
    )
    assert all(sum(h["counts"]) + h["nonfinite"] == n_params for h in hists)
    assert hists[0]["nonfinite"] > 0  # step 0 overflowed at 2^40: the unscaled gradients hold inf
    assert hists[-1]["nonfinite"] == 0


def test_injection_gives_exactly_the_skipped_steps(tmp_path_factory):
    r = _run(tmp_path_factory, max_steps=50, init_scale=2.0**8, growth_interval=1000, inject_overflow=(5, 17, 30))
    assert r.metrics.step[r.metrics.skipped > 0].tolist() == [5, 17, 30]
    assert r.config["inject_overflow"] == [5, 17, 30]
    assert r.metrics.loss_scale[-1] == 2.0**8 / 8
    assert any("Injected overflows" in a.suggestion for a in advise(r))


@pytest.mark.parametrize("fixture", ["backoff_run", "calm_run"])
def test_whatif_replay_of_own_policy_agrees(fixture, request):
    r = request.getfixturevalue(fixture)
    model = overflow_model_for(r)
    replayed, agree = replay_own_policy(r.config, model, r.metrics.loss_scale)
    assert agree >= 0.95
    assert replayed.skipped_steps == pytest.approx(r.skipped_steps, abs=max(1, r.skipped_steps // 20))


def test_whatif_check_can_fail(backoff_run):
    """Gradients four times larger in the second half than recorded: the check must notice."""
    m = backoff_run.metrics
    g = m.grad_max.copy()
    g[len(g) // 2 :] *= 4
    model = OverflowModel(g, m.loss_scale, m.skipped > 0)
    _, agree = replay_own_policy(backoff_run.config, model, m.loss_scale)
    assert agree < 0.95


def test_torch_policy_matches_a_real_grad_scaler():
    overflow_steps = {0, 1, 2, 9, 10, 30}
    policy = TorchGradScalerPolicy(init_scale=2.0**10, growth_factor=2.0, backoff_factor=0.5, growth_interval=5)

    class Script:
        grad_max = np.zeros(40)

        def __call__(self, step, scale):
            return step in overflow_steps

    scales, skipped = policy.run(Script())
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_factor=2.0, backoff_factor=0.5, growth_interval=5)
    real = []
    for step in range(40):
        real.append(scaler.get_scale())
        opt.zero_grad()
        scaler.scale(p.sum() * (float("inf") if step in overflow_steps else 1.0)).backward()
        scaler.step(opt)
        scaler.update()
    assert scales.tolist() == real
    assert np.flatnonzero(skipped).tolist() == sorted(overflow_steps)


def test_hysteresis_policy_by_hand():
    class Script:
        grad_max = np.zeros(8)

        def __call__(self, step, scale):
            return step in (1, 2, 3)

    scales, skipped = HysteresisPolicy(
        init_scale=8.0, scale_factor=2.0, scale_window=3, hysteresis=2, min_scale=2.0
    ).run(Script())
    # step 1: first overflow is absorbed by hysteresis; 2 and 3 back off (8 -> 4 -> 2, floored at 2);
    # 3 clean steps after the last overflow (step 6) grow it again.
    assert scales.tolist() == [8, 8, 8, 4, 2, 2, 2, 4]
    assert skipped.tolist() == [False, True, True, True, False, False, False, False]


def test_whatif_refuses_runs_without_a_scaler(tmp_path_factory):
    r = _run(tmp_path_factory, precision="bf16-mixed", max_steps=10)
    with pytest.raises(ValueError, match="no loss scale"):
        overflow_model_for(r)
    assert advise(r)[0].finding == "No GradScaler in this run"


def test_advice_reads_the_initial_backoff(backoff_run):
    findings = {a.finding: a for a in advise(backoff_run)}
    lead = next(a for f, a in findings.items() if f.startswith("The initial scale was too high"))
    first_clean = int(np.argmin(backoff_run.metrics.skipped > 0))
    assert f"the first {first_clean} steps" in lead.finding
    assert f"2^{40 - first_clean}" in lead.suggestion
    assert math.log2(backoff_run.metrics.loss_scale[first_clean]) == 40 - first_clean
