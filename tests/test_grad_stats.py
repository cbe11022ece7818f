"""The monitor's gradient statistics: the CPU's host path against the device path, and the log2 histogram
by exponent bits against an exact reference (NumPy's frexp), then both paths on a real Lightning run."""

import json
import math

import numpy as np
import pytest
import torch

from amp_core.record import load_histograms, load_skips
from amp_core.training import grad_stats
from amp_core.training.callbacks import LossScaleMonitor
from amp_core.training.cli import RunConfig, run


def _grads(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(200, 100), (32,), (0,), (7, 3, 5), (1,)]
    return [(torch.randn(s, generator=g) * 10.0 ** torch.randint(-6, 4, s, generator=g)).to(dtype) for s in shapes]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_host_stats_agree_with_the_device_form(dtype):
    grads = _grads(dtype)  # an empty one among them
    norms, norm, gmax = grad_stats.device_stats(grads)
    host_norms, host_norm, host_max = grad_stats.host_stats(grads)
    assert host_norms == pytest.approx(norms.tolist(), rel=1e-5)
    assert host_norm == pytest.approx(float(norm), rel=1e-5)
    assert host_max == float(gmax) == max(float(g.abs().max()) for g in grads if g.numel())


def test_host_stats_say_nan_and_inf_as_they_are():
    grads = _grads()
    grads[1][3] = float("inf")
    norms, norm, gmax = grad_stats.host_stats(grads)
    assert math.isinf(norms[1]) and math.isinf(norm) and math.isinf(gmax)
    assert all(math.isfinite(n) for i, n in enumerate(norms) if i != 1)
    grads[3][0, 0, 0] = float("nan")  # NaN wins over inf, wherever it sits (Python's max would not say so)
    norms, norm, gmax = grad_stats.host_stats(grads)
    assert math.isnan(norms[3]) and math.isnan(norm) and math.isnan(gmax)
    assert grad_stats.host_stats([torch.zeros(0)]) == ([0.0], 0.0, 0.0)


def _reference(values: np.ndarray, shift: float = 0.0) -> list[int]:
    """[zeros, nonfinite, bins...] from NumPy's exact frexp: |x| = m * 2**e with m in [0.5, 1)."""
    a = np.abs(values.astype(np.float64)) / 2.0**shift
    out = [int((a == 0).sum()), int((~np.isfinite(a)).sum())] + [0] * grad_stats.BINS
    finite = a[np.isfinite(a)]
    _, e = np.frexp(finite)
    k = np.where(finite > 0, e - 1 - grad_stats.LOG2_LO, 0).clip(0, grad_stats.BINS - 1)
    for bin_, n in zip(*np.unique(k, return_counts=True)):
        out[2 + int(bin_)] += int(n)
    return out


def _edge_values(dtype):
    """Powers of two on both sides of every bin edge, zeros, a subnormal, inf, NaN, and values past the range."""
    k = torch.arange(-70, 40, dtype=torch.float64)
    exact = 2.0**k
    values = torch.cat([exact, -exact * 1.5, exact * (1 - 2.0**-20), torch.tensor([0.0, -0.0, 2.0**-140, 2.0**60])])
    values = values.to(dtype)
    if dtype.is_floating_point:
        values = torch.cat([values, torch.tensor([float("inf"), float("-inf"), float("nan")], dtype=dtype)])
    return values


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_histogram_bins_every_value_exactly(dtype):
    values = _edge_values(dtype)
    grads = [values[:50], values[50:].reshape(-1, 1)]
    got = grad_stats.histogram(grads, torch.tensor(0.0)).tolist()
    assert got == _reference(values.double().numpy())
    finite = int(torch.isfinite(values).sum())
    assert sum(got[2:]) == finite  # every finite value is in a bin: the first and last take what is outside


def test_histogram_unscales_by_any_scale():
    values = _edge_values(torch.float32)
    for shift in (8.0, -3.0, math.log2(3.0)):
        got = grad_stats.histogram([values], torch.tensor(shift)).tolist()
        assert got == _reference((values.double() / 2.0**shift).float().numpy())


def test_device_histogram_agrees_away_from_the_bin_edges():
    # log2 and histc (the CUDA form) land a value just below a power of two one bin up; elsewhere they agree
    g = torch.Generator().manual_seed(1)
    values = torch.randn(20_000, generator=g) * 10.0 ** torch.randint(-25, 12, (20_000,), generator=g)
    values[:100] = 0.0
    values[100:110] = float("inf")
    values[110:120] = 2.0**50
    assert grad_stats._log2_histogram([values], torch.tensor(0.0)).tolist() == _reference(values.double().numpy())


def _metrics(path):
    with open(path / "metrics.jsonl") as f:
        rows = [json.loads(line) for line in f]
    for r in rows:
        r.pop("time")
    return rows


@pytest.mark.parametrize("precision", ["32-true", "16-mixed"])
def test_the_host_path_records_what_the_device_path_records(tmp_path, monkeypatch, precision):
    """The same run (fixed seed) with the CPU's host path and with the device path (CUDA's, run here on
    the CPU): the same metrics, skips and histograms; 16-mixed starts at 2**40 so early steps skip."""
    config = dict(precision=precision, wandb="disabled", max_steps=40, histogram_every=10, init_scale=2.0**40)
    host = run(RunConfig(runs_dir=str(tmp_path / "host"), **config)).path
    monkeypatch.setattr(LossScaleMonitor, "_host_path", staticmethod(lambda device: False))
    device = run(RunConfig(runs_dir=str(tmp_path / "device"), **config)).path
    a, b = _metrics(host), _metrics(device)
    assert [r["step"] for r in a] == list(range(40)) == [r["step"] for r in b]
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            assert x[key] == pytest.approx(y[key], rel=1e-5), (x["step"], key)
    assert load_skips(host) == load_skips(device)
    assert (precision == "16-mixed") == bool(load_skips(host))
    assert load_histograms(host) == load_histograms(device)  # the MLP's gradients sit away from the bin edges
