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
    """The facts, computed in this process (imports torch): the run record's `hardware` facts
    (amp_core.training.run_facts, the same keys), torch's version and every CUDA device."""
    import torch

    from amp_core.training.run_facts import gpu_facts, hardware_facts

    facts: dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(), **hardware_facts()}
    facts["devices"] = [{"index": i, **gpu_facts(i)} for i in range(torch.cuda.device_count() if facts["cuda"] else 0)]
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
            "cuda": False,
            "devices": [],
        }
    except (OSError, ValueError, subprocess.TimeoutExpired) as e:
        return {"error": f"{type(e).__name__}: {e}", "cuda": False, "devices": []}


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
            f"GPU {d['index']}: {d['device_name']} (compute capability {d['compute_capability']}, {d['memory_gib']} GiB); "
            f"bf16 {'supported' if d['bf16_supported'] else 'not supported (needs compute capability 8.0+)'}; "
            f"fp16 tensor cores {'yes' if d['fp16_tensor_cores'] else 'no'}."
        )
    return lines


if __name__ == "__main__":
    print(json.dumps(describe()))
