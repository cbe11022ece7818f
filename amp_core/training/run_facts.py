"""What a run record notes about where and how it ran: hardware, versions, the trainer's precision
path, step times and peak memory; and the two small callbacks that measure or end a run.
"""

from __future__ import annotations

import math
import os
import platform
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from amp_core.record import stop_requested

# Step timing leaves out the first steps (allocator, autotuning, caches warming up): 10%, at least 5,
# never more than half of the run.
WARMUP_MIN_STEPS, WARMUP_SHARE = 5, 0.1
# ru_maxrss is in KiB on Linux, in bytes on macOS.
RSS_UNIT_BYTES = {"darwin": 1}.get(sys.platform, 1024)
# CPU features that decide whether fp16 / bf16 autocast has hardware behind it (read from /proc/cpuinfo).
CPU_AMP_FLAGS = ("avx512_bf16", "amx_bf16", "avx512_fp16", "amx_fp16", "amx_tile", "avx512f", "avx2", "f16c")


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

    facts: dict[str, Any] = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.is_available(),
    }
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


def trainer_facts(trainer: Any) -> dict[str, Any]:
    """The precision the trainer resolved, its plugin and GradScaler settings, the hardware and versions."""
    plugin = trainer.strategy.precision_plugin
    scaler = getattr(plugin, "scaler", None)
    facts: dict[str, Any] = {
        "precision_resolved": trainer.precision,
        "precision_plugin": type(plugin).__name__,
        "grad_scaler": scaler is not None,
    }
    if scaler is not None:
        facts.update(
            init_scale=float(scaler._init_scale),
            growth_factor=float(scaler._growth_factor),
            backoff_factor=float(scaler._backoff_factor),
            growth_interval=int(scaler._growth_interval),
        )
    return {**facts, "hardware": hardware_facts(), "versions": versions()}


def StopOnRequest(run_dir: Path) -> Any:  # noqa: N802 - a callback made on demand: Lightning is imported only then
    """Ends training at the next step once the run's stop file exists (the app's Stop, or SIGTERM)."""
    from pytorch_lightning.callbacks import Callback

    class _StopOnRequest(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if stop_requested(run_dir):
                trainer.should_stop = True

    return _StopOnRequest()


def StepTimer(sync_cuda: bool) -> Any:  # noqa: N802
    """Wall time of each training step: between consecutive `on_train_batch_end` calls (the first step
    from its `on_train_batch_start`), so data loading and the loop's own work are in it.

    With `sync_cuda` it waits for the GPU at each step end, else the times would be the host's launch
    times: that is one host synchronisation per step, so a run only has this timer when it asks for
    `time_steps` (a comparison does) and other runs keep the monitor's no-sync property.
    """
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
