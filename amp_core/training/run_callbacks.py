"""The two small callbacks every run() may add: one ends the run when asked, one times its steps.

They import Lightning (they are Callbacks), so `run_facts`, which the server reaches through
`compare_summary`, does not hold them.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from amp_core.record import stop_requested


class StopOnRequest(Callback):
    """Ends training at the next step once the run's stop file exists (the app's Stop, or SIGTERM)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if stop_requested(self.run_dir):
            trainer.should_stop = True


class StepTimer(Callback):
    """Wall time of each training step: between consecutive `on_train_batch_end` calls (the first step
    from its `on_train_batch_start`), so data loading and the loop's own work are in it.

    With `sync_cuda` it waits for the GPU at each step end, else the times would be the host's launch
    times: that is one host synchronisation per step, so a run only has this timer when it asks for
    `time_steps` (a comparison does) and other runs keep the monitor's no-sync property.
    """

    def __init__(self, sync_cuda: bool):
        self.sync_cuda = bool(sync_cuda)
        self.marks: list[float] = []

    @property
    def seconds(self) -> list[float]:
        return [b - a for a, b in zip(self.marks, self.marks[1:])]

    def _mark(self) -> None:
        if self.sync_cuda:
            torch.cuda.synchronize()
        self.marks.append(time.perf_counter())

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self.marks:
            self._mark()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        self._mark()
