"""What a run record notes about where and how it ran: hardware, versions, the trainer's precision
path, step times and peak memory.

Standard library at import (the server reaches the warm-up constants through compare_summary); torch
is imported by the functions that ask it. The callbacks that end a run or time its steps are in
`run_callbacks`.
"""

from __future__ import annotations

import math
import os
import platform
import socket
import statistics
import sys
from typing import Any

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


def gpu_facts(index: int) -> dict[str, Any]:
    """One CUDA device: its name, compute capability, memory, and what its arithmetic units do natively."""
    import torch

    major, minor = torch.cuda.get_device_capability(index)
    return {
        "device_name": torch.cuda.get_device_name(index),
        "compute_capability": f"{major}.{minor}",
        "memory_gib": round(torch.cuda.get_device_properties(index).total_memory / 2**30, 1),
        # bf16 arithmetic needs Ampere (8.0) or newer (torch.cuda.is_bf16_supported without emulation; ROCm
        # has it throughout); fp16 tensor cores need Volta (7.0).
        "bf16_supported": bool(torch.version.hip) or major >= 8,
        "fp16_tensor_cores": major >= 7,
    }


def hardware_facts() -> dict[str, Any]:
    """This machine as a run record notes it: host, CPU, and the CUDA device the process uses (if any)."""
    import torch

    facts: dict[str, Any] = {
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.is_available(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_flags": cpu_amp_flags(),
    }
    if facts["cuda"]:
        facts.update(gpu_facts(torch.cuda.current_device()))
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
    from amp_core.training import scaler_state

    plugin = trainer.strategy.precision_plugin
    scaler = getattr(plugin, "scaler", None)
    facts: dict[str, Any] = {
        "precision_resolved": trainer.precision,
        "precision_plugin": type(plugin).__name__,
        "grad_scaler": scaler is not None,
    }
    facts.update(scaler_state.settings(scaler))  # checks the scaler's internals: a run fails here, before fit
    return {**facts, "hardware": hardware_facts(), "versions": versions()}


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
