"""The small callbacks a run adds (StopOnRequest, StepTimer) are plain classes, on real Lightning fits;
and LossScaleMonitor says so when it cannot keep what it measured before a failure."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers import Logger

from amp_core.record import request_stop
from amp_core.training.callbacks import LossScaleMonitor
from amp_core.training.faults import InjectFault
from amp_core.training.model import DemoMLP, synthetic_loader
from amp_core.training.run_callbacks import StepTimer, StopOnRequest


class BrokenLogger(Logger):
    """A logger whose writes fail (a full disk, a closed file)."""

    name, version = "broken", 0

    def log_hyperparams(self, params, *args, **kwargs):
        pass

    def log_metrics(self, metrics, step=None):
        raise OSError("no space left on device")


def fit(callbacks, logger=None, steps=6):
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=steps,
        max_epochs=-1,
        callbacks=callbacks,
        logger=logger or False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(DemoMLP(in_features=8, hidden=8, depth=1, classes=2), synthetic_loader(64, 8, in_features=8, classes=2))
    return trainer


def test_they_are_the_classes_they_say(tmp_path):
    stop, timer = StopOnRequest(tmp_path), StepTimer(sync_cuda=False)
    assert type(stop) is StopOnRequest and type(timer) is StepTimer
    assert isinstance(stop, Callback) and isinstance(timer, Callback)


def test_the_timer_times_every_step_and_the_stop_file_ends_the_fit(tmp_path):
    timer = StepTimer(sync_cuda=False)
    assert fit([timer], steps=6).global_step == 6
    assert len(timer.seconds) == 6 and all(s > 0 for s in timer.seconds)
    request_stop(tmp_path)
    assert fit([StopOnRequest(tmp_path)], steps=50).global_step == 1  # stops at the end of the first step


def test_the_monitor_warns_when_it_cannot_keep_what_it_measured():
    monitor = LossScaleMonitor(flush_every=100)  # nothing published before the failure
    with pytest.warns(RuntimeWarning, match="before the run's RuntimeError could not all be published: OSError"):
        with pytest.raises(RuntimeError, match="injected fault"):
            fit([monitor, InjectFault("raise", 3)], logger=BrokenLogger())
