"""The monitor on CUDA: host syncs per step, counted, and overhead per step against bare Lightning.

    python bench/monitor_proof.py monitor.json      # bench/gpu_proof.py runs this as its monitor phase

Syncs: amp_core.training.sync_check counts the synchronising CUDA calls inside the monitor's hooks (sync debug
mode "warn", every warning counted) over a run as amp_core.train makes it (run-record logger,
histograms every 25 steps, a flush every 20). Overhead: bench/monitor_overhead.py's
interleaved turns (`cuda_figures`) at the workloads' default sizes, where a step is shortest and the
monitor's share largest. Measured, not asserted: the goal (<= 1.03x) is written beside the numbers. The file is
rewritten after each measurement, so a phase cut short keeps what it measured.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PRECISIONS = ("16-mixed", "bf16-mixed", "32-true")
SYNC_STEPS = 100
GOAL = 1.03  # the same goal as on the CPU (bench/monitor_overhead.py)


def main(path: Path) -> int:
    import torch

    if not torch.cuda.is_available():
        path.write_text(
            json.dumps({"skipped": "no CUDA GPU here: the monitor's sync count and GPU overhead need one"}, indent=1)
        )
        print("monitor: skipped (no CUDA)")
        return 0
    import monitor_overhead as mo
    import pytorch_lightning as pl

    from amp_core.training.sync_check import count_monitor_syncs

    result: dict = {
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "lightning": pl.__version__,
        "size": {"hidden": 256, "depth": 3, "batch_size": 64},
        "goal": GOAL,
        "sync_counts": [],
        "overhead": [],
        "method": "syncs: sync debug mode 'warn' inside the monitor's hooks, warnings counted; overhead: "
        "bench/monitor_overhead.py cuda_figures (interleaved turns, torch.cuda.synchronize() at each step boundary)",
    }
    write = lambda: path.write_text(json.dumps(result, indent=1))  # noqa: E731
    with tempfile.TemporaryDirectory(prefix="amp-monitor-proof-") as tmp:
        for precision in PRECISIONS:
            counts = count_monitor_syncs(precision, SYNC_STEPS, Path(tmp) / "sync", histogram_every=25)
            result["sync_counts"].append(counts)
            print(
                f"monitor syncs {precision}: {counts['syncs_in_per_step_hooks']} in {counts['steps']} steps (hooks: {counts['hook_syncs']})",
                flush=True,
            )
            write()
        t0 = time.perf_counter()
        for f in mo.cuda_figures(quick=True, tmp=Path(tmp) / "bench"):  # the monitor's interleaved turns, on the GPU
            result["overhead"].append({**f.to_json(), "within_goal": f.value is not None and f.value <= GOAL})
            print(f"monitor overhead: {f.name}: {f.value} ({f.how})", flush=True)
            write()
        result["overhead_seconds"] = round(time.perf_counter() - t0, 1)
        write()
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
