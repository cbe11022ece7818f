"""The same model, data and seed under several precisions, side by side.

    python -m amp_core.compare --precisions 32-true,16-mixed,bf16-mixed --max-steps 100 --hidden 1024 --depth 4

Each precision is a normal run (the Runs page replays it) with `time_steps` on and a shared
`compare_group`. The CLI runs them one after another, each in its own process: no two runs share the
machine, and the memory a run adds is its own (amp_core.training.memory). The page queues them through the
Launcher (one run per device at a time, each in a fresh worker process). A comparison needs enough
steps for its medians (compare_summary.MIN_TIMED_STEPS): fewer are refused before anything runs.

This module plans and runs; compare_summary reads a comparison back from its run records (the same
numbers for the CLI and the page), compare_figures draws it. Their public names are importable from
here. Only the standard library, NumPy and Plotly at import: the page imports this without torch.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from amp_core.analysis.compare_figures import (  # noqa: F401  (public names of amp_core.compare)
    CHECK_MARK,
    FLOPS_UNITS,
    TABLE_COLUMNS,
    bar_figure,
    flops_unit,
    format_table,
    loss_figure,
    peak_label,
    ratio_figure,
)
from amp_core.analysis.compare_summary import (  # noqa: F401  (public names of amp_core.compare)
    BASELINE,
    CUDA_MEMORY_KIND,
    FP32_MATMUL_DTYPE,
    MATMUL_DTYPE,
    MATMUL_SUFFIX,
    MIN_TIMED_STEPS,
    PEAK_TFLOPS,
    RSS_MEMORY_KIND,
    TARGETS,
    TF32,
    TOO_FEW_STEPS,
    cpu_notes,
    group_runs,
    list_groups,
    min_comparison_steps,
    peak_tflops,
    summarize_group,
    timed_steps_for,
    too_few_steps_message,
    variant_of,
)
from amp_core.record import default_runs_dir

DEFAULT_VARIANTS = ("32-true", "16-mixed", "bf16-mixed")
ALIASES = {"tf32": TF32, "32+tf32": TF32, "32-true+tf32": TF32}
# The run settings a comparison fixes for all its runs, as `python -m amp_core.train` flags.
TRAIN_FLAGS = (
    "precision",
    "matmul_precision",
    "accelerator",
    "max_steps",
    "batch_size",
    "lr",
    "seed",
    "hidden",
    "depth",
    "wandb",
    "runs_dir",
    "compare_group",
)
# The workload and the settings of the workloads other than the demo MLP's, passed through as they are.
WORKLOAD_FLAGS = ("workload", "layers", "heads", "width", "context", "model", "data", "path")
TRAIN_FLAGS += WORKLOAD_FLAGS


def new_group_id() -> str:
    return f"cmp-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def default_variants(on_cuda: bool) -> list[str]:
    return [*DEFAULT_VARIANTS, *([TF32] if on_cuda else [])]


def parse_variants(names: Iterable[str]) -> list[str]:
    """Normalised variant names, 32-true first (the baseline always runs); raises ConfigError."""
    from amp_core.precision import normalize_precision
    from amp_core.training.cli import ConfigError

    out = [BASELINE]
    for name in (str(n).strip() for n in names):
        if not name:
            continue
        try:
            variant = ALIASES.get(name.lower()) or normalize_precision(name)
        except ValueError:
            raise ConfigError(
                f"not a precision: {name!r} (use Lightning values such as 32-true, 16-mixed, bf16-mixed, or {TF32})"
            ) from None
        if variant not in out:
            out.append(variant)
    return out


def plan(variants: Iterable[str], *, on_cuda: bool, group: str | None = None, **settings: Any) -> list:
    """One validated RunConfig per variant (baseline first), all with one new compare group.

    `settings`: RunConfig fields shared by every run (max_steps, batch_size, hidden, depth, ...).
    """
    from amp_core.training.cli import ConfigError, RunConfig

    variants = parse_variants(variants)
    if TF32 in variants and not on_cuda:
        raise ConfigError(
            f"{TF32} needs a CUDA GPU: TF32 is a tensor-core mode of NVIDIA GPUs (Ampere and newer), and these runs are on the CPU"
        )
    group = group or new_group_id()
    settings = {"wandb": "disabled", **settings}
    configs = []
    for variant in variants:
        precision, _, suffix = variant.partition("+")
        matmul = "high" if suffix == "tf32" else "highest"
        configs.append(
            RunConfig(
                precision=precision, matmul_precision=matmul, time_steps=True, compare_group=group, **settings
            ).validate()
        )
    if (
        timed_steps_for(configs[0].max_steps) < MIN_TIMED_STEPS
    ):  # after validate: a bad step count gets its own message first
        raise ConfigError(too_few_steps_message(configs[0].max_steps))
    return configs


def train_argv(config: Any) -> list[str]:
    """`python -m amp_core.train` (and amp_core.training.compare_run) arguments for one planned run."""
    args = [
        f"--{name.replace('_', '-')}={getattr(config, name)}" for name in TRAIN_FLAGS if getattr(config, name) != ""
    ]
    return [*args, "--time-steps"]


# -- the CLI ---------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    from amp_core.training.cli import OneLineParser

    p = OneLineParser(
        prog="python -m amp_core.compare",
        description="The same model, data and seed under several precisions, side by side.",
    )
    p.add_argument(
        "--precisions",
        default="",
        help=f"comma-separated, e.g. 32-true,16-mixed,bf16-mixed (the default; on CUDA also {TF32}); 32-true always runs",
    )
    p.add_argument("--accelerator", default="auto", help="auto, cpu or gpu")
    p.add_argument(
        "--max-steps",
        type=int,
        default=100,
        help=f"steps per run; at least {min_comparison_steps()}: a median of {MIN_TIMED_STEPS} steps after the warm-up",
    )
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--hidden", type=int, default=1024, help="width of the demo MLP: wider is more matmul-bound")
    p.add_argument("--depth", type=int, default=4, help="hidden layers of the demo MLP")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--wandb", default="disabled", help="disabled (default), offline or online")
    p.add_argument("--runs-dir", default=None, help="where run records go (default: $AMP_RUNS_DIR or runs/)")
    p.add_argument("--json", default=None, help="also write the JSON summary to this file")
    from amp_core.training.config import RULES

    for name in WORKLOAD_FLAGS:
        p.add_argument(f"--{name}", type=int if RULES[name].kind == "int" else str, default=None, help=RULES[name].help)
    return p


def _child_env() -> dict:
    root = str(Path(__file__).resolve().parents[2])  # `-m amp_core.train` must import this very package
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}


def main(argv: list[str] | None = None) -> int:
    from amp_core.training.cli import ConfigError, UsageError, resolve_accelerator

    def error(message: str) -> int:
        print(f"amp_core.compare: error: {message}", file=sys.stderr)
        return 2

    try:
        args = parser().parse_args(argv)
        if args.json and not Path(args.json).resolve().parent.is_dir():
            raise ConfigError(f"json: the folder of {args.json!r} does not exist")
        on_cuda = resolve_accelerator(args.accelerator) == "gpu"
        names = args.precisions.split(",") if args.precisions.strip() else default_variants(on_cuda)
        configs = plan(
            names,
            on_cuda=on_cuda,
            accelerator=args.accelerator,
            max_steps=args.max_steps,
            batch_size=args.batch_size,
            hidden=args.hidden,
            depth=args.depth,
            seed=args.seed,
            lr=args.lr,
            wandb=args.wandb,
            runs_dir=args.runs_dir or str(default_runs_dir()),
            **{name: getattr(args, name) for name in WORKLOAD_FLAGS if getattr(args, name) is not None},
        )
    except (ConfigError, UsageError) as e:
        return error(str(e))

    group, runs_dir = configs[0].compare_group, configs[0].runs_dir
    for i, config in enumerate(configs, 1):
        variant = config.precision + MATMUL_SUFFIX[config.matmul_precision]
        print(f"[{i}/{len(configs)}] {variant}: {config.max_steps} steps ...", file=sys.stderr, flush=True)
        # One run at a time, each in its own process (warmed as the app's worker is): its timing undisturbed, its memory its own.
        proc = subprocess.run(
            [sys.executable, "-m", "amp_core.training.compare_run", *train_argv(config)],
            env=_child_env(),
            capture_output=True,
            text=True,
        )
        if proc.returncode == 2:  # bad input the plan could not see (e.g. an unwritable runs dir): nothing ran
            return error(
                (proc.stderr.strip().splitlines() or ["the run refused its settings"])[-1].removeprefix(
                    "amp_core.train: error: "
                )
            )
        if proc.returncode != 0:
            print(f"  {variant} failed: {(proc.stderr.strip().splitlines() or ['no message'])[-1]}", file=sys.stderr)

    summary = summarize_group(group_runs(runs_dir, group))
    print(format_table(summary))
    for note in summary["notes"]:
        print(f"- {note}")
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, separators=(",", ":")))  # the last line: the JSON summary
    return 0 if summary["complete"] and all(r["state"] == "completed" for r in summary["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
