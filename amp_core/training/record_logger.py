"""A Lightning logger that writes the `LossScaleMonitor`'s series into a run record.

From your own script, in the manner of Lightning's `CSVLogger(save_dir, name)`: the logger creates
the record itself (in `save_dir`, default `$AMP_RUNS_DIR` or `runs/`), fills config.json from the
trainer when fit starts, follows the run's state and sets the final one from Lightning's
`finalize(status)` (`failed`, with the error, when the fit raises). The app's Stop ends it at the
next step. With the monitor among the callbacks the run appears on the Runs page, live:

    Trainer(logger=RunRecordLogger(), callbacks=[LossScaleMonitor()], plugins=[fp16_mixed()], ...)

Given a `RunWriter` instead (what `amp_core.train` does), it writes into that record and leaves its
state to the writer's owner.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import traceback
from argparse import Namespace
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.loggers.logger import Logger, rank_zero_experiment
from pytorch_lightning.utilities.rank_zero import rank_zero_only

from amp_core.record import RANKS_DIR, SKIPS_FILE, RunWriter, default_runs_dir, finite_or_none, now_iso, stop_requested

_MONITOR_FIELDS = {
    "amp/loss": "loss",
    "amp/loss_scale": "loss_scale",
    "amp/skipped": "skipped",
    "amp/grad_norm": "grad_norm",
    "amp/grad_max": "grad_max",
    "amp/growth_tracker": "growth_tracker",
}
# Lightning's finalize() statuses -> the record's final state (an exception decides 'failed' itself).
_FINAL_STATES = {"success": "completed", "finished": "stopped", "failed": "failed"}


class RunRecordLogger(Logger):
    """One metrics.jsonl line per optimizer step the monitor publishes (written by the RunWriter every
    ~50 ms, see `RunWriter.queue_metrics`); other metrics pass by."""

    def __init__(self, save_dir: str | os.PathLike | RunWriter | None = None, name: str | None = None):
        super().__init__()
        self._owns_record = not isinstance(save_dir, RunWriter)
        self._writer: RunWriter | None = None if self._owns_record else save_dir
        self._save_dir = None if save_dir is None or not self._owns_record else str(save_dir)
        self._name = name
        self._trainer: Any = None
        self._ended = False

    @property
    def writer(self) -> RunWriter:
        """The record, created on first use when this logger owns it."""
        if self._writer is None:
            config = {
                "label": self._name or "script",
                "workload": "script",
                "source": "RunRecordLogger",
                "created_at": now_iso(),
            }
            self._writer = RunWriter.create(self.save_dir, config, label=self._name or "script")
            self._writer.set_status(
                "starting", created_at=config["created_at"], pid=os.getpid(), host=socket.gethostname()
            )
        return self._writer

    @property
    @rank_zero_experiment
    def experiment(self) -> RunWriter:
        return self.writer

    @property
    def name(self) -> str:
        # Lightning puts checkpoints in save_dir/name/version: with no name, that is the run's own folder.
        return "" if self._owns_record else "amp_record"

    @property
    def version(self) -> str | None:
        return self.writer.id if rank_zero_only.rank == 0 else None

    @property
    def save_dir(self) -> str:
        if not self._owns_record:
            return str(self._writer.path)
        return self._save_dir or str(default_runs_dir())

    @rank_zero_only
    def log_hyperparams(self, params: dict[str, Any] | Namespace, *args: Any, **kwargs: Any) -> None:
        pass  # a record's config.json is the run's settings (amp_core.train) or the trainer's (log_graph)

    @rank_zero_only
    def log_graph(self, model: pl.LightningModule, input_array: Any = None) -> None:
        """Called by Lightning as fit starts, with the model attached to its trainer: the config and 'running'."""
        self._trainer = model.trainer
        if not self._owns_record:
            return
        from amp_core.training.run_facts import trainer_facts

        trainer, cls = model.trainer, type(model)
        self.writer.update_config(
            precision=trainer.precision,
            accelerator="gpu" if trainer.strategy.root_device.type == "cuda" else trainer.strategy.root_device.type,
            accelerator_resolved="gpu"
            if trainer.strategy.root_device.type == "cuda"
            else trainer.strategy.root_device.type,
            max_steps=trainer.max_steps if trainer.max_steps > 0 else None,
            model_class=f"{cls.__module__}.{cls.__qualname__}",
            devices=trainer.world_size,
            **trainer_facts(trainer),
        )
        self.writer.set_status("running", started_at=now_iso(), pid=os.getpid(), host=socket.gethostname())

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
        if self.writer.queue_metrics(row):  # written now (every ~50 ms): time to look for a stop request too
            self._check_stop()

    @rank_zero_only
    def save(self) -> None:
        """Lightning's "persist now" (called after its own logging and by the monitor when training pauses):
        writes the queued rows."""
        if self._writer is not None:
            self._writer.flush()
            self._check_stop()

    def _check_stop(self) -> None:
        if self._owns_record and self._trainer is not None and stop_requested(self.writer.path):
            self._trainer.should_stop = True  # the app's Stop (amp_core.train has its own callback)

    @rank_zero_only
    def log_grad_histogram(self, step: int, log2_lo: int, counts: list[int], zeros: int, nonfinite: int) -> None:
        """The monitor's log2 histogram of unscaled gradient values, one line of histograms.jsonl."""
        self.writer.append_histogram(
            {"step": int(step), "log2_lo": log2_lo, "counts": counts, "zeros": zeros, "nonfinite": nonfinite}
        )

    @rank_zero_only
    def log_skipped_step(self, step: int, row: dict[str, Any]) -> None:
        """One line of skips.jsonl: why the GradScaler skipped this step (the monitor's skip ledger).
        Skipped steps are rare, so the file is opened per line; a reader never sees half a line."""
        line = json.dumps({"step": int(step), **row}, allow_nan=False) + "\n"
        self.writer.flush()  # the step's metrics line first, so a reader never has a skip without its step
        with open(self.writer.path / SKIPS_FILE, "a", encoding="utf-8") as f:
            f.write(line)

    @rank_zero_only
    def finalize(self, status: str) -> None:
        if self._owns_record and not self._ended and self._writer is not None:
            self._ended = True
            self._writer.set_status(**self._final_status(status))
        if self._writer is not None:
            self._writer.close()

    def _final_status(self, status: str) -> dict[str, Any]:
        """The record's last status from Lightning's word and, while an exception is being handled, that exception."""
        state = _FINAL_STATES.get(status, "failed")
        fields: dict[str, Any] = {"ended_at": now_iso()}
        if self._trainer is not None:
            fields["global_step"] = self._trainer.global_step
        error = (
            sys.exc_info()[1] if status == "failed" else None
        )  # Lightning calls finalize('failed') inside its except block
        if isinstance(error, KeyboardInterrupt):
            state, fields["error"] = "stopped", "interrupted by the user"
        elif error is not None:
            fields["error"] = f"{type(error).__name__}: {error}".strip()
            fields["traceback"] = "".join(traceback.format_exception(error, limit=-20))
        elif state == "completed" and stop_requested(self._writer.path):
            state = "stopped"
        return {"state": state, **fields}


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
        row = {
            "step": step,
            "loss_scale": finite_or_none(metrics.get("amp/loss_scale")),
            "skipped": bool(metrics.get("amp/skipped")),
        }
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

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        run_dir = trainer.strategy.broadcast(self.run_dir, src=0)
        self.logger.set_run_dir(run_dir, trainer.global_rank)
