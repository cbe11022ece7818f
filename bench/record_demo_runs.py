"""Record the demo runs shipped in demo_runs/ (issue 12), with the project's own CLI, on a GPU.

    python bench/record_demo_runs.py --into demo_runs                 # on the GPU machine (bench/gpu_proof.sh calls it)
    python bench/record_demo_runs.py --into /tmp/rehearsal --rehearse # anywhere: a CPU-sized rehearsal, never shipped

What it records, each with `python -m amp_core.train` into a staging folder, then published (its
provenance written, moved into --into) by amp_core.record.recordings:

    the MLP (and the GPT workload, where the trainer has `--workload gpt`) under 16-mixed with a real
    backoff and a real growth: a high initial scale (2^24) overflows the first steps until the scale
    has backed off far enough, then a short growth interval doubles it again, several times; no injection;
    the same model, data and seed under bf16-mixed and 32-true;
    one MLP run under 16-mixed with overflows injected at two steps (labelled so in its provenance);
    with --group DIR, the runs of one comparison (`python -m amp_core.compare --runs-dir DIR`), with
    --group-command, the command that made them.

The runs are small (a few hundred steps, a histogram every 10): a few hundred KiB in all. Runs that
measure nothing run side by side (--parallel); their numerics do not depend on it. The last line of
the output is a JSON summary: per recording its label, state, steps, skipped steps, backoffs, growths.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from amp_core.record import list_runs, load_run  # noqa: E402
from amp_core.record.recordings import RecordingError, machine_facts, publish  # noqa: E402

MLP = ["--hidden", "256", "--depth", "3", "--batch-size", "64"]
FP16_DEMO_SCALE = 2**24  # far above what the gradients allow in fp16: the first steps overflow for real
SIZES = {  # (steps, growth interval, injected overflow steps)
    "gpu": (400, 40, (150, 300)),
    "cpu": (40, 5, (10, 30)),  # rehearsal: CPU fp16 is emulated and slow, and the CPU box is shared
}


def train_help() -> str:
    out = subprocess.run(
        [sys.executable, "-m", "amp_core.train", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    return out.stdout


def has_gpt_workload(help_text: str) -> bool:
    return "--workload" in help_text and "gpt" in help_text.split("--workload", 1)[1][:400].lower()


def plan(accelerator: str, workloads: list[str]) -> list[tuple[str, list[str]]]:
    """(label, train arguments) of each recording."""
    steps, growth, injected = SIZES[accelerator]
    common = [
        "--accelerator",
        accelerator,
        "--max-steps",
        str(steps),
        "--histogram-every",
        "10",
        "--wandb",
        "disabled",
        "--seed",
        "0",
    ]
    out = []
    for workload in workloads:
        model = MLP if workload == "mlp" else ["--workload", workload]
        base = model + common
        out += [
            (
                f"{workload}: 16-mixed, real backoffs and growths (initial scale 2^24, growth interval {growth}; nothing injected)",
                [
                    *base,
                    "--precision",
                    "16-mixed",
                    "--init-scale",
                    str(FP16_DEMO_SCALE),
                    "--growth-interval",
                    str(growth),
                ],
            ),
            (
                f"{workload}: bf16-mixed, same model, data and seed (no loss scaling)",
                [*base, "--precision", "bf16-mixed"],
            ),
            (f"{workload}: 32-true, same model, data and seed (the baseline)", [*base, "--precision", "32-true"]),
        ]
    out.append(
        (
            f"mlp: 16-mixed with overflows injected on purpose at steps {', '.join(map(str, injected))}",
            [
                *MLP,
                *common,
                "--precision",
                "16-mixed",
                "--growth-interval",
                str(growth),
                "--inject-overflow",
                ",".join(map(str, injected)),
            ],
        )
    )
    return out


def train(args: list[str], stage: Path) -> tuple[Path | None, str, str]:
    """One `python -m amp_core.train` run into `stage`: (run folder or None, the command, its error)."""
    argv = ["-m", "amp_core.train", *args, "--runs-dir", str(stage)]
    command = "python " + shlex.join(argv)
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "4"), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=ROOT, env=env)
    lines = proc.stdout.strip().splitlines()
    path = Path(lines[-1]) if lines and Path(lines[-1]).is_dir() else None
    error = "" if proc.returncode == 0 else (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
    return path, command, error


def publish_one(path: Path, into: Path, command: str, label: str, machine: dict, published: list, errors: list) -> None:
    try:
        published.append((publish(path, into, command, label, machine), label))
        print(f"published {published[-1][0].name}: {label}", flush=True)
    except RecordingError as e:
        errors.append(f"{label}: not published: {e}")


def scale_events(path: Path) -> dict:
    run = load_run(path)
    scale = run.metrics.loss_scale
    changes = np.diff(scale[~np.isnan(scale)])
    return {
        "steps": len(run.metrics),
        "skipped": run.skipped_steps,
        "backoffs": int((changes < 0).sum()),
        "growths": int((changes > 0).sum()),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--into", required=True, help="the recordings folder (demo_runs/ on the GPU machine)")
    p.add_argument(
        "--rehearse", action="store_true", help="CPU-sized runs on the CPU (for trying this script; never shipped)"
    )
    p.add_argument("--group", default=None, help="a runs folder holding one comparison to publish as recordings too")
    p.add_argument("--group-command", default="python -m amp_core.compare", help="the command that made --group")
    p.add_argument("--parallel", type=int, default=4)
    args = p.parse_args()
    accelerator = "cpu" if args.rehearse else "gpu"
    into = Path(args.into)
    help_text = train_help()
    workloads = ["mlp", *(["gpt"] if has_gpt_workload(help_text) else [])]
    summary: dict = {
        "accelerator": accelerator,
        "workloads": workloads,
        "gpt": "recorded" if "gpt" in workloads else "not available: amp_core.train has no --workload gpt",
        "recordings": [],
        "errors": [],
    }
    machine = machine_facts()
    with tempfile.TemporaryDirectory(prefix="amp-record-stage-") as stage:
        published = []
        for run in list_runs(args.group) if args.group else []:
            label = f"comparison {run.config.get('compare_group')}: {run.precision} (matmul precision {run.config.get('matmul_precision')})"
            publish_one(run.path, into, args.group_command, label, machine, published, summary["errors"])
        with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
            # Each run is published as soon as it ends: a phase cut short keeps the recordings made so far.
            futures = {
                pool.submit(train, job_args, Path(stage)): label for label, job_args in plan(accelerator, workloads)
            }
            for future in as_completed(futures):
                label, (path, command, error) = futures[future], future.result()
                if path is None or error:
                    summary["errors"].append(f"{label}: {error or 'no run folder printed'}")
                    continue
                publish_one(path, into, command, label, machine, published, summary["errors"])
    for dest, label in published:
        size = sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
        summary["recordings"].append(
            {"id": dest.name, "label": label, "state": load_run(dest).state, "bytes": size, **scale_events(dest)}
        )
    fp16 = [r for r in summary["recordings"] if "real backoffs" in r["label"]]
    summary["fp16_shows_backoff_and_growth"] = bool(fp16) and all(r["backoffs"] > 0 and r["growths"] > 0 for r in fp16)
    summary["total_bytes"] = sum(r["bytes"] for r in summary["recordings"])
    for r in summary["recordings"]:
        print(
            f"{r['state']:<9} {r['steps']:>4} steps  skipped {r['skipped']:>3}  backoffs {r['backoffs']:>3}  growths {r['growths']:>3}  {r['bytes'] / 1024:7.1f} KiB  {r['label']}"
        )
    for e in summary["errors"]:
        print(f"error: {e}")
    print(json.dumps(summary, separators=(",", ":")))
    return 0 if not summary["errors"] and summary["fp16_shows_backoff_and_growth"] else 1


if __name__ == "__main__":
    sys.exit(main())
