"""What this machine offers for mixed precision, read in a child process.

The app's server must not import torch to show this (the Home page has to be fast), and a run's
worker must not touch CUDA before it is told which GPU to use, so a short-lived child process
imports torch, asks, prints JSON and exits:

    python -m amp_core.serve.hardware
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from typing import Any


def describe() -> dict[str, Any]:
    """The facts, computed in this process (imports torch)."""
    import torch

    facts: dict[str, Any] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(),
        "cuda_available": torch.cuda.is_available(),
        "devices": [],
        "cpu_bf16_autocast": True,
        "cpu_fp16_autocast": True,
    }
    for i in range(torch.cuda.device_count() if facts["cuda_available"] else 0):
        major, minor = torch.cuda.get_device_capability(i)
        props = torch.cuda.get_device_properties(i)
        facts["devices"].append(
            {
                "index": i,
                "name": torch.cuda.get_device_name(i),
                "compute_capability": f"{major}.{minor}",
                "memory_gib": round(props.total_memory / 2**30, 1),
                # bf16 arithmetic needs Ampere (8.0) or newer; fp16 tensor cores need Volta (7.0).
                "bf16": major >= 8,
                "fp16_tensor_cores": major >= 7,
            }
        )
    return facts


def probe(timeout: float = 60.0) -> dict[str, Any]:
    """The facts, from a child process; on failure a dict with an `error` key instead of raising."""
    try:
        out = subprocess.run(
            [sys.executable, "-m", "amp_core.serve.hardware"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        )
        return json.loads(out.stdout)
    except subprocess.CalledProcessError as e:
        return {
            "error": (e.stderr or "").strip().splitlines()[-1:] or [f"exit code {e.returncode}"],
            "cuda_available": False,
            "devices": [],
        }
    except (OSError, ValueError, subprocess.TimeoutExpired) as e:
        return {"error": f"{type(e).__name__}: {e}", "cuda_available": False, "devices": []}


def summary_lines(facts: dict[str, Any]) -> list[str]:
    """Plain sentences about what the facts mean for AMP."""
    if facts.get("error"):
        return [f"Could not read the hardware: {facts['error']}"]
    if not facts.get("devices"):
        return [
            "CPU only: no CUDA GPU is visible to PyTorch.",
            "fp16 (16-mixed) runs here for real, through Lightning's MixedPrecision plugin with a CPU GradScaler, "
            "but it is emulated and slower than fp32; Lightning alone would switch it to bf16-mixed.",
            "bf16-mixed autocast works on CPU and needs no loss scaling.",
        ]
    lines = []
    for d in facts["devices"]:
        lines.append(
            f"GPU {d['index']}: {d['name']} (compute capability {d['compute_capability']}, {d['memory_gib']} GiB); "
            f"bf16 {'supported' if d['bf16'] else 'not supported (needs compute capability 8.0+)'}; "
            f"fp16 tensor cores {'yes' if d['fp16_tensor_cores'] else 'no'}."
        )
    return lines


if __name__ == "__main__":
    print(json.dumps(describe()))
