"""One short training run: configuration -> Lightning Trainer -> run record.

    python -m amp_core.train --precision 16-mixed --max-steps 200 --init-scale 65536

fp16 on a CPU: Lightning would turn '16-mixed' into 'bf16-mixed' there (no scaler), so for fp16 we
always pass the `MixedPrecision` plugin ourselves with a GradScaler of the requested settings
('cpu' or 'cuda'). Autocast then really runs in float16 and the loss scale backs off and grows as
on a GPU, only slower (a CPU without fp16 units emulates it). `config.json` records that path.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
import signal
import socket
import statistics
import sys
import time
import threading
import traceback
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from amp_core.memory import RunMemory
from amp_core.runs import RunRecordError, RunWriter, default_runs_dir, now_iso, request_stop, stop_requested

WANDB_MODES = ("offline", "online", "disabled")
STRATEGIES = ("auto", "ddp")
RUN_DIR_ENV = "AMP_RUN_DIR"  # rank 0's run folder, inherited by the processes Lightning launches
ACCELERATORS = ("auto", "cpu", "gpu")
MATMUL_PRECISIONS = ("highest", "high", "medium")  # torch.set_float32_matmul_precision; 'high' allows TF32 on CUDA
MAX_STEPS_LIMIT = 1_000_000
# Step timing leaves out the first steps (allocator, autotuning, caches warming up): 10%, at least 5,
# never more than half of the run.
WARMUP_MIN_STEPS, WARMUP_SHARE = 5, 0.1
# ru_maxrss is in KiB on Linux, in bytes on macOS.
RSS_UNIT_BYTES = {"darwin": 1}.get(sys.platform, 1024)
# CPU features that decide whether fp16 / bf16 autocast has hardware behind it (read from /proc/cpuinfo).
CPU_AMP_FLAGS = ("avx512_bf16", "amx_bf16", "avx512_fp16", "amx_fp16", "amx_tile", "avx512f", "avx2", "f16c")
_GROUP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")  # \Z: "$" would let a trailing newline in


class ConfigError(ValueError):
    """A run setting that cannot be used; the message is one line a user can act on."""


def _shown(value: Any, limit: int = 200) -> str:
    """repr() for an error message: never raises (an int of over 4300 digits has no repr) and stays short."""
    try:
        text = repr(value)
    except ValueError:
        text = f"<an integer of {value.bit_length()} bits>" if isinstance(value, int) else f"<a {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass
class RunConfig:
    precision: str = "16-mixed"
    accelerator: str = "auto"
    max_steps: int = 200
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    init_scale: float = 2.0**16
    growth_factor: float = 2.0
    backoff_factor: float = 0.5
    growth_interval: int = 2000
    hidden: int = 256
    depth: int = 3
    fused: bool = False
    histogram_every: int = 25
    inject_overflow: tuple[int, ...] = ()
    fault: str = ""  # "KIND@STEP" with KIND raise, oom or nan: fail on purpose (demos, tests)
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    wandb: str = "offline"
    runs_dir: str = ""
    matmul_precision: str = "highest"
    time_steps: bool = False
    compare_group: str = ""

    def validate(self) -> "RunConfig":
        """Check every field and normalise the precision; raises ConfigError with one clear line."""
        from amp_core.precision import normalize_precision

        def number(name: str, kind: type, lo: float, hi: float, lo_open: bool = False) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{name.replace('_', '-')} must be {'an integer' if kind is int else 'a number'}, got {_shown(value)}")
            try:
                as_float = float(value)
            except OverflowError:  # an int too large for a float: out of every range here
                as_float = math.inf if value > 0 else -math.inf
            if kind is int and isinstance(value, float) and not value.is_integer():
                raise ConfigError(f"{name.replace('_', '-')} must be an integer, got {_shown(value)}")
            if not math.isfinite(as_float) or value < lo or value > hi or (lo_open and value == lo):
                bound = f"{'>' if lo_open else '>='} {lo:g} and <= {hi:g}"
                raise ConfigError(f"{name.replace('_', '-')} must be {bound}, got {_shown(value)}")
            setattr(self, name, kind(value))

        try:
            self.precision = normalize_precision(self.precision)
        except ValueError as e:
            raise ConfigError(str(e).splitlines()[0]) from None
        from amp_core.preflight import missing_precision_package

        if missing := missing_precision_package(self.precision):  # refused here, not as a failed run after it started
            raise ConfigError(missing)
        if self.accelerator not in ACCELERATORS:
            raise ConfigError(f"accelerator must be one of {', '.join(ACCELERATORS)}, got {_shown(self.accelerator)}")
        if self.wandb not in WANDB_MODES:
            raise ConfigError(f"wandb must be one of {', '.join(WANDB_MODES)}, got {_shown(self.wandb)}")
        if self.matmul_precision not in MATMUL_PRECISIONS:
            raise ConfigError(f"matmul-precision must be one of {', '.join(MATMUL_PRECISIONS)}, got {_shown(self.matmul_precision)}")
        if not isinstance(self.time_steps, bool):
            raise ConfigError(f"time-steps must be true or false, got {_shown(self.time_steps)}")
        if not isinstance(self.fused, bool):
            raise ConfigError(f"fused must be true or false, got {_shown(self.fused)}")
        if not isinstance(self.runs_dir, str) or "\0" in self.runs_dir:
            raise ConfigError(f"runs-dir must be a folder path, got {_shown(self.runs_dir)}")
        if not isinstance(self.compare_group, str) or (self.compare_group and not _GROUP_ID.match(self.compare_group)):
            raise ConfigError(f"compare-group must be letters, digits, '.', '_' or '-' (at most 64), got {_shown(self.compare_group)}")
        number("max_steps", int, 1, MAX_STEPS_LIMIT)
        number("batch_size", int, 1, 65536)
        number("lr", float, 0, 10, lo_open=True)
        number("seed", int, 0, 2**32 - 1)
        number("init_scale", float, 0, 2.0**126, lo_open=True)
        number("growth_factor", float, 1, 1e6, lo_open=True)
        number("backoff_factor", float, 0, 1, lo_open=True)
        if self.backoff_factor == 1:
            raise ConfigError("backoff-factor must be < 1 (the scale must drop when a step overflows)")
        number("growth_interval", int, 1, 10**9)
        number("hidden", int, 1, 65536)
        number("depth", int, 1, 64)
        number("devices", int, 1, 1024)
        number("num_nodes", int, 1, 1024)
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}, got {_shown(self.strategy)}")
        number("histogram_every", int, 0, 10**9)
        steps = self.inject_overflow
        if not isinstance(steps, (list, tuple, set, frozenset)) or not all(isinstance(x, int) and not isinstance(x, bool) for x in steps):
            raise ConfigError(f"inject-overflow must be a list of step numbers, got {_shown(steps)}")
        if any(x < 0 or x >= self.max_steps for x in steps):
            raise ConfigError(f"inject-overflow steps must be between 0 and max-steps - 1 ({self.max_steps - 1}), got {_shown(sorted(steps))}")
        if steps and self.precision != "16-mixed":
            raise ConfigError("inject-overflow needs a GradScaler, i.e. precision 16-mixed: without one an inf gradient ruins the weights")
        self.inject_overflow = tuple(sorted(set(steps)))
        if not isinstance(self.fault, str) or self.fault:
            from amp_core.callbacks import FAULTS

            kind, _, at = str(self.fault).partition("@") if isinstance(self.fault, str) else ("", "", "")
            if kind not in FAULTS or not re.fullmatch(r"[0-9]{1,9}", at):  # ASCII digits only: int() must read them
                raise ConfigError(f"fault must be KIND@STEP with KIND one of {', '.join(FAULTS)}, e.g. nan@10; got {_shown(self.fault)}")
        return self


def resolve_accelerator(requested: str) -> str:
    import torch

    if requested == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    if requested == "gpu" and not torch.cuda.is_available():
        raise ConfigError("accelerator 'gpu' needs CUDA, and torch.cuda.is_available() is False here; use --accelerator cpu or auto")
    return requested


def wandb_credentials_present() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def cpu_amp_flags() -> list[str]:
    """Which of CPU_AMP_FLAGS this CPU has (empty where /proc/cpuinfo cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith(("flags", "Features"))), [])
    except OSError:
        return []
    return [name for name in CPU_AMP_FLAGS if name in flags]


def hardware_facts() -> dict[str, Any]:
    import torch

    facts: dict[str, Any] = {"host": socket.gethostname(), "platform": platform.platform(), "cpu_count": os.cpu_count(), "cuda": torch.cuda.is_available()}
    facts.update(cpu_capability=torch.backends.cpu.get_cpu_capability(), cpu_flags=cpu_amp_flags())
    if facts["cuda"]:
        i = torch.cuda.current_device()
        facts.update(
            device_name=torch.cuda.get_device_name(i),
            compute_capability=".".join(map(str, torch.cuda.get_device_capability(i))),
            bf16_supported=torch.cuda.is_bf16_supported(),
        )
    return facts


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name in ("torch", "pytorch-lightning", "wandb", "numpy"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out


def build_precision(config: RunConfig, accelerator: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Trainer keyword arguments for the precision, and a description of the path taken."""
    import torch
    from pytorch_lightning.plugins import MixedPrecision

    if config.precision == "16-mixed":
        device = "cuda" if accelerator == "gpu" else "cpu"
        scaler = torch.amp.GradScaler(
            device,
            init_scale=config.init_scale,
            growth_factor=config.growth_factor,
            backoff_factor=config.backoff_factor,
            growth_interval=config.growth_interval,
        )
        path = (
            "explicit MixedPrecision('16-mixed', 'cpu') with a CPU GradScaler: Lightning alone would fall back to bf16-mixed on CPU"
            if device == "cpu"
            else "MixedPrecision('16-mixed', 'cuda') with a GradScaler of the requested settings"
        )
        return {"plugins": [MixedPrecision("16-mixed", device, scaler=scaler)]}, {"path": path, "autocast_dtype": "float16", "grad_scaler": True}
    dtype = {"bf16-mixed": "bfloat16"}.get(config.precision)
    return {"precision": config.precision}, {"path": f"Lightning precision={config.precision!r}", "autocast_dtype": dtype, "grad_scaler": False}


class StopOnRequest:
    """Ends training at the next step once the run's stop file exists (the app's Stop, or SIGTERM)."""

    def __new__(cls, run_dir: Path):
        from pytorch_lightning.callbacks import Callback

        class _StopOnRequest(Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                if stop_requested(run_dir):
                    trainer.should_stop = True

        return _StopOnRequest()


class StepTimer:
    """Wall time of each training step: between consecutive `on_train_batch_end` calls (the first step
    from its `on_train_batch_start`), so data loading and the loop's own work are in it.

    With `sync_cuda` it waits for the GPU at each step end, else the times would be the host's launch
    times: that is one host synchronisation per step, so a run only has this timer when it asks for
    `time_steps` (a comparison does) and other runs keep the monitor's no-sync property.
    """

    def __new__(cls, sync_cuda: bool):
        import torch
        from pytorch_lightning.callbacks import Callback

        sync = torch.cuda.synchronize if sync_cuda else (lambda: None)

        class _StepTimer(Callback):
            def __init__(self) -> None:
                self.marks: list[float] = []

            @property
            def seconds(self) -> list[float]:
                return [b - a for a, b in zip(self.marks, self.marks[1:])]

            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                if not self.marks:
                    sync()
                    self.marks.append(time.perf_counter())

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                sync()
                self.marks.append(time.perf_counter())

        return _StepTimer()


def step_timing(seconds: list[float], batch_size: int) -> dict[str, Any]:
    """Median step time after the warm-up, and the rates it gives; empty without a timed step."""
    warmup = min(max(WARMUP_MIN_STEPS, math.ceil(len(seconds) * WARMUP_SHARE)), len(seconds) // 2)
    timed = seconds[warmup:]
    if not timed:
        return {}
    median = statistics.median(timed)
    return {
        "median_step_ms": median * 1e3,
        "steps_per_s": 1 / median,
        "samples_per_s": batch_size / median,
        "timed_steps": len(timed),
        "warmup_steps": warmup,
    }


def peak_memory(cuda_device: Any = None) -> dict[str, Any]:
    """The process's peak RSS so far (MiB) and, given a CUDA device, the allocator's peak since its last reset."""
    out: dict[str, Any] = {}
    try:
        import resource

        out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * RSS_UNIT_BYTES / 2**20
    except ImportError:  # Windows
        pass
    if cuda_device is not None:
        import torch

        out["cuda_peak_mib"] = torch.cuda.max_memory_allocated(cuda_device) / 2**20
    return out


def _make_wandb_logger(config: RunConfig, writer: RunWriter) -> Any:
    """A WandbLogger whose failures become warnings in the run's status: W&B never stops training."""
    if config.wandb == "disabled":
        return None
    offline = config.wandb == "offline"
    if not offline and not wandb_credentials_present():
        writer.add_warning("W&B online needs credentials (`wandb login` or WANDB_API_KEY): this run logs to W&B offline instead")
        offline = True
    try:
        from pytorch_lightning.loggers import WandbLogger

        class ResilientWandbLogger(WandbLogger):
            broken = False

            def _guarded(self, what: str, fn: Any, *args: Any) -> Any:
                if self.broken:
                    return None
                try:
                    return fn(*args)
                except Exception as e:
                    self.broken = True
                    writer.add_warning(f"W&B failed ({what}: {type(e).__name__}: {e}); training goes on without it")
                    return None

            def log_metrics(self, metrics: Any, step: Any = None) -> None:
                self._guarded("log", super().log_metrics, metrics, step)

            def log_hyperparams(self, params: Any) -> None:
                self._guarded("config", super().log_hyperparams, params)

            def finalize(self, status: str) -> None:
                self._guarded("finish", super().finalize, status)

        logger = ResilientWandbLogger(
            project=os.environ.get("WANDB_PROJECT", "amp-explorer"),
            name=writer.id,
            save_dir=str(writer.path),
            offline=offline,
            config=asdict(config),
        )
        logger.experiment  # start the W&B run now, so a failing start is caught here and not mid-training
        return logger
    except Exception as e:
        writer.add_warning(f"W&B is unavailable, training without it: {type(e).__name__}: {e}")
        return None


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


def run(config: RunConfig, writer: RunWriter | None = None) -> RunWriter:
    """Train once and record it. Returns the writer; the record's status says how it ended.

    Exceptions from training are recorded as `failed` and raised again; configuration errors raise
    ConfigError before any folder is made.
    """
    config.validate()
    accelerator = resolve_accelerator(config.accelerator)

    import pytorch_lightning as pl
    import torch

    from amp_core.callbacks import AmpWandbCallback, InjectFault, InjectOverflow, LossScaleMonitor, NonFiniteLossGuard
    from amp_core.model import DemoMLP, synthetic_loader
    from amp_core.record_logger import RankScaleLogger, RunRecordLogger, ShareRunDir

    runs_dir = config.runs_dir or str(default_runs_dir())
    record = {**asdict(config), "runs_dir": runs_dir, "accelerator_resolved": accelerator, "created_at": now_iso()}
    rank = global_rank()
    if rank != 0:
        writer = _OtherRankWriter(Path(os.environ.get(RUN_DIR_ENV, runs_dir)))
    elif writer is None:
        writer = RunWriter.create(runs_dir, record, label=config.precision)
    else:
        writer.update_config(**record)
    os.environ[RUN_DIR_ENV] = str(writer.path)
    writer.set_status("running", created_at=writer._status.get("created_at", record["created_at"]), started_at=now_iso(), pid=os.getpid(), host=socket.gethostname())

    # Python handles signals only in the main thread: run() called from another thread (an in-process
    # worker) leaves SIGTERM alone instead of failing with ValueError after the record says 'running'.
    own_sigterm = threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, None)
    if own_sigterm:
        signal.signal(signal.SIGTERM, lambda *_: request_stop(writer.path))
    wandb_logger = None
    run_memory = RunMemory()
    matmul_before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision(config.matmul_precision)  # process-wide: put back in `finally`
        pl.seed_everything(config.seed, workers=True, verbose=False)
        precision_kwargs, precision_info = build_precision(config, accelerator)
        timer = StepTimer(sync_cuda=accelerator == "gpu") if config.time_steps else None
        run_memory.start()  # before the model: its weights are the run's own (on a GPU, fit moves them into the CUDA peak)
        model = DemoMLP(hidden=config.hidden, depth=config.depth, lr=config.lr, fused=config.fused)
        loader = synthetic_loader(config.batch_size, batches=min(config.max_steps, 64), seed=config.seed)
        wandb_logger = _make_wandb_logger(config, writer) if rank == 0 else None
        rank_logger = RankScaleLogger() if config.devices * config.num_nodes > 1 else None
        mixed = config.precision in ("16-mixed", "bf16-mixed")
        trainer = pl.Trainer(
            accelerator=accelerator,
            devices=config.devices,
            num_nodes=config.num_nodes,
            strategy=config.strategy,
            max_steps=config.max_steps,
            max_epochs=-1,
            logger=[RunRecordLogger(writer)] + ([wandb_logger] if wandb_logger else []) + ([rank_logger] if rank_logger else []),
            callbacks=[
                LossScaleMonitor(histogram_every=config.histogram_every or None),
                AmpWandbCallback(enabled=mixed, precision=config.precision),
                StopOnRequest(writer.path),
                NonFiniteLossGuard(),
                *([ShareRunDir(rank_logger, str(writer.path) if rank == 0 else None)] if rank_logger else []),
                *([InjectOverflow(config.inject_overflow)] if config.inject_overflow else []),
                *([InjectFault(config.fault.split("@")[0], int(config.fault.split("@")[1]))] if config.fault else []),
                *([timer] if timer else []),
            ],
            log_every_n_steps=1 if accelerator == "cpu" else 20,
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=sys.stderr.isatty(),
            default_root_dir=str(writer.path),
            **precision_kwargs,
        )
        plugin = trainer.strategy.precision_plugin
        writer.update_config(
            precision_resolved=trainer.precision,
            precision_plugin=type(plugin).__name__,
            amp_path=precision_info["path"],
            autocast_dtype=precision_info["autocast_dtype"],
            grad_scaler=getattr(plugin, "scaler", None) is not None,
            hardware=hardware_facts(),
            versions=versions(),
            matmul_flops_per_step=model.matmul_flops_per_step(config.batch_size),
        )
        cuda_device = trainer.strategy.root_device if accelerator == "gpu" else None
        if cuda_device is not None:
            torch.cuda.reset_peak_memory_stats(cuda_device)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            trainer.fit(model, loader)
        measured = {**peak_memory(cuda_device), **run_memory.stop(), **(step_timing(timer.seconds, config.batch_size) if timer else {})}
        writer.set_status("stopped" if stop_requested(writer.path) else "completed", ended_at=now_iso(), global_step=trainer.global_step, **measured)
    except SystemExit:  # Lightning turns Ctrl+C into sys.exit(1) after a graceful shutdown
        writer.set_status("stopped", ended_at=now_iso(), error="interrupted by the user")
    except BaseException as e:
        from amp_core.preflight import failure_hint

        writer.set_status("failed", ended_at=now_iso(), error=f"{type(e).__name__}: {e}".strip() + failure_hint(config.precision, e), traceback=traceback.format_exc(limit=-20))  # the innermost frames: where it failed
        raise
    finally:
        run_memory.stop()  # ends its sampling thread, if it has one
        writer.close()
        if wandb_logger is not None and not wandb_logger.broken:
            try:
                wandb_logger.experiment.finish()  # else a later WandbLogger in this process reuses the run
            except Exception as e:
                writer.add_warning(f"W&B finish failed: {type(e).__name__}: {e}")
        if own_sigterm:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        torch.set_float32_matmul_precision(matmul_before)
    return writer


def parser() -> argparse.ArgumentParser:
    d = RunConfig()
    p = argparse.ArgumentParser(prog="python -m amp_core.train", description="One short mixed-precision training run, recorded for AMP Explorer.")
    p.add_argument("--precision", default=d.precision, help="any Lightning precision value, e.g. 16-mixed, bf16-mixed, 32-true, 16, bf16, 32")
    p.add_argument("--accelerator", default=d.accelerator, help="auto, cpu or gpu")
    p.add_argument("--max-steps", default=d.max_steps, help="optimizer steps to run")
    p.add_argument("--batch-size", default=d.batch_size)
    p.add_argument("--lr", default=d.lr)
    p.add_argument("--seed", default=d.seed)
    p.add_argument("--init-scale", default=d.init_scale, help="GradScaler initial loss scale (fp16 only)")
    p.add_argument("--growth-factor", default=d.growth_factor)
    p.add_argument("--backoff-factor", default=d.backoff_factor)
    p.add_argument("--growth-interval", default=d.growth_interval)
    p.add_argument("--hidden", default=d.hidden, help="width of the demo MLP")
    p.add_argument("--depth", default=d.depth, help="hidden layers of the demo MLP")
    p.add_argument("--fused", action="store_true", help="use the fused AdamW implementation")
    p.add_argument("--histogram-every", default=d.histogram_every, help="steps between gradient histograms (0: none)")
    p.add_argument("--inject-overflow", default="", help="comma-separated steps at which to put an inf into the gradients (16-mixed only)")
    p.add_argument("--fault", default=d.fault, help="fail on purpose: raise@STEP, oom@STEP or nan@STEP (demos and tests)")
    p.add_argument("--devices", default=d.devices, help="processes (GPUs, or CPU processes) per node; >1 runs Lightning's DDP")
    p.add_argument("--num-nodes", default=d.num_nodes, help="machines; launch one process per node as Lightning documents (torchrun, SLURM)")
    p.add_argument("--strategy", default=d.strategy, help="auto or ddp")
    p.add_argument("--wandb", default=d.wandb, help="offline (default), online (needs credentials, else offline with a warning) or disabled")
    p.add_argument("--runs-dir", default=None, help=f"where run records go (default: ${'AMP_RUNS_DIR'} or runs/)")
    p.add_argument("--matmul-precision", default=d.matmul_precision, help="torch.set_float32_matmul_precision: highest (default), high (TF32 on CUDA) or medium")
    p.add_argument("--time-steps", action="store_true", help="record the median step time in status.json (on CUDA: one synchronisation per step)")
    p.add_argument("--compare-group", default=d.compare_group, help="id shared by the runs of one precision comparison (amp_core.compare sets it)")
    return p


class _ArgumentError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        # argparse quotes the user's arguments: a line break (or other control character) in one is escaped.
        raise _ArgumentError("".join(c if c.isprintable() else repr(c)[1:-1] for c in message))


def config_from_args(argv: list[str] | None) -> RunConfig:
    p = parser()
    p.__class__ = _Parser
    args = p.parse_args(argv)

    def parse(name: str, value: Any, kind: type) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return int(value) if kind is int else float(value)
        except ValueError:
            raise ConfigError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {value!r}") from None

    types = {f.name: f.type for f in fields(RunConfig)}
    values = {}
    for name, value in vars(args).items():
        if isinstance(value, list):  # argparse drops a value of '--' ("--lr=--"), leaving an empty list
            raise ConfigError(f"--{name.replace('_', '-')} needs a value, got '--'")
        kind = {"int": int, "float": float}.get(str(types.get(name)))
        values[name] = parse("--" + name.replace("_", "-"), value, kind) if kind else value
    values["runs_dir"] = values["runs_dir"] or str(default_runs_dir())
    values["inject_overflow"] = tuple(parse("--inject-overflow", x.strip(), int) for x in values["inject_overflow"].split(",") if x.strip())
    return RunConfig(**values).validate()


def main(argv: list[str] | None = None) -> int:
    config = None
    try:
        config = config_from_args(argv)
        writer = run(config)
    except (ConfigError, RunRecordError, _ArgumentError) as e:
        print(f"amp_core.train: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        from amp_core.preflight import failure_hint

        hint = failure_hint(config.precision, e) if config is not None else ""
        print(f"amp_core.train: the run failed: {type(e).__name__}: {e}".splitlines()[0] + hint, file=sys.stderr)
        return 1
    if global_rank() != 0:
        return 0  # rank 0 reports
    from amp_core.runs import load_run, summarize

    s = summarize(load_run(writer.path))
    scale = f"{s['final_loss_scale']:g}" if s["final_loss_scale"] is not None else "none"
    loss = f"{s['final_loss']:.4f}" if s["final_loss"] is not None else "n/a"
    print(f"{s['state']}: {s['steps']} steps at {s['precision']} on {s['accelerator']}, {s['skipped']} skipped, final loss scale {scale}, final loss {loss}")
    print(writer.path)
    return 0 if s["state"] in ("completed", "stopped") else 1


if __name__ == "__main__":
    sys.exit(main())
