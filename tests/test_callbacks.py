"""AmpWandbCallback (the seed's contract) and LossScaleMonitor, with real Lightning runs on the CPU.

Nothing of torch or Lightning is mocked: fp16 runs use Lightning's MixedPrecision plugin with a real
CPU GradScaler, so overflow, backoff and growth happen for real. Only W&B is replaced, by a stub
module that records what the callback sends (plus one run against the real W&B in offline mode).
"""

from __future__ import annotations

import json
import math
import sys
import time
import types
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.plugins import MixedPrecision
from pytorch_lightning.utilities.exceptions import MisconfigurationException

from amp_core.training.callbacks import FP16_PRECISIONS, AmpWandbCallback, LossScaleMonitor, get_loss_scale, get_scaler
from amp_core.training.model import DemoMLP, synthetic_loader
from tests.support.cuda import sync_checked
from tests.support.loggers import MemoryLogger
from tests.support.scaler import check_scaler_rules

HUGE_SCALE = 2.0**40  # the first ~20 fp16 steps overflow at this scale
GROWTH_INTERVAL = 5
STEPS = 40

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


# ---------------------------------------------------------------- helpers


class IndependentGradNorm(Callback):
    """Computes the gradient norm its own way (float64, no foreach) next to the monitor, with the scale."""

    def __init__(self):
        self.seen: list[dict] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        grads = [p.grad.double() for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        total = sum(float(g.pow(2).sum()) for g in grads)
        scaler = get_scaler(trainer)
        self.seen.append(
            {
                "step": trainer.global_step,
                "raw_norm": math.sqrt(total),
                "raw_max": max(float(g.abs().max()) for g in grads),
                "scale": float(scaler.get_scale()) if scaler is not None else None,
            }
        )


def precision_kwargs(
    precision: str, device: str = "cpu", init_scale: float = HUGE_SCALE, growth_interval: int = GROWTH_INTERVAL
) -> dict:
    if precision == "16-mixed":
        scaler = torch.amp.GradScaler(device, init_scale=init_scale, growth_interval=growth_interval)
        return {"plugins": [MixedPrecision("16-mixed", device, scaler=scaler)]}
    return {"precision": precision}


def fit(
    precision: str,
    steps: int = STEPS,
    fused: bool = False,
    callbacks=(),
    logger=None,
    monitor=None,
    accelerator="cpu",
    seed=0,
    batches=8,
    init_scale=HUGE_SCALE,
    growth_interval=GROWTH_INTERVAL,
    **trainer_kwargs,
):
    """One short real training run; returns (trainer, logger, monitor)."""
    pl.seed_everything(seed, verbose=False)
    logger = MemoryLogger() if logger is None else logger
    monitor = LossScaleMonitor() if monitor is None else monitor
    device = "cuda" if accelerator == "gpu" else "cpu"
    kwargs = {**precision_kwargs(precision, device, init_scale, growth_interval), **trainer_kwargs}
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=1,
        max_steps=steps,
        max_epochs=-1,
        logger=logger,
        callbacks=[monitor, *callbacks],
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        **kwargs,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(DemoMLP(hidden=32, depth=2, fused=fused), synthetic_loader(16, batches, seed=seed))
    return trainer, logger, monitor


def columns(records: list[tuple[int, dict]]) -> dict[str, np.ndarray]:
    keys = sorted({k for _, m in records for k in m})
    out = {"step": np.array([s for s, _ in records])}
    for k in keys:
        out[k] = np.array([m.get(k, np.nan) for _, m in records], dtype=float)
    return out


# ---------------------------------------------------------------- the seed contract: AmpWandbCallback


class FakeScaler:
    def __init__(self, value=1024.0, error=None):
        self.value, self.error = value, error

    def get_scale(self):
        if self.error:
            raise self.error
        return self.value


def bare_trainer(scaler=None, epoch=3, plugin=True):
    strategy = SimpleNamespace(precision_plugin=SimpleNamespace(scaler=scaler)) if plugin else SimpleNamespace()
    return SimpleNamespace(strategy=strategy, current_epoch=epoch)


@pytest.fixture
def wandb_stub(monkeypatch):
    stub = types.ModuleType("wandb")
    stub.calls = []
    stub.run = object()

    def log(payload, *args, **kwargs):
        stub.calls.append((dict(payload), args, kwargs))

    stub.log = log
    monkeypatch.setitem(sys.modules, "wandb", stub)
    return stub


def test_callback_keeps_its_arguments():
    cb = AmpWandbCallback(enabled=True, precision="16-mixed")
    assert cb.enabled is True and cb.precision == "16-mixed"
    cb = AmpWandbCallback(False, "bf16-mixed")
    assert cb.enabled is False and cb.precision == "bf16-mixed"
    with pytest.raises(MisconfigurationException):
        AmpWandbCallback(True, "16-mixed", log_every_n_steps=0)


@pytest.mark.parametrize(
    "enabled, precision, has_scale",
    [
        (True, "16", True),
        (True, "16-mixed", True),
        (True, "16_true", True),
        (True, "bf16", False),
        (True, "bf16-mixed", False),
        (True, "32", False),
        (False, "16-mixed", False),
        (False, "16", False),
    ],
)
def test_epoch_end_payload(wandb_stub, enabled, precision, has_scale):
    assert set(FP16_PRECISIONS) == {"16", "16-mixed", "16_true"}
    AmpWandbCallback(enabled, precision).on_train_epoch_end(bare_trainer(FakeScaler(4096.0)), None)
    assert len(wandb_stub.calls) == 1
    payload, args, kwargs = wandb_stub.calls[0]
    assert args == () and kwargs == {}  # never an explicit step=
    assert payload["amp/enabled"] == (1 if enabled else 0)
    assert payload["amp/precision"] == precision
    assert payload["epoch"] == 3
    if has_scale:
        assert payload["amp/loss_scale"] == 4096.0 and isinstance(payload["amp/loss_scale"], float)
    else:
        assert "amp/loss_scale" not in payload


@pytest.mark.parametrize(
    "trainer",
    [
        bare_trainer(None),
        bare_trainer(plugin=False),
        SimpleNamespace(current_epoch=0),
        bare_trainer(FakeScaler(error=RuntimeError("boom"))),
    ],
)
def test_no_loss_scale_when_there_is_none_to_read(wandb_stub, trainer):
    AmpWandbCallback(True, "16-mixed").on_train_epoch_end(trainer, None)
    payload = wandb_stub.calls[0][0]
    assert "amp/loss_scale" not in payload and payload["amp/enabled"] == 1


def test_get_loss_scale():
    assert get_loss_scale(SimpleNamespace()) is None
    assert get_loss_scale(bare_trainer(plugin=False)) is None
    assert get_loss_scale(bare_trainer(None)) is None
    assert get_loss_scale(bare_trainer(FakeScaler(error=RuntimeError("no")))) is None
    assert get_loss_scale(bare_trainer(FakeScaler(error=ValueError("no")))) is None
    for value in (0.0, 1e10, 1e-10, 65536.0):
        got = get_loss_scale(bare_trainer(FakeScaler(value)))
        assert got == value and isinstance(got, float)
    assert get_loss_scale(bare_trainer(FakeScaler(torch.tensor(512.0)))) == 512.0  # any object with get_scale()
    real = torch.amp.GradScaler("cpu", init_scale=2.0**13)
    assert get_loss_scale(bare_trainer(real)) == 8192.0


def test_wandb_absent_inactive_or_failing_never_raises(monkeypatch, wandb_stub):
    cb = AmpWandbCallback(True, "16-mixed")
    trainer = bare_trainer(FakeScaler(8.0))

    monkeypatch.setitem(sys.modules, "wandb", None)  # `import wandb` fails
    cb.on_train_epoch_end(trainer, None)

    monkeypatch.setitem(sys.modules, "wandb", wandb_stub)
    wandb_stub.run = None  # no active run: nothing is logged
    cb.on_train_epoch_end(trainer, None)
    assert wandb_stub.calls == []

    wandb_stub.run = object()

    def failing_log(*args, **kwargs):
        raise RuntimeError("W&B is down")

    wandb_stub.log = failing_log
    with pytest.warns(UserWarning, match="W&B is down") as record:
        cb.on_train_epoch_end(trainer, None)
        cb.on_train_epoch_end(trainer, None)
    assert len([w for w in record if "W&B" in str(w.message)]) == 1  # warned once, not every step


def test_wandb_steps_are_monotonic_in_a_real_run(wandb_stub):
    cb = AmpWandbCallback(enabled=True, precision="16-mixed", log_every_n_steps=1)
    batches, steps = 4, 14  # 3 full epochs and part of a fourth
    trainer, _, _ = fit("16-mixed", steps=steps, callbacks=[cb], batches=batches)
    calls = wandb_stub.calls
    assert calls
    assert all(args == () and "step" not in kwargs for _, args, kwargs in calls), (
        "an explicit step= was passed to wandb.log"
    )
    per_step = [p for p, _, _ in calls if "amp/precision" not in p]
    epoch_end = [p for p, _, _ in calls if "amp/precision" in p]
    epochs = math.ceil(steps / batches)  # Lightning ends the last, partial epoch too when max_steps is reached
    assert [p["epoch"] for p in epoch_end] == list(range(epochs))
    assert [p["trainer/global_step"] for p in epoch_end] == [min((e + 1) * batches, steps) for e in range(epochs)]
    per_step_steps = [p["trainer/global_step"] for p in per_step]
    assert per_step_steps == list(range(1, steps + 1))  # every optimizer step, strictly increasing
    all_steps = [p["trainer/global_step"] for p, _, _ in calls]
    assert all(a <= b for a, b in zip(all_steps, all_steps[1:])), f"W&B x-axis goes back: {all_steps}"
    epoch_end_positions = [i for i, (p, _, _) in enumerate(calls) if "amp/precision" in p]
    for e, i in enumerate(epoch_end_positions):  # each epoch end comes right after that epoch's last step
        assert calls[i - 1][0]["trainer/global_step"] == epoch_end[e]["trainer/global_step"]
    # the per-step scale is the real one: halves on overflow from the huge initial scale
    scales = np.array([p["amp/loss_scale"] for p in per_step])
    assert scales[0] == HUGE_SCALE / 2 and np.all(np.log2(scales) == np.round(np.log2(scales)))
    assert [p["amp/loss_scale"] for p in epoch_end] == [scales[p["trainer/global_step"] - 1] for p in epoch_end]
    assert per_step[-1]["amp/loss_scale"] == trainer.strategy.precision_plugin.scaler.get_scale()


def test_real_wandb_offline_run(tmp_path, monkeypatch):
    import wandb
    from pytorch_lightning.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    save_dir = tmp_path / "wb"
    save_dir.mkdir()
    try:
        wandb_logger = WandbLogger(offline=True, save_dir=str(save_dir), project="amp-explorer-tests")
        cb = AmpWandbCallback(enabled=True, precision="16-mixed", log_every_n_steps=2)
        trainer, _, _ = fit("16-mixed", steps=8, callbacks=[cb], logger=[wandb_logger, MemoryLogger()], batches=4)
        assert trainer.state.finished and trainer.global_step == 8
        assert wandb.run is not None
    finally:
        wandb.finish()
    assert wandb.run is None
    folders = list((save_dir / "wandb").glob("offline-run-*"))
    assert len(folders) == 1
    # W&B's service process may still be writing the run file when finish() returns on a busy machine
    deadline = time.monotonic() + 60
    while True:
        data = b"".join(p.read_bytes() for p in folders[0].glob("*.wandb"))
        if (b"amp/precision" in data and b"amp/grad_norm" in data) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert b"amp/precision" in data and b"amp/loss_scale" in data and b"amp/grad_norm" in data, f"{len(data)} bytes"


# ---------------------------------------------------------------- LossScaleMonitor on real CPU runs


@pytest.fixture(scope="module")
def fp16_run():
    grads = IndependentGradNorm()
    _, logger, _ = fit("16-mixed", callbacks=[grads])
    return logger.monitor_records(), grads.seen


@pytest.fixture(scope="module")
def fp16_fused_run():
    grads = IndependentGradNorm()
    _, logger, _ = fit("16-mixed", fused=True, callbacks=[grads])
    return logger.monitor_records(), grads.seen


@pytest.fixture(scope="module")
def fp32_run():
    grads = IndependentGradNorm()
    _, logger, _ = fit("32-true", callbacks=[grads], monitor=LossScaleMonitor(grad_max=True))
    return logger.monitor_records(), grads.seen


@pytest.fixture(scope="module")
def bf16_run():
    _, logger, _ = fit("bf16-mixed")
    return logger.monitor_records()


def test_one_record_per_optimizer_step(fp16_run):
    records, _ = fp16_run
    assert [s for s, _ in records] == list(range(STEPS))
    assert all(set(m) == set(LossScaleMonitor.KEYS) for _, m in records)


def test_fp16_backoff_and_growth_follow_the_scaler(fp16_run):
    c = columns(fp16_run[0])
    skipped = c["amp/skipped"]
    assert set(np.unique(skipped)) <= {0.0, 1.0}
    assert skipped[0] == 1.0 and skipped[:10].all(), "the huge initial scale must overflow at once"
    assert (skipped == 0).sum() >= 2 * GROWTH_INTERVAL, "the run must reach clean steps to show growth"
    check_scaler_rules(c["amp/loss_scale"], skipped.astype(bool), c["amp/growth_tracker"], HUGE_SCALE, GROWTH_INTERVAL)
    grew = np.flatnonzero(np.diff(c["amp/loss_scale"]) > 0)
    assert len(grew) >= 1, "no growth seen: make the run longer"
    # skipped steps have no finite gradient norm; clean ones do
    assert not np.isfinite(c["amp/grad_norm"][skipped == 1]).any()
    assert np.isfinite(c["amp/grad_norm"][skipped == 0]).all()
    assert np.isfinite(c["amp/loss"]).all()


def test_check_scaler_rules_catches_a_wrong_record():
    scale = np.array([8.0, 4.0, 4.0, 4.0, 8.0])
    skipped = np.array([True, False, False, False, False])
    tracker = np.array([0, 1, 2, 0, 1])
    check_scaler_rules(scale, skipped, tracker, 8.0, 3)
    with pytest.raises(AssertionError):
        check_scaler_rules(scale, skipped, tracker, 8.0, 2)  # grew too late
    with pytest.raises(AssertionError):
        check_scaler_rules(np.array([8.0, 8.0, 8.0, 8.0, 16.0]), skipped, tracker, 8.0, 3)  # no backoff on the skip
    with pytest.raises(AssertionError):
        check_scaler_rules(np.array([8.0, 4.0, 4.0, 4.0, 12.0]), skipped, tracker, 8.0, 3)  # not a power of two


def test_fp16_grad_norm_is_unscaled(fp16_run, fp32_run):
    records, seen = fp16_run
    c = columns(records)
    assert [s["step"] for s in seen] == list(range(STEPS))
    clean = np.flatnonzero(c["amp/skipped"] == 0)
    for i in clean:
        # Lightning unscaled the gradients before on_before_optimizer_step: the raw norm is the true one
        assert c["amp/grad_norm"][i] == pytest.approx(seen[i]["raw_norm"], rel=1e-4)
        assert c["amp/grad_max"][i] == pytest.approx(seen[i]["raw_max"], rel=1e-6)
    fp32 = columns(fp32_run[0])
    # the same model and data in fp32: norms of the same order, not multiplied by a scale of 2**19 or so
    ratio = c["amp/grad_norm"][clean] / fp32["amp/grad_norm"][clean]
    assert np.all((ratio > 0.2) & (ratio < 5)), ratio
    assert np.all(c["amp/loss_scale"][clean] > 1e3)  # so a scaled norm would be far outside that band


def test_fp32_grad_norm_matches_an_independent_computation(fp32_run):
    records, seen = fp32_run
    c = columns(records)
    assert len(seen) == len(c["step"]) == STEPS
    assert c["amp/grad_norm"] == pytest.approx([s["raw_norm"] for s in seen], rel=1e-5)
    assert c["amp/grad_max"] == pytest.approx([s["raw_max"] for s in seen], rel=1e-6)
    assert np.all(c["amp/grad_max"] <= c["amp/grad_norm"])
    assert np.all(c["amp/grad_norm"] > 0)


def test_without_a_scaler_the_largest_gradient_is_taken_only_when_asked(fp32_run, bf16_run):
    # bf16_run: the default (None), no GradScaler -> no second pass over the gradients, no amp/grad_max
    assert all("amp/grad_max" not in m and math.isfinite(m["amp/grad_norm"]) for _, m in bf16_run)
    assert all(math.isfinite(m["amp/grad_max"]) for _, m in fp32_run[0])  # grad_max=True


def test_grad_max_false_leaves_it_out_even_with_a_scaler():
    _, logger, _ = fit("16-mixed", steps=6, monitor=LossScaleMonitor(grad_max=False))
    records = logger.monitor_records()
    assert len(records) == 6 and all("amp/grad_max" not in m and "amp/loss_scale" in m for _, m in records)


@pytest.mark.parametrize("bad", [0, 1, "yes"])
def test_grad_max_must_be_a_bool_or_none(bad):
    with pytest.raises(MisconfigurationException, match="grad_max must be True, False or None"):
        LossScaleMonitor(grad_max=bad)


@pytest.mark.parametrize("which", ["fp32_run", "bf16_run"])
def test_no_scaler_no_scale_and_no_skips(request, which):
    run = request.getfixturevalue(which)
    records = run[0] if isinstance(run, tuple) else run
    assert [s for s, _ in records] == list(range(STEPS))
    for _, m in records:
        assert "amp/loss_scale" not in m and "amp/growth_tracker" not in m
        assert m["amp/skipped"] == 0.0
        assert math.isfinite(m["amp/grad_norm"]) and math.isfinite(m["amp/loss"])


def test_fused_optimizer_gives_the_same_scaler_story(fp16_run, fp16_fused_run):
    plain, fused = columns(fp16_run[0]), columns(fp16_fused_run[0])
    assert fused["step"].tolist() == list(range(STEPS))
    np.testing.assert_array_equal(fused["amp/skipped"], plain["amp/skipped"])
    np.testing.assert_array_equal(fused["amp/loss_scale"], plain["amp/loss_scale"])
    np.testing.assert_array_equal(fused["amp/growth_tracker"], plain["amp/growth_tracker"])
    clean = plain["amp/skipped"] == 0
    # the fused optimizer unscales inside step(): the monitor saw scaled gradients and divided them
    np.testing.assert_allclose(fused["amp/grad_norm"][clean], plain["amp/grad_norm"][clean], rtol=1e-3)
    seen = fp16_fused_run[1]
    for i in np.flatnonzero(clean):
        assert seen[i]["raw_norm"] > 1e3 * fused["amp/grad_norm"][i]  # still scaled when the hook ran
        assert fused["amp/grad_norm"][i] == pytest.approx(seen[i]["raw_norm"] / seen[i]["scale"], rel=1e-4)
        assert fused["amp/grad_max"][i] == pytest.approx(seen[i]["raw_max"] / seen[i]["scale"], rel=1e-6)


def test_flush_every_batches_but_loses_nothing():
    _, logger, _ = fit("16-mixed", steps=23, monitor=LossScaleMonitor(flush_every=7), batches=8)
    records = logger.monitor_records()
    assert [s for s, _ in records] == list(range(23))  # the last partial block is flushed at train end
    c = columns(records)
    check_scaler_rules(
        c["amp/loss_scale"], c["amp/skipped"].astype(bool), c["amp/growth_tracker"], HUGE_SCALE, GROWTH_INTERVAL
    )


def test_gradient_accumulation_one_record_per_optimizer_step():
    _, logger, _ = fit("32-true", steps=6, accumulate_grad_batches=3, batches=9)
    assert [s for s, _ in logger.monitor_records()] == list(range(6))


def test_works_with_csv_logger(tmp_path):
    import csv

    logger = CSVLogger(tmp_path, name="csv")
    fit("16-mixed", steps=12, logger=logger)
    with open(logger.experiment.metrics_file_path) as f:
        rows = [r for r in csv.DictReader(f) if r.get("amp/loss")]
    assert [int(r["step"]) for r in rows] == list(range(12))
    assert float(rows[0]["amp/loss_scale"]) == HUGE_SCALE and float(rows[0]["amp/skipped"]) == 1.0


def test_monitor_needs_a_logger():
    with pytest.raises(MisconfigurationException, match="no logger"):
        fit("32-true", steps=2, logger=False)


@pytest.mark.parametrize("bad", [0, -1, 1.5, "20"])
def test_invalid_flush_every_is_rejected(bad):
    with pytest.raises(MisconfigurationException, match="flush_every"):
        LossScaleMonitor(flush_every=bad)


def test_monitor_keeps_what_it_measured_when_training_fails():
    class Boom(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 5:
                raise RuntimeError("boom")

    logger = MemoryLogger()
    with pytest.raises(RuntimeError, match="boom"):
        fit("32-true", steps=20, callbacks=[Boom()], logger=logger, monitor=LossScaleMonitor(flush_every=100))
    assert [s for s, _ in logger.monitor_records()] == list(range(5))


# ---------------------------------------------------------------- the record's write cadence

# A training process that writes its record through the monitor and RunRecordLogger, with a writer
# whose clock reads the step (one step = one unit, a write falls due every WINDOW steps), and that
# SIGKILLs itself at the start of step KILL_AT: nothing of Python's shutdown runs.
KILLED_CHILD = """
import os, signal, sys
import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from amp_core.record import RunWriter
from amp_core.training.callbacks import LossScaleMonitor
from amp_core.training.model import DemoMLP, synthetic_loader
from amp_core.training.record_logger import RunRecordLogger

runs, window, kill_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
state = {"step": 0}

class StepClockAndKill(Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        state["step"] = trainer.global_step
        if trainer.global_step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

writer = RunWriter(RunWriter.create(runs, {"precision": "32-true"}).path, flush_seconds=window, clock=lambda: state["step"])
writer.set_status("running", pid=os.getpid())
monitor = LossScaleMonitor(flush_every=1)  # every step to the logger; the writer's window decides the writes
monitor.PUBLISH_SECONDS = float("inf")  # and no saves on the monitor's own (wall-clock) cadence
pl.seed_everything(0, verbose=False)
trainer = pl.Trainer(accelerator="cpu", max_steps=1000, logger=RunRecordLogger(writer), callbacks=[StepClockAndKill(), monitor],
                     enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1)
trainer.fit(DemoMLP(hidden=32, depth=2), synthetic_loader(16, batches=200))
"""


def test_a_sigkill_loses_at_most_the_rows_of_one_window(tmp_path):
    import subprocess

    from amp_core.record import list_runs, load_run

    window, kill_at = 5, 23
    done = subprocess.run(
        [sys.executable, "-c", KILLED_CHILD, str(tmp_path), str(window), str(kill_at)],
        cwd=str(Path(__file__).resolve().parents[1]),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == -9, done.stderr[-2000:]
    (path,) = [r.path for r in list_runs(tmp_path)]
    lines = (path / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines]  # every line on disk parses
    # writes fell due at steps 0, 5, 10, 15, 20: steps 21 and 22 were queued when the kill came
    assert steps == list(range(21))
    assert 0 < kill_at - len(steps) < window  # lost: less than one window of steps
    r = load_run(path)
    assert len(r.metrics) == 21 and r.status["state"] == "running"  # the reader sees the record as it was left


def test_rows_queued_when_a_run_ends_are_all_written(tmp_path):
    from amp_core.record import RunWriter, load_run
    from amp_core.training.record_logger import RunRecordLogger

    never = RunWriter(RunWriter.create(tmp_path, {"precision": "16-mixed"}).path, flush_seconds=math.inf)
    monitor = LossScaleMonitor()
    monitor.PUBLISH_SECONDS = math.inf  # after step 0, the monitor keeps every row until the run ends
    seen = {}

    class LookAtTheFile(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == 10:
                seen["at step 10"] = (never.path / "metrics.jsonl").read_text().count("\n")

    # 40 batches: no epoch end within the 17 steps, so only the run's end publishes and writes the rest
    fit("16-mixed", steps=17, logger=RunRecordLogger(never), monitor=monitor, callbacks=[LookAtTheFile()], batches=40)
    assert seen["at step 10"] == 1  # only step 0 had been written: the rest was held
    assert [int(s) for s in load_run(never.path).metrics.step] == list(range(17))


# ---------------------------------------------------------------- CUDA only


@pytest.mark.cuda
@needs_cuda
def test_cuda_autocast_is_float16_with_a_grad_scaler():
    seen = {}

    class Probe(DemoMLP):
        def training_step(self, batch, batch_idx):
            x, _ = batch
            seen["autocast"] = torch.is_autocast_enabled("cuda")
            seen["dtype"] = torch.get_autocast_dtype("cuda")
            seen["out"] = self(x).dtype
            return super().training_step(batch, batch_idx)

    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        accelerator="gpu",
        devices=1,
        precision="16-mixed",
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Probe(hidden=32), synthetic_loader(16, 2))
    assert seen == {"autocast": True, "dtype": torch.float16, "out": torch.float16}
    assert isinstance(trainer.strategy.precision_plugin.scaler, torch.amp.GradScaler)


@pytest.mark.cuda
@needs_cuda
def test_cuda_grad_scaler_workflow():
    _, logger, _ = fit("16-mixed", accelerator="gpu", monitor=LossScaleMonitor(flush_every=20))
    records = logger.monitor_records()
    assert [s for s, _ in records] == list(range(STEPS))
    c = columns(records)
    assert c["amp/skipped"][0] == 1.0
    check_scaler_rules(
        c["amp/loss_scale"], c["amp/skipped"].astype(bool), c["amp/growth_tracker"], HUGE_SCALE, GROWTH_INTERVAL
    )


@pytest.mark.cuda
@needs_cuda
def test_sync_debug_mode_catches_a_host_sync():
    """The check below can fail: a host sync inside a wrapped hook raises."""
    value = torch.ones((), device="cuda")
    with pytest.raises(RuntimeError):
        sync_checked(lambda: value.item())()


@pytest.mark.cuda
@needs_cuda
def test_cuda_monitor_adds_no_host_sync():
    monitor = LossScaleMonitor(flush_every=20)
    # Only the monitor's per-step hooks run under "error"; Lightning and GradScaler.step sync on their own.
    for name in ("on_train_start", "on_before_optimizer_step", "on_train_batch_end"):
        setattr(monitor, name, sync_checked(getattr(monitor, name)))
    try:
        trainer, logger, _ = fit("16-mixed", steps=50, accelerator="gpu", monitor=monitor, init_scale=2.0**16)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert trainer.global_step == 50
    records = logger.monitor_records()
    assert [s for s, _ in records] == list(range(50))
    assert all("amp/loss_scale" in m for _, m in records)
