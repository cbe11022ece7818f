"""Compare, as a benchmark: the app's own comparison on this CPU, and on CUDA when there is one.

    python bench/compare_bench.py [--quick] [--cuda]   # prints the figures; bench/run.py puts them in the report

`figures` (section "compare", CPU): for the MLP and the GPT workload, each at a size where matmuls
take most of a step, the step time, TFLOP/s, the memory the run itself used (the RSS it added) and
the loss difference of each precision against 32-true. `cuda_figures` (section "cuda"): the same on a
GPU with 32-true+tf32 added and the share of the GPU's dense peak, then the host syncs per step the
monitor's hooks add (counted in sync debug mode) and the monitor's overhead there.

The runs are the Compare machinery's: amp_core.analysis.compare.plan makes one RunConfig per variant
in a shared compare group, each run is `python -m amp_core.training.compare_run` in a fresh process
(as `python -m amp_core.compare` runs them), and compare_summary.summarize_group reads the figures back
from the run records. Side by side: a workload's comparison is repeated with the run order reversed
each time (32-true first, then last, ...); a ratio is the median over the comparisons of the ratio
within one, a step time the median of the runs' own medians.

FLOPs are each workload's `matmul_flops_per_step`: the MLP's 6 * batch * sum(in * out) over its Linear
layers (2mnk forward, twice that backward); the GPT's nanoGPT estimate, 6 * N per token (N the
parameters without the position table, the tied head once) plus 12 * layers * width * context for
attention, times batch * context tokens. TFLOP/s is that over the median step time. That matmuls
dominate at these sizes is checked, not assumed: torch.profiler over a few plain-torch steps of the
same model and batch gives the share of CPU time in matmul kernels.

CPU runs use one intra-op thread (OMP_NUM_THREADS=1). On this shared 2-core box two OpenMP threads
competing with other processes wait at their barriers: the MLP below took 1418 ms a step with two
threads and 278 ms with one under a load of about 4, a swing no pairing evens out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for _path in (str(BENCH), str(REPO)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from report import Figure, figure, not_measured  # noqa: E402

from amp_core.analysis.compare import plan, train_argv  # noqa: E402
from amp_core.analysis.compare_summary import (  # noqa: E402
    BASELINE,
    TARGETS,
    group_runs,
    min_comparison_steps,
    summarize_group,
)

CPU, CUDA = "compare", "cuda"
# (workload, RunConfig settings): matmul-bound on this CPU (profiled: 71-78% of a 32-true MLP step and 82-85%
# of a GPT step in matmul kernels) yet a fraction of a second a step on one thread.
CPU_SIZES = {
    "mlp": {"hidden": 1024, "depth": 4, "batch_size": 256},
    "gpt": {"workload": "gpt", "layers": 2, "heads": 4, "width": 256, "context": 64, "batch_size": 16},
}
# bench/gpu_proof.py's sizes: matmul-bound on an H100/H200 (the GPT about 25M parameters, 8k tokens a step).
CUDA_SIZES = {
    "mlp": {"hidden": 8192, "depth": 4, "batch_size": 8192},
    "gpt": {"workload": "gpt", "layers": 8, "heads": 8, "width": 512, "context": 256, "batch_size": 32},
}
# (variants, steps, comparisons per workload). 16-mixed is emulated on a CPU without fp16 units (about
# 10x slower than 32-true), so the quick run leaves it to the full one.
CPU_PLAN = {
    True: (("32-true", "bf16-mixed"), min_comparison_steps(), 2),
    False: (("32-true", "bf16-mixed", "16-mixed"), 30, 2),
}
CUDA_VARIANTS = ("32-true", "32-true+tf32", "bf16-mixed", "16-mixed")
CUDA_PLAN = {True: (CUDA_VARIANTS, min_comparison_steps(), 2), False: (CUDA_VARIANTS, 100, 4)}
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")  # + SDPA's kernels (matched by prefix)
RUN_LIMIT_S = 900


def run_env(accelerator: str) -> dict:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    if accelerator == "cpu":
        env["OMP_NUM_THREADS"] = "1"  # see the module docstring
    return env


def compare_once(settings: dict, variants: tuple, steps: int, runs_dir: Path, accelerator: str, backward: bool) -> dict:
    """One comparison, planned by Compare, each run its own process; its summary from the run records."""
    configs = plan(
        variants,
        on_cuda=accelerator == "gpu",
        accelerator=accelerator,
        max_steps=steps,
        runs_dir=str(runs_dir),
        **settings,
    )
    for config in configs[::-1] if backward else configs:
        argv = [sys.executable, "-m", "amp_core.training.compare_run", *train_argv(config)]
        proc = subprocess.run(
            argv, cwd=REPO, env=run_env(accelerator), capture_output=True, text=True, timeout=RUN_LIMIT_S
        )
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["no message"])[-1]
            raise RuntimeError(f"the {config.precision} run exited with code {proc.returncode}: {last}")
    summary = summarize_group(group_runs(runs_dir, configs[0].compare_group))
    states = {r["variant"]: r["state"] for r in summary["rows"]}
    if set(states.values()) != {"completed"}:
        raise RuntimeError(f"not every run completed: {states}; {'; '.join(summary['notes'][:2])}")
    return summary


def _values(summaries: list[dict], variant: str, key: str) -> list[float]:
    return [r[key] for s in summaries for r in s["rows"] if r["variant"] == variant and r[key] is not None]


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _spread(values: list[float]) -> str:
    return ", ".join(f"{x:.3g}" for x in values)


def variant_figures(
    section: str, name: str, variant: str, summaries: list[dict], size: str, cuda: bool
) -> list[Figure]:
    """One variant's figures over a workload's comparisons: absolute first, then its ratios to 32-true."""
    s0, n = summaries[0], len(summaries)
    values = {k: _values(summaries, variant, k) for k in ("median_step_ms", "tflops", "peak_share", "memory_mib")}
    gflop = (s0["settings"].get("matmul_flops_per_step") or 0) / 1e9
    timed = next(r["timed_steps"] for r in s0["rows"] if r["variant"] == variant)
    dtype = next(r["matmul_dtype"] for r in s0["rows"] if r["variant"] == variant)
    out = [
        figure(section, f"{name}: step time", _median(values["median_step_ms"]), "ms",
               f"{size}: median over {n} runs of each run's median of {timed} timed steps (runs: {_spread(values['median_step_ms'])} ms)"),
        figure(section, f"{name}: TFLOP/s", _median(values["tflops"]), "TFLOP/s",
               f"{gflop:.3g} GFLOP of matmuls a step (the workload's matmul_flops_per_step) / median step time"),
        figure(section, f"{name}: memory the run used", _median(values["memory_mib"]), "MiB", s0["memory_kind"] or "not measured"),
    ]  # fmt: skip
    if cuda:
        out.insert(2, figure(section, f"{name}: share of dense peak", _median(values["peak_share"]), "",
                             f"TFLOP/s over the {s0['device']}'s dense {dtype} peak (compare_summary.PEAK_TFLOPS)"))  # fmt: skip
    if variant == BASELINE:
        return out
    speedups = _values(summaries, variant, "speedup")
    reductions = _values(summaries, variant, "memory_reduction")
    diffs = _values(summaries, variant, "loss_diff")
    diff, goal = _median(diffs), TARGETS["loss_diff"]
    return out + [
        figure(section, f"{name}: speedup over 32-true", _median(speedups), "x",
               f"32-true's median step / {variant}'s within each comparison, median over {n} in alternating order "
               f"(each: {_spread(speedups)})", at_least=TARGETS["speedup"]),
        figure(section, f"{name}: memory reduction", _median(reductions), "",
               f"1 - its memory / 32-true's, median over {n} (each: {_spread(reductions)}); the 40% target is a GPU figure",
               at_least=TARGETS["memory_reduction"]),
        Figure(section, f"{name}: loss difference", diff, "", f"|diff| < {goal:g}", None if diff is None else abs(diff) < goal,
               f"final loss minus 32-true's after {s0['settings']['max_steps']} steps, same model, data and seed (each: {_spread(diffs)})"),
    ]  # fmt: skip


def workload_figures(section: str, workload: str, summaries: list[dict], size: str, cuda: bool) -> list[Figure]:
    """The figures of one workload from its comparisons (summaries of summarize_group), baseline first."""
    variants = [r["variant"] for r in summaries[0]["rows"]]
    return [f for v in variants for f in variant_figures(section, f"{workload} {v}", v, summaries, size, cuda)]


def matmul_share(settings: dict, accelerator: str = "cpu", steps: int = 3) -> float:
    """Share of CPU time in matmul kernels over `steps` plain-torch 32-true steps of the workload's model."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from amp_core.training.config import RunConfig
    from amp_core.training.workloads import WORKLOADS

    torch.set_num_threads(1)  # as the runs
    config = RunConfig(accelerator=accelerator, max_steps=steps + 2, wandb="disabled", **settings).validate()
    built = WORKLOADS[settings.get("workload", "mlp")].build(config)
    module, batch = built.module, next(iter(built.data))
    optimizer = module.configure_optimizers()

    def step() -> None:
        module.training_step(batch, 0).backward()
        optimizer.step()
        optimizer.zero_grad()

    step()  # warm-up: the first step allocates
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    matmul = sum(
        e.self_cpu_time_total for e in events if e.key in MATMUL_OPS or e.key.startswith("aten::_scaled_dot_product")
    )
    return matmul / total if total else float("nan")


def compare_section(section: str, quick: bool, tmp: Path, accelerator: str) -> list[Figure]:
    cuda = accelerator == "gpu"
    variants, steps, repeats = (CUDA_PLAN if cuda else CPU_PLAN)[quick]
    out = []
    for workload, settings in (CUDA_SIZES if cuda else CPU_SIZES).items():
        size = ", ".join(f"{k} {v}" for k, v in settings.items() if k != "workload")
        if not cuda:
            share = matmul_share(settings)
            out.append(figure(section, f"{workload}: matmul share of a 32-true step", share, "", f"torch.profiler, {size}, 1 thread: "
                              "self CPU time in mm/addmm/bmm/SDPA over all ops, plain-torch steps", at_least=0.5))  # fmt: skip
            print(f"compare {workload}: matmul share {share:.0%} of a 32-true step", flush=True)
        summaries = []
        for i in range(repeats):
            summaries.append(
                compare_once(settings, variants, steps, tmp / f"{workload}-runs", accelerator, backward=i % 2 == 1)
            )
            rows = ", ".join(f"{r['variant']} {r['median_step_ms']:.1f} ms" for r in summaries[-1]["rows"])
            print(f"compare {workload} #{i + 1}{' (reversed)' if i % 2 else ''}: {rows}", flush=True)
        out += workload_figures(section, workload, summaries, size, cuda)
    return out


def figures(quick: bool, tmp: Path) -> list[Figure]:
    """Compare on this CPU (bench/run.py's "compare" benchmark)."""
    return compare_section(CPU, quick, Path(tmp), "cpu")


def monitor_on_cuda(quick: bool, tmp: Path) -> list[Figure]:
    """Host syncs the monitor adds per step (amp_core.training.sync_check), then its overhead on CUDA.

    The overhead comes from bench/monitor_overhead.py's `cuda_figures(quick, tmp)` where that module
    has one (its interleaved A/B turns are the one place the monitor's cost is measured); else it is
    reported as not measured, with why."""
    from amp_core.training.sync_check import count_monitor_syncs

    steps = 50 if quick else 200
    out = []
    for precision in ("32-true", "bf16-mixed", "16-mixed"):
        c = count_monitor_syncs(precision, steps, Path(tmp) / "sync", histogram_every=25)
        how = (f"torch.cuda.set_sync_debug_mode('warn') inside the monitor's per-step hooks, warnings counted over "
               f"{c['steps']} steps (histogram every 25); hooks: {c['hook_syncs']}")  # fmt: skip
        out.append(
            figure(
                CUDA, f"monitor {precision}: host syncs added per step", c["syncs_per_step"], "syncs", how, at_most=0
            )
        )
        print(f"cuda {out[-1].name}: {c['syncs_per_step']:g}", flush=True)
    import monitor_overhead

    overhead = getattr(monitor_overhead, "cuda_figures", None)
    if overhead is None:
        why = "bench/monitor_overhead.py has no cuda_figures(quick, tmp): its interleaved turns run on the CPU only"
        return out + [not_measured(CUDA, "monitor: overhead per step on CUDA", "x", why, goal="<= 1.03")]
    return out + overhead(quick, Path(tmp) / "overhead")


def cuda_figures(quick: bool, tmp: Path) -> list[Figure]:
    """On CUDA (bench/run.py's "cuda" benchmark): Compare with TF32 and the share of peak, the monitor's syncs and cost."""
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA GPU visible to torch: the cuda benchmark runs only on a GPU machine")
    return compare_section(CUDA, quick, Path(tmp), "gpu") + monitor_on_cuda(quick, Path(tmp))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--cuda", action="store_true", help="the CUDA section instead of the CPU one")
    args = p.parse_args()
    import tempfile

    with tempfile.TemporaryDirectory(prefix="amp-compare-bench-") as tmp:
        found = (cuda_figures if args.cuda else figures)(args.quick, Path(tmp))
    for f in found:
        print(json.dumps(f.to_json()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
