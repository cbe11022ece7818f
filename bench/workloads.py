"""Per workload: steps/s under 32-true, bf16-mixed and 16-mixed on this machine, the loss after N
steps, what the loss scale did (torch's GradScaler defaults, and the Train page's: init 2**24,
growth interval 50), and the share of gradient values below fp16's range.

    python bench/workloads.py --steps 300 [--workloads mlp,gpt] [--json out.json]

Each run is a real `amp_core.train` run in this process, one after another, torch on one thread.
The precisions of a workload run back to back, so on a shared machine their ratios are the
figure to read, not their absolute rates. Nothing is tuned: every setting is the workload's default.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from amp_core.analysis.gradients import shares  # noqa: E402
from amp_core.record import load_histograms, load_run  # noqa: E402

PAGE_SCALER = {"init_scale": 2.0**24, "growth_interval": 50}
ARMS = [("32-true", {}), ("bf16-mixed", {}), ("16-mixed", {}), ("16-mixed", PAGE_SCALER)]


def scale_story(scale: np.ndarray, skipped: np.ndarray) -> dict:
    grew = int((np.diff(scale) > 0).sum())
    return {
        "init": float(scale[0]),
        "final": float(scale[-1]),
        "min": float(scale.min()),
        "max": float(scale.max()),
        "skipped": int(skipped.sum()),
        "growths": grew,
        "first_skip": int(np.argmax(skipped)) if skipped.any() else None,
    }


def gradient_shares(path: Path, steps: np.ndarray, scale: np.ndarray) -> dict:
    """Mean over the run's histograms of the shares below fp16's range, unscaled and at the scale used."""
    rows = []
    for h in load_histograms(path):
        at = scale[np.searchsorted(steps, h["step"])] if len(scale) and not np.isnan(scale).all() else None
        rows.append(shares(h, None if at is None or np.isnan(at) else float(at)))
    keys = ("zero", "underflow_unscaled", "underflow_scaled", "subnormal_scaled")
    return {k: float(np.mean([r[k] for r in rows])) for k in keys} | {"histograms": len(rows)}


def measure(workload: str, steps: int, runs_dir: str) -> list[dict]:
    import torch

    from amp_core.training.cli import RunConfig, run

    torch.set_num_threads(1)
    out = []
    for precision, scaler in ARMS:
        config = RunConfig(
            workload=workload,
            precision=precision,
            max_steps=steps,
            accelerator="cpu",
            wandb="disabled",
            time_steps=True,
            runs_dir=runs_dir,
            **scaler,
        )
        if workload == "gpt":
            config.batch_size = 16  # the workload's own default, as the CLI and the pages set it
        r = load_run(run(config).path)
        m = r.metrics
        row = {
            "workload": workload,
            "precision": precision,
            "scaler": "page" if scaler else ("torch" if precision == "16-mixed" else None),
            "steps_per_s": r.status.get("steps_per_s"),
            "median_step_ms": r.status.get("median_step_ms"),
            "loss_first": float(m.loss[0]),
            "loss_last10": float(np.nanmean(m.loss[-10:])),
            "grads": gradient_shares(r.path, m.step, m.loss_scale),
        }
        if precision == "16-mixed":
            row["scale"] = scale_story(m.loss_scale, m.skipped.astype(bool))
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--workloads", default="mlp,gpt")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [row for w in args.workloads.split(",") for row in measure(w, args.steps, tmp)]
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
