"""Counting the host synchronisations that callback hooks cause on CUDA (tests/test_cuda.py, bench/gpu_proof.py).

With `torch.cuda.set_sync_debug_mode("warn")` every synchronising CUDA call (a copy to pageable host
memory, `.item()`, a stream, event or device synchronize) emits a warning. `HostSyncCounter` turns
that mode on only while a wrapped hook runs and counts those warnings, so what Lightning and the
GradScaler synchronise on their own, outside the hooks, is not counted: the count is the hooks' own.

CUDA only: torch's CPU builds have no sync debug mode.
"""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

SYNC_WARNING = "called a synchronizing CUDA operation"
# LossScaleMonitor's hooks: the per-step ones must not sync; the one-off ones may (the last copy lands).
MONITOR_STEP_HOOKS = ("on_before_optimizer_step", "on_train_batch_end")
MONITOR_ONCE_HOOKS = ("on_train_start", "on_train_end")


class HostSyncCounter:
    """Wraps hooks of an object (a Lightning callback) and counts the host syncs inside each hook."""

    def __init__(self) -> None:
        self.calls: dict[str, int] = {}
        self.syncs: dict[str, int] = {}

    def wrap(self, target: Any, hooks: tuple[str, ...] | list[str]) -> Any:
        for name in hooks:
            setattr(target, name, self._counted(name, getattr(target, name)))
        return target

    def _counted(self, name: str, fn: Callable) -> Callable:
        self.calls.setdefault(name, 0)
        self.syncs.setdefault(name, 0)

        @functools.wraps(fn)
        def hook(*args: Any, **kwargs: Any) -> Any:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")  # every sync, not the first one per call site
                before = torch.cuda.get_sync_debug_mode()
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    return fn(*args, **kwargs)
                finally:
                    torch.cuda.set_sync_debug_mode(before)
                    self.calls[name] += 1
                    self.syncs[name] += sum(SYNC_WARNING in str(w.message) for w in caught)

        return hook


def count_monitor_syncs(
    precision: str,
    steps: int,
    runs_dir: str | Path,
    hidden: int = 256,
    depth: int = 3,
    batch_size: int = 64,
    histogram_every: int = 10,
) -> dict:
    """Train `steps` steps on CUDA with the monitor and its run-record logger (as amp_core.train does),
    counting host syncs in the monitor's hooks. Returns the counts and what the record got."""
    import pytorch_lightning as pl

    from amp_core.record import RunWriter, load_histograms, load_run
    from amp_core.training.callbacks import LossScaleMonitor
    from amp_core.training.model import DemoMLP, synthetic_loader
    from amp_core.training.record_logger import RunRecordLogger

    writer = RunWriter.create(
        runs_dir, {"precision": precision, "purpose": "host sync count"}, label=f"sync-{precision}"
    )
    counter = HostSyncCounter()
    monitor = counter.wrap(LossScaleMonitor(histogram_every=histogram_every), MONITOR_STEP_HOOKS + MONITOR_ONCE_HOOKS)
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        accelerator="gpu",
        devices=1,
        precision=precision,
        max_steps=steps,
        max_epochs=-1,
        logger=[RunRecordLogger(writer)],
        callbacks=[monitor],
        log_every_n_steps=20,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(DemoMLP(hidden=hidden, depth=depth), synthetic_loader(batch_size, batches=64))
    writer.close()
    step_syncs = sum(counter.syncs[h] for h in MONITOR_STEP_HOOKS)
    return {
        "precision": precision,
        "steps": trainer.global_step,
        "hook_calls": dict(counter.calls),
        "hook_syncs": dict(counter.syncs),
        "syncs_in_per_step_hooks": step_syncs,
        "syncs_per_step": step_syncs / max(1, trainer.global_step),
        "recorded_steps": len(load_run(writer.path).metrics),
        "recorded_histograms": len(load_histograms(writer.path)),
    }
