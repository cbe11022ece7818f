"""The GradScaler adapter (amp_core.training.scaler_state): a real GradScaler passes and reads as torch
says; a scaler without the internals amp_core reads fails the run at its start, naming the torch version."""

from __future__ import annotations

import re

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins import MixedPrecision

from amp_core.record import load_run
from amp_core.training import scaler_state
from amp_core.training.callbacks import LossScaleMonitor
from amp_core.training.cli import RunConfig, run
from amp_core.training.model import DemoMLP
from amp_core.training.scaler_state import ScalerInternalsError, check_scaler


class RenamedScaler(torch.amp.GradScaler):
    """A GradScaler as a torch release that renamed its growth tracker would build it."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._growth_steps = self.__dict__.pop("_growth_tracker")


def fp16_step(scaler: torch.amp.GradScaler, model: torch.nn.Module, opt: torch.optim.Optimizer, unscale: bool) -> None:
    x = torch.randn(8, 4)
    with torch.autocast("cpu", dtype=torch.float16):
        loss = model(x).float().pow(2).mean()
    scaler.scale(loss).backward()
    if unscale:
        scaler.unscale_(opt)
    assert scaler_state.unscaled(scaler, opt) is unscale
    scaler.step(opt)
    scaler.update()
    opt.zero_grad()


def test_a_real_grad_scaler_passes_and_reads_as_torch_says():
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=3)
    check_scaler(scaler)
    assert scaler_state.is_enabled(scaler) and scaler_state.scale_tensor(scaler) is None  # none before scale()
    assert scaler_state.settings(scaler) == {
        "init_scale": 1024.0,
        "growth_factor": 2.0,
        "backoff_factor": 0.5,
        "growth_interval": 3,
    }
    model = torch.nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    for i in range(4):
        fp16_step(scaler, model, opt, unscale=i % 2 == 0)
    assert float(scaler_state.scale_tensor(scaler)) == scaler.get_scale() == 2048.0  # grew once, after 3 clean steps
    assert int(scaler_state.growth_tracker(scaler)) == 1


def test_a_disabled_scaler_reads_as_none():
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    check_scaler(scaler)  # keeps none of the state, and needs none
    assert not scaler_state.is_enabled(scaler) and not scaler_state.is_enabled(None)
    assert scaler_state.scale_tensor(scaler) is None and scaler_state.settings(scaler) == {}


@pytest.mark.parametrize("scaler", [RenamedScaler("cpu"), object()], ids=["renamed", "not-a-grad-scaler"])
def test_a_scaler_without_the_internals_raises_naming_torch(scaler):
    with pytest.raises(ScalerInternalsError) as e:
        check_scaler(scaler)
    message = str(e.value)
    assert f"torch {torch.__version__}" in message and "_growth_tracker" in message
    with pytest.raises(ScalerInternalsError):
        scaler_state.settings(scaler)


def test_the_monitor_refuses_it_before_the_first_step(tmp_path):
    trainer = pl.Trainer(
        accelerator="cpu",
        max_steps=3,
        plugins=[MixedPrecision("16-mixed", "cpu", scaler=RenamedScaler("cpu"))],
        callbacks=[LossScaleMonitor()],
        logger=pl.loggers.CSVLogger(tmp_path),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(16, 8), torch.randint(0, 2, (16,))))
    with pytest.raises(
        ScalerInternalsError, match=re.escape(f"under torch {torch.__version__} has no _growth_tracker")
    ):
        trainer.fit(DemoMLP(in_features=8, hidden=8, depth=1, classes=2), data)
    assert trainer.global_step == 0


def test_a_run_fails_at_its_start_with_the_torch_version_recorded(runs_dir, monkeypatch):
    monkeypatch.setattr(torch.amp, "GradScaler", RenamedScaler)  # what fp16_mixed builds
    config = RunConfig(precision="16-mixed", accelerator="cpu", max_steps=5, hidden=16, wandb="disabled")
    with pytest.raises(ScalerInternalsError):
        run(config)
    (record,) = [load_run(p) for p in runs_dir.iterdir()]
    assert record.status["state"] == "failed" and len(record.metrics) == 0
    assert f"under torch {torch.__version__} has no _growth_tracker" in record.status["error"]
