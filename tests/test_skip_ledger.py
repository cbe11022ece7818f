"""The skip ledger (why each skipped step was skipped), the scheduler-on-skipped check, and the seed's
`_get_loss_scale`, with real fp16 Lightning runs on the CPU (a real CPU GradScaler skips the steps)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from amp_core.analysis.advice import advise
from amp_core.record import SKIPS_FILE, RunWriter, load_run, load_skips
from amp_core.record.skips import scheduler_steps_on_skipped, skip_hover, skipped_rows
from amp_core.training.callbacks import AmpWandbCallback, LossScaleMonitor, get_loss_scale
from amp_core.training.cli import RunConfig, build_precision, run
from amp_core.training.faults import InjectOverflow
from amp_core.training.model import DemoMLP, synthetic_loader
from amp_core.training.record_logger import RunRecordLogger
from tests.support.cuda import sync_checked

SMALL = dict(hidden=32, depth=2)
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class PutIntoGrad(Callback):
    """Writes `value` into the named parameters' gradients after backward at the given steps."""

    def __init__(self, names: list[str], steps: list[int], value: float):
        self.names, self.steps, self.value = names, set(steps), value

    def on_after_backward(self, trainer, pl_module):
        if trainer.global_step in self.steps:
            params = dict(pl_module.named_parameters())
            for name in self.names:
                params[name].grad.view(-1)[1] = self.value


def fit(tmp_path, model, callbacks, steps=8, accelerator="cpu", monitor=None):
    """A real fp16 fit with the monitor and the run-record logger; returns the run as read back."""
    config = RunConfig(precision="16-mixed", accelerator=accelerator).validate()
    kwargs, _ = build_precision(config, accelerator)
    writer = RunWriter.create(tmp_path, {"precision": "16-mixed", "init_scale": config.init_scale})
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=1,
        max_steps=steps,
        logger=[RunRecordLogger(writer)],
        callbacks=[monitor or LossScaleMonitor(), *callbacks],
        enable_checkpointing=False,
        log_every_n_steps=1,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )
    trainer.fit(model, synthetic_loader(16, batches=steps))
    writer.close()
    return trainer, load_run(writer.path)


def test_injected_overflow_is_recorded_with_the_parameter_the_injector_touched(tmp_path):
    writer = run(
        RunConfig(
            precision="16-mixed",
            max_steps=8,
            batch_size=16,
            inject_overflow=(2, 5),
            wandb="disabled",
            runs_dir=str(tmp_path),
            **SMALL,
        )
    )
    r = load_run(writer.path)
    rows = {row["step"]: row for row in skipped_rows(r)}
    # InjectOverflow writes into the first parameter that has a gradient: in DemoMLP, the first one it names
    touched = next(name for name, _ in DemoMLP(**SMALL).named_parameters())
    for step in (2, 5):
        assert rows[step]["nonfinite"] == "inf" and rows[step]["param"] == touched and rows[step]["injected"]
        assert rows[step]["scale_after"] == rows[step]["scale_before"] * 0.5
    steps, texts = skip_hover(r)
    assert list(steps) == sorted(rows) and f"inf in {touched}" in texts[list(steps).index(2)]
    assert not scheduler_steps_on_skipped(r)
    assert not any(
        "One layer" in a.finding or "LR scheduler" in a.finding for a in advise(r)
    )  # injected skips are not the model's


def test_a_nan_in_one_layer_is_recorded_as_nan_in_that_layer(tmp_path):
    _, r = fit(tmp_path, DemoMLP(**SMALL), [PutIntoGrad(["net.2.weight"], [3, 4, 6], float("nan"))])
    rows = {row["step"]: row for row in skipped_rows(r)}
    for step in (3, 4, 6):
        assert rows[step]["nonfinite"] == "NaN" and rows[step]["param"] == "net.2.weight" and not rows[step]["injected"]
    assert len(load_skips(r.path)) == len(rows)
    culprit = [a for a in advise(r) if a.finding.startswith("One layer causes most skipped steps")]
    assert culprit and "net.2" in culprit[0].finding and "3 of 3" in culprit[0].evidence


def test_the_first_parameter_in_backward_order_is_named(tmp_path):
    # inf in the input layer and in the hidden layer: backward reaches net.2 first, so it is where the overflow began
    _, r = fit(tmp_path, DemoMLP(**SMALL), [PutIntoGrad(["net.0.weight", "net.2.weight"], [2], float("inf"))], steps=4)
    (row,) = [x for x in skipped_rows(r) if x["step"] == 2]
    assert row["param"] == "net.2.weight" and row["nonfinite"] == "inf"


def test_an_old_record_without_a_ledger_still_lists_its_skipped_steps(tmp_path):
    _, r = fit(tmp_path, DemoMLP(**SMALL), [InjectOverflow([1])], steps=3)
    (r.path / SKIPS_FILE).unlink()
    rows = [x for x in skipped_rows(load_run(r.path)) if x["step"] == 1]
    assert rows and rows[0]["param"] is None and rows[0]["scale_before"] is not None
    assert "non-finite gradients" in skip_hover(load_run(r.path))[1][0]


class WithStepScheduler(DemoMLP):
    """DemoMLP with an LR scheduler that steps every optimizer step (Lightning calls it every batch)."""

    def configure_optimizers(self):
        optimizer = torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.9)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


class GuardedScheduler(WithStepScheduler):
    """The fix: step the scheduler only when the optimizer really stepped (a step post-hook counts its steps)."""

    def configure_optimizers(self):
        conf = super().configure_optimizers()
        self.optimizer_steps = self.scheduled_at = 0
        conf["optimizer"].register_step_post_hook(lambda *_: setattr(self, "optimizer_steps", self.optimizer_steps + 1))
        return conf

    def lr_scheduler_step(self, scheduler, metric):
        if self.optimizer_steps > self.scheduled_at:
            self.scheduled_at = self.optimizer_steps
            scheduler.step()


def test_a_scheduler_stepping_on_skipped_steps_is_flagged(tmp_path):
    trainer, r = fit(tmp_path, WithStepScheduler(**SMALL), [InjectOverflow([2, 4])], steps=7)
    assert scheduler_steps_on_skipped(r) == [2, 4]
    found = [a for a in advise(r) if "LR scheduler stepped" in a.finding]
    assert found and "2 skipped" in found[0].finding and "lr_scheduler_step" in found[0].suggestion
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 7  # it stepped 7 times for 5 optimizer steps


def test_a_scheduler_that_waits_for_the_optimizer_is_not_flagged(tmp_path):
    trainer, r = fit(tmp_path, GuardedScheduler(**SMALL), [InjectOverflow([2, 4])], steps=7)
    assert [x["step"] for x in skipped_rows(r) if x["step"] in (2, 4)] == [2, 4]
    assert scheduler_steps_on_skipped(r) == []
    assert not any("LR scheduler" in a.finding for a in advise(r))
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 5


# ---------------------------------------------------------------- the seed's AmpWandbCallback._get_loss_scale


def test_get_loss_scale_method_is_kept_for_the_seed(tmp_path):
    trainer, _ = fit(tmp_path, DemoMLP(**SMALL), [], steps=3)
    cb = AmpWandbCallback(enabled=True, precision="16-mixed")  # the seed's constructor
    scaler = trainer.strategy.precision_plugin.scaler
    assert cb._get_loss_scale(trainer) == get_loss_scale(trainer) == scaler.get_scale()
    assert cb._get_loss_scale(SimpleNamespace()) is None

    class Fixed(AmpWandbCallback):
        def _get_loss_scale(self, trainer):
            return 123.0

    assert Fixed(enabled=True, precision="16-mixed")._payload(trainer)["amp/loss_scale"] == 123.0


# ---------------------------------------------------------------- CUDA: the ledger adds no host sync


@needs_cuda
def test_cuda_ledger_adds_no_host_sync(tmp_path):
    monitor = LossScaleMonitor(flush_every=20)
    for name in ("on_train_start", "on_train_batch_start", "on_before_optimizer_step", "on_train_batch_end"):
        setattr(monitor, name, sync_checked(getattr(monitor, name)))
    try:
        _, r = fit(
            tmp_path,
            DemoMLP(**SMALL),
            [PutIntoGrad(["net.2.weight"], [3], float("nan")), InjectOverflow([7])],
            steps=30,
            accelerator="gpu",
            monitor=monitor,
        )
    finally:
        torch.cuda.set_sync_debug_mode("default")
    rows = {row["step"]: row for row in skipped_rows(r)}
    assert rows[3]["nonfinite"] == "NaN" and rows[3]["param"] == "net.2.weight"
    assert rows[7]["nonfinite"] == "inf" and rows[7]["param"] == next(n for n, _ in DemoMLP(**SMALL).named_parameters())
