"""A Lightning logger that writes the `LossScaleMonitor`'s series into a run record.

Add it to any Trainer (with the monitor) and the run shows up in AMP Explorer's Runs page:

    writer = RunWriter.create("runs", {"precision": "16-mixed"})
    Trainer(logger=[RunRecordLogger(writer)], callbacks=[LossScaleMonitor()], ...)
"""

from __future__ import annotations

import json
import time
from argparse import Namespace
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers.logger import Logger
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from amp_core.runs import RANKS_DIR, SKIPS_FILE, RunWriter, finite_or_none

_MONITOR_FIELDS = {
    "amp/loss": "loss",
    "amp/loss_scale": "loss_scale",
    "amp/skipped": "skipped",
    "amp/grad_norm": "grad_norm",
    "amp/grad_max": "grad_max",
    "amp/growth_tracker": "growth_tracker",
}


class RunRecordLogger(Logger):
    """Appends one metrics.jsonl line per optimizer step the monitor publishes; other metrics pass by."""

    def __init__(self, writer: RunWriter):
        super().__init__()
        self.writer = writer

    @property
    def name(self) -> str:
        return "amp_record"

    @property
    def version(self) -> str:
        return self.writer.id

    @property
    def save_dir(self) -> str:
        return str(self.writer.path)

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        pass  # the run's configuration is already in config.json

    @rank_zero_only
    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if "amp/loss" not in metrics:
            return
        row: dict[str, Any] = {"step": int(step) if step is not None else None}
        for key, field in _MONITOR_FIELDS.items():
            row[field] = finite_or_none(metrics.get(key))
        row["skipped"] = bool(row["skipped"])
        if row["growth_tracker"] is not None:
            row["growth_tracker"] = int(row["growth_tracker"])
        row["time"] = round(time.time(), 4)
        self.writer.append_metrics([row])

    @rank_zero_only
    def log_grad_histogram(self, step: int, log2_lo: int, counts: list[int], zeros: int, nonfinite: int) -> None:
        """The monitor's log2 histogram of unscaled gradient values, one line of histograms.jsonl."""
        self.writer.append_histogram({"step": int(step), "log2_lo": log2_lo, "counts": counts, "zeros": zeros, "nonfinite": nonfinite})

    @rank_zero_only
    def log_skipped_step(self, step: int, row: dict[str, Any]) -> None:
        """One line of skips.jsonl: why the GradScaler skipped this step (the monitor's skip ledger).
        Skipped steps are rare, so the file is opened per line; a reader never sees half a line."""
        line = json.dumps({"step": int(step), **row}, allow_nan=False) + "\n"
        with open(self.writer.path / SKIPS_FILE, "a", encoding="utf-8") as f:
            f.write(line)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.writer.close()


class RankScaleLogger(Logger):
    """On every rank of a multi-process run: that rank's loss scale per step, in ranks/rank<N>.jsonl.

    With DDP the gradients are all-reduced before the GradScaler looks at them, so every rank should
    hold the same scale; these files let the app show that they do. The run folder is known to rank 0
    only, so it is broadcast from rank 0 when the strategy is set up (`set_run_dir`).
    """

    def __init__(self) -> None:
        super().__init__()
        self._file = None
        self._rank = 0

    @property
    def name(self) -> str:
        return "amp_rank_scale"

    @property
    def version(self) -> str:
        return str(self._rank)

    def set_run_dir(self, run_dir: str, rank: int) -> None:
        self._rank = rank
        folder = Path(run_dir) / RANKS_DIR
        folder.mkdir(exist_ok=True)
        self._file = open(folder / f"rank{rank}.jsonl", "a", encoding="utf-8")

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        if self._file is None or "amp/loss" not in metrics:
            return
        row = {"step": step, "loss_scale": finite_or_none(metrics.get("amp/loss_scale")), "skipped": bool(metrics.get("amp/skipped"))}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def finalize(self, status: str) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class ShareRunDir(Callback):
    """Broadcasts rank 0's run folder to every rank at setup, for their `RankScaleLogger`."""

    def __init__(self, logger: RankScaleLogger, run_dir: str | None):
        self.logger, self.run_dir = logger, run_dir

    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        run_dir = trainer.strategy.broadcast(self.run_dir, src=0)
        self.logger.set_run_dir(run_dir, trainer.global_rank)
