"""One training run, as a short sequence of steps: check the configuration, build the workload,
open the record, make the Trainer, fit, record how it ended.

Configuration and workload errors raise ConfigError before any run folder is made (a queued record,
given as `writer`, is marked failed with that line instead). Exceptions from training are recorded
as `failed` and raised again.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from amp_core.record import RunWriter, default_runs_dir, now_iso, request_stop, stop_requested
from amp_core.training.config import ConfigError, RunConfig
from amp_core.training.memory import RunMemory
from amp_core.training.preflight import failure_hint
from amp_core.training.workloads import WORKLOADS, Built

RUN_DIR_ENV = "AMP_RUN_DIR"  # rank 0's run folder, inherited by the processes Lightning launches


def resolve_accelerator(requested: str) -> str:
    import torch

    if requested == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if requested == "gpu" and not torch.cuda.is_available():
        raise ConfigError(
            "accelerator 'gpu' needs CUDA, and torch.cuda.is_available() is False here; use --accelerator cpu or auto"
        )
    return requested


def global_rank() -> int:
    """This process's rank in a multi-process run, from the variables its launcher sets (0 alone)."""
    for key in ("RANK", "SLURM_PROCID"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    local, node = os.environ.get("LOCAL_RANK", "0"), os.environ.get("NODE_RANK", "0")
    devices = int(os.environ.get("LOCAL_WORLD_SIZE", "0") or 0) or 1
    return int(node) * devices + int(local) if local.isdigit() and node.isdigit() else 0


class _OtherRankWriter(RunWriter):
    """Ranks other than 0 keep no record of their own: rank 0 writes it. (Each rank's loss scale goes
    to ranks/ through RankScaleLogger.)"""

    def set_status(self, state: str, **fields: Any) -> dict:
        return {}

    def update_config(self, **fields: Any) -> None:
        pass

    def add_warning(self, message: str) -> None:
        pass

    def append_metrics(self, rows: list[dict]) -> None:
        pass

    def append_histogram(self, row: dict) -> None:
        pass


def build_workload(config: RunConfig, writer: RunWriter | None) -> Built:
    """The workload's module and data (seeded); a build error marks a given (queued) record failed."""
    import pytorch_lightning as pl

    pl.seed_everything(config.seed, workers=True, verbose=False)
    try:
        return WORKLOADS[config.workload].build(config)
    except BaseException as e:
        if writer is not None:
            writer.set_status(
                "failed",
                ended_at=now_iso(),
                error=str(e) if isinstance(e, ConfigError) else f"{type(e).__name__}: {e}".strip(),
            )
        raise


def open_record(config: RunConfig, accelerator: str, built: Built, writer: RunWriter | None) -> RunWriter:
    """The run's writer (rank 0's record; a stand-in elsewhere), its config written and state 'running'."""
    runs_dir = config.runs_dir or str(default_runs_dir())
    record = {
        **asdict(config),
        "runs_dir": runs_dir,
        "accelerator_resolved": accelerator,
        "created_at": now_iso(),
        "workload_settings": config.workload_settings(),
        **built.notes,
        "matmul_flops_per_step": built.matmul_flops_per_step,
    }
    if global_rank() != 0:
        writer = _OtherRankWriter(Path(os.environ.get(RUN_DIR_ENV, runs_dir)))
    elif writer is None:
        writer = RunWriter.create(runs_dir, record, label=config.precision)
    else:
        writer.update_config(**record)
    writer.set_status(
        "running",
        created_at=writer._status.get("created_at", record["created_at"]),
        started_at=now_iso(),
        pid=os.getpid(),
        host=socket.gethostname(),
    )
    return writer


@contextmanager
def process_settings(config: RunConfig, writer: RunWriter) -> Iterator[None]:
    """SIGTERM asks the run to stop, the float32 matmul precision is the run's, and $AMP_RUN_DIR names its
    folder (for the processes Lightning launches); all put back after."""
    import torch

    # Python handles signals only in the main thread: run() called from another thread (an in-process
    # worker) leaves SIGTERM alone instead of failing with ValueError after the record says 'running'.
    own_sigterm = threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) in (
        signal.SIG_DFL,
        None,
    )
    if own_sigterm:
        signal.signal(signal.SIGTERM, lambda *_: request_stop(writer.path))
    matmul_before = torch.get_float32_matmul_precision()
    run_dir_before = os.environ.get(RUN_DIR_ENV)
    try:
        torch.set_float32_matmul_precision(config.matmul_precision)  # process-wide
        os.environ[RUN_DIR_ENV] = str(writer.path)
        yield
    finally:
        if own_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        torch.set_float32_matmul_precision(matmul_before)
        if run_dir_before is None:
            os.environ.pop(RUN_DIR_ENV, None)
        else:
            os.environ[RUN_DIR_ENV] = run_dir_before


def make_trainer(config: RunConfig, accelerator: str, writer: RunWriter, loggers: list) -> tuple[Any, Any, dict]:
    """The Trainer with the run's precision, loggers and callbacks; its step timer; the precision path taken."""
    import pytorch_lightning as pl

    from amp_core.training.callbacks import AmpWandbCallback, LossScaleMonitor
    from amp_core.training.faults import InjectFault, InjectOverflow, NonFiniteLossGuard
    from amp_core.training.plugins import build_precision
    from amp_core.training.record_logger import RankScaleLogger, RunRecordLogger, ShareRunDir
    from amp_core.training.run_callbacks import StepTimer, StopOnRequest

    precision_kwargs, precision_info = build_precision(config, accelerator)
    timer = StepTimer(sync_cuda=accelerator == "gpu") if config.time_steps else None
    rank_logger = RankScaleLogger() if config.devices * config.num_nodes > 1 else None
    callbacks = [
        LossScaleMonitor(histogram_every=config.histogram_every or None),
        AmpWandbCallback(enabled=config.precision in ("16-mixed", "bf16-mixed"), precision=config.precision),
        StopOnRequest(writer.path),
        NonFiniteLossGuard(),
        *([ShareRunDir(rank_logger, str(writer.path) if global_rank() == 0 else None)] if rank_logger else []),
        *([InjectOverflow(config.inject_overflow)] if config.inject_overflow else []),
        *([InjectFault(config.fault.split("@")[0], int(config.fault.split("@")[1]))] if config.fault else []),
        *([timer] if timer else []),
    ]
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy=config.strategy,
        max_steps=config.max_steps,
        max_epochs=-1,
        logger=[RunRecordLogger(writer), *loggers, *([rank_logger] if rank_logger else [])],
        callbacks=callbacks,
        log_every_n_steps=1 if accelerator == "cpu" else 20,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=sys.stderr.isatty(),
        default_root_dir=str(writer.path),
        **precision_kwargs,
    )
    return trainer, timer, precision_info


def fit(trainer: Any, built: Built, timer: Any, accelerator: str, batch_size: int) -> dict[str, Any]:
    """Train; returns what was measured (peak memory, step times)."""
    import torch

    from amp_core.training.run_facts import peak_memory, step_timing

    cuda_device = trainer.strategy.root_device if accelerator == "gpu" else None
    if cuda_device is not None:
        torch.cuda.reset_peak_memory_stats(cuda_device)
    data = {"datamodule": built.data} if _is_datamodule(built.data) else {"train_dataloaders": built.data}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(built.module, **data)
    return {**peak_memory(cuda_device), **(step_timing(timer.seconds, batch_size) if timer else {})}


def _is_datamodule(data: Any) -> bool:
    import pytorch_lightning as pl

    return isinstance(data, pl.LightningDataModule)


def run(config: RunConfig, writer: RunWriter | None = None) -> RunWriter:
    """Train once and record it. Returns the writer; the record's status says how it ended."""
    from amp_core.training.run_facts import trainer_facts
    from amp_core.training.wandb_logger import finish_wandb, make_wandb_logger

    config.validate()
    accelerator = resolve_accelerator(config.accelerator)
    # Before the model: its weights are the run's own (on a GPU, fit moves them into the CUDA peak).
    run_memory = RunMemory().start()
    built = build_workload(config, writer)
    writer = open_record(config, accelerator, built, writer)
    wandb_logger = None
    try:
        with process_settings(config, writer):
            wandb_logger = make_wandb_logger(config, writer) if global_rank() == 0 else None
            trainer, timer, precision_info = make_trainer(
                config, accelerator, writer, [wandb_logger] if wandb_logger else []
            )
            facts = trainer_facts(trainer)
            writer.update_config(
                amp_path=precision_info["path"],
                autocast_dtype=precision_info["autocast_dtype"],
                **{
                    k: facts[k]
                    for k in ("precision_resolved", "precision_plugin", "grad_scaler", "hardware", "versions")
                },
            )
            measured = {**fit(trainer, built, timer, accelerator, config.batch_size), **run_memory.stop()}
        writer.set_status(
            "stopped" if stop_requested(writer.path) else "completed",
            ended_at=now_iso(),
            global_step=trainer.global_step,
            **measured,
        )
    except SystemExit:  # Lightning turns Ctrl+C into sys.exit(1) after a graceful shutdown
        writer.set_status("stopped", ended_at=now_iso(), error="interrupted by the user")
    except BaseException as e:
        error = f"{type(e).__name__}: {e}".strip() + failure_hint(config.precision, e)
        # The innermost frames of the traceback: where it failed.
        writer.set_status("failed", ended_at=now_iso(), error=error, traceback=traceback.format_exc(limit=-20))
        raise
    finally:
        run_memory.stop()  # ends its sampling thread, if it has one
        writer.close()
        finish_wandb(wandb_logger, writer)
    return writer
