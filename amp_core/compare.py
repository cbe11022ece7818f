"""The same model, data and seed under several precisions, side by side.

    python -m amp_core.compare --precisions 32-true,16-mixed,bf16-mixed --max-steps 100 --hidden 1024 --depth 4

Each precision is a normal run (the Runs page replays it) with `time_steps` on and a shared
`compare_group`. The CLI runs them one after another, each in its own process: no two runs share the
machine, and a run's peak RSS is its own. The page queues them through the Launcher (one run per
device at a time). `summarize_group` is a pure function of the run records, so the CLI and the page
show the same numbers, and a past comparison can be shown again from the runs directory.

Only the standard library, NumPy and Plotly at import: the page imports this without torch.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import plotly.graph_objects as go

from amp_core import charts
from amp_core.charts import PALETTE
from amp_core.runs import FINAL_STATES, Run, default_runs_dir, list_runs

BASELINE = "32-true"
TF32 = "32-true+tf32"
DEFAULT_VARIANTS = ("32-true", "16-mixed", "bf16-mixed")
ALIASES = {"tf32": TF32, "32+tf32": TF32, "32-true+tf32": TF32}
# The usual AMP targets against 32-true.
TARGETS = {"speedup": 1.5, "memory_reduction": 0.40, "loss_diff": 0.01}

# torch.set_float32_matmul_precision of a variant, and the suffix that names it.
MATMUL_SUFFIX = {"highest": "", "high": "+tf32", "medium": "+medium"}
# The dtype a variant's matmuls run in (what the GPU's peak is quoted for).
MATMUL_DTYPE = {"16-mixed": "fp16", "16-true": "fp16", "bf16-mixed": "bf16", "bf16-true": "bf16"}
FP32_MATMUL_DTYPE = {"highest": "fp32", "high": "tf32", "medium": "bf16"}
# Dense (no sparsity) peak TFLOP/s by device-name substring; the first match wins, so variants come
# before the plain name.
PEAK_TFLOPS = (
    ("H100 PCIe", {"fp32": 51, "tf32": 378, "fp16": 756, "bf16": 756}),
    ("H100 NVL", {"fp32": 60, "tf32": 418, "fp16": 835, "bf16": 835}),
    ("H200 NVL", {"fp32": 60, "tf32": 418, "fp16": 835, "bf16": 835}),
    ("H100", {"fp32": 67, "tf32": 495, "fp16": 989, "bf16": 989}),
    ("H200", {"fp32": 67, "tf32": 495, "fp16": 989, "bf16": 989}),
    ("A100", {"fp32": 19.5, "tf32": 156, "fp16": 312, "bf16": 312}),
)
MEMORY_KIND = {"gpu": "CUDA allocator peak", "cpu": "process peak RSS"}
MEMORY_FIELD = {"gpu": "cuda_peak_mib", "cpu": "peak_rss_mib"}
# The run settings a comparison fixes for all its runs, as `python -m amp_core.train` flags.
TRAIN_FLAGS = ("precision", "matmul_precision", "accelerator", "max_steps", "batch_size", "lr", "seed", "hidden", "depth", "wandb", "runs_dir", "compare_group")
# The workload and the settings of the workloads other than the demo MLP's, passed through as they are.
WORKLOAD_FLAGS = ("workload", "layers", "heads", "width", "context", "model", "data", "path")
TRAIN_FLAGS += WORKLOAD_FLAGS


class _ArgumentError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, no usage dump
        raise _ArgumentError(message)


def new_group_id() -> str:
    return f"cmp-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def default_variants(on_cuda: bool) -> list[str]:
    return [*DEFAULT_VARIANTS, *([TF32] if on_cuda else [])]


def parse_variants(names: Iterable[str]) -> list[str]:
    """Normalised variant names, 32-true first (the baseline always runs); raises ConfigError."""
    from amp_core.precision import normalize_precision
    from amp_core.train import ConfigError

    out = [BASELINE]
    for name in (str(n).strip() for n in names):
        if not name:
            continue
        try:
            variant = ALIASES.get(name.lower()) or normalize_precision(name)
        except ValueError:
            raise ConfigError(f"not a precision: {name!r} (use Lightning values such as 32-true, 16-mixed, bf16-mixed, or {TF32})") from None
        if variant not in out:
            out.append(variant)
    return out


def plan(variants: Iterable[str], *, on_cuda: bool, group: str | None = None, **settings: Any) -> list:
    """One validated RunConfig per variant (baseline first), all with one new compare group.

    `settings`: RunConfig fields shared by every run (max_steps, batch_size, hidden, depth, ...).
    """
    from amp_core.train import ConfigError, RunConfig

    variants = parse_variants(variants)
    if TF32 in variants and not on_cuda:
        raise ConfigError(f"{TF32} needs a CUDA GPU: TF32 is a tensor-core mode of NVIDIA GPUs (Ampere and newer), and these runs are on the CPU")
    group = group or new_group_id()
    settings = {"wandb": "disabled", **settings}
    configs = []
    for variant in variants:
        precision, _, suffix = variant.partition("+")
        matmul = "high" if suffix == "tf32" else "highest"
        configs.append(RunConfig(precision=precision, matmul_precision=matmul, time_steps=True, compare_group=group, **settings).validate())
    return configs


def train_argv(config: Any) -> list[str]:
    """`python -m amp_core.train` arguments for one planned run."""
    args = [f"--{name.replace('_', '-')}={getattr(config, name)}" for name in TRAIN_FLAGS if getattr(config, name) != ""]
    return [*args, "--time-steps"]


# -- reading a comparison back from the run records ------------------------------------------


def variant_of(run: Run) -> str:
    return run.precision + MATMUL_SUFFIX.get(str(run.config.get("matmul_precision", "highest")), "+?")


def _created(r: Run) -> str:
    return str(r.status.get("created_at") or r.config.get("created_at") or "")


def _order(r: Run) -> tuple:
    return (variant_of(r) != BASELINE, _created(r), r.id)  # the baseline first, then in the order they were made


def group_runs(runs_dir: str | os.PathLike, group: str) -> list[Run]:
    """The runs of one comparison, baseline first."""
    runs = [r for r in list_runs(runs_dir) if r.config.get("compare_group") == group]
    return sorted(runs, key=_order)


def list_groups(runs_dir: str | os.PathLike) -> list[dict]:
    """Every comparison in `runs_dir`, newest first: id, when, its variants and their states."""
    groups: dict[str, list[Run]] = {}
    for r in list_runs(runs_dir):
        if isinstance(r.config.get("compare_group"), str) and r.config["compare_group"]:
            groups.setdefault(r.config["compare_group"], []).append(r)
    out = []
    for group, runs in groups.items():
        runs.sort(key=_order)
        c = runs[0].config
        out.append({
            "group": group,
            "created_at": min(_created(r) for r in runs),
            "variants": [variant_of(r) for r in runs],
            "states": [r.state for r in runs],
            "settings": f"hidden {c.get('hidden')} × depth {c.get('depth')}, batch {c.get('batch_size')}, {c.get('max_steps')} steps",
        })
    return sorted(out, key=lambda g: (g["created_at"], g["group"]), reverse=True)


def peak_tflops(device_name: str | None, dtype: str | None) -> float | None:
    """The GPU's dense peak for `dtype`, or None for an unknown GPU, a CPU or a dtype without a peak."""
    if not device_name or not dtype:
        return None
    return next((peaks.get(dtype) for name, peaks in PEAK_TFLOPS if name.lower() in device_name.lower()), None)


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _row(run: Run) -> dict:
    c, s, m = run.config, run.status, run.metrics
    accel = c.get("accelerator_resolved") or "cpu"
    device = (c.get("hardware") or {}).get("device_name") if accel == "gpu" else None
    matmul = str(c.get("matmul_precision", "highest"))
    dtype = MATMUL_DTYPE.get(run.precision) or (FP32_MATMUL_DTYPE.get(matmul) if run.precision == "32-true" else None)
    step_ms = _num(s.get("median_step_ms"))
    flops = _num(c.get("matmul_flops_per_step"))
    tflops = flops / (step_ms / 1e3) / 1e12 if flops is not None and step_ms else None
    peak = peak_tflops(device, dtype)
    return {
        "variant": variant_of(run),
        "run_id": run.id,
        "state": run.state,
        "precision": run.precision,
        "matmul_precision": matmul,
        "matmul_dtype": dtype,
        "device": device or "cpu",
        "steps": len(m),
        "timed_steps": s.get("timed_steps"),
        "median_step_ms": step_ms,
        "steps_per_s": _num(s.get("steps_per_s")),
        "samples_per_s": _num(s.get("samples_per_s")),
        "tflops": tflops,
        "peak_tflops": peak,
        "peak_share": _ratio(tflops, peak),
        "memory_mib": _num(s.get(MEMORY_FIELD.get(accel, "peak_rss_mib"))),
        "memory_kind": MEMORY_KIND.get(accel, MEMORY_KIND["cpu"]),
        "final_loss": float(m.loss[-1]) if len(m) and np.isfinite(m.loss[-1]) else None,
        "skipped_steps": run.skipped_steps,
        "error": s.get("error"),
    }


def _against(row: dict, base: dict | None) -> dict:
    """Ratios and verdict of one row against the baseline row (None where a value is missing)."""
    base = base or dict.fromkeys(row)
    is_base = row["run_id"] == base["run_id"]
    speedup = _ratio(base["median_step_ms"], row["median_step_ms"])
    memory_ratio = _ratio(row["memory_mib"], base["memory_mib"])
    loss_diff = row["final_loss"] - base["final_loss"] if row["final_loss"] is not None and base["final_loss"] is not None else None
    checks = {
        "speedup_ok": None if speedup is None else speedup >= TARGETS["speedup"],
        "memory_ok": None if memory_ratio is None else 1 - memory_ratio >= TARGETS["memory_reduction"],
        "loss_ok": None if loss_diff is None else abs(loss_diff) < TARGETS["loss_diff"],
    }
    if is_base or row["state"] != "completed":  # a run that did not finish has measured nothing to judge
        checks = dict.fromkeys(checks)
    verdict = "baseline" if is_base else "n/a" if None in checks.values() else "pass" if all(checks.values()) else "fail"
    return {
        "speedup": speedup,
        "memory_ratio": memory_ratio,
        "memory_reduction": None if memory_ratio is None else 1 - memory_ratio,
        "loss_diff": loss_diff,
        **checks,
        "verdict": verdict,
    }


FP16_NOTE = {
    False: "This CPU has no fp16 arithmetic units (no AVX512-FP16 or AMX-FP16): under 16-mixed the matmuls run in fp16 by "
           "emulation (values converted to fp32 and back), far slower than 32-true, and the GradScaler's unscale and inf check "
           "add work every step.",
    True: "This CPU has fp16 units ({fp16}): oneDNN can run fp16 matmuls natively, so 16-mixed can be faster once the model is matmul-bound.",
}
BF16_NOTE = {
    False: "This CPU has no bf16 instructions (no AVX512-BF16 or AMX-BF16): bf16 is converted in software, so expect no speedup from bf16-mixed.",
    True: "This CPU has {bf16} instructions: oneDNN uses them for bf16 matmuls, so bf16-mixed can beat 32-true once matmuls dominate the step "
          "(wide layers, large batches); a small model stays overhead-bound and autocast's casts make it slower.",
}
CPU_MEMORY_NOTE = (
    "Memory on a CPU is the process's peak RSS (ru_maxrss), labelled as such: it holds Python, torch and Lightning themselves "
    "(hundreds of MiB), the fp32 weights and the optimizer state, so autocast's smaller activations are a small share of it. "
    "The 40% target is a GPU figure (the CUDA allocator's peak)."
)


def cpu_notes(hardware: dict) -> list[str]:
    """Why a CPU gives the numbers it gives, from the CPU features the run recorded."""
    flags = list(hardware.get("cpu_flags") or [])
    fp16 = [f.upper().replace("_", "-") for f in ("avx512_fp16", "amx_fp16") if f in flags]
    bf16 = [f.upper().replace("_", "-") for f in ("avx512_bf16", "amx_bf16") if f in flags]
    return [
        f"These runs were on a CPU: PyTorch's CPU kernels use {hardware.get('cpu_capability') or 'an unknown instruction set'} "
        f"(torch.backends.cpu.get_cpu_capability()); CPU features seen: {', '.join(flags) or 'none of those that matter here'}.",
        FP16_NOTE[bool(fp16)].format(fp16=" and ".join(fp16)),
        BF16_NOTE[bool(bf16)].format(bf16=" and ".join(bf16)),
        CPU_MEMORY_NOTE,
        "The targets (1.5x faster, 40% less memory) are what AMP gives on GPUs with tensor cores; on a CPU this table shows "
        "what really happens instead.",
    ]


def _notes(rows: list[dict], base: dict | None, base_run: Run | None) -> list[str]:
    notes = []
    if base is None:
        notes.append(f"No {BASELINE} run in this comparison: there is nothing to compare against.")
    for r in rows:
        if r["state"] in ("failed", "stopped", "interrupted"):
            notes.append(f"{r['variant']} {r['state']}" + (f": {r['error']}" if r["error"] else "."))
    if base_run is not None and (base_run.config.get("accelerator_resolved") or "cpu") == "cpu" and base_run.config.get("hardware"):
        notes += cpu_notes(base_run.config["hardware"])
    if base is not None and base["device"] != "cpu":
        if base["peak_tflops"] is None:
            notes.append(f"No peak on record for {base['device']}: the share of peak is left out.")
        elif base["peak_share"] is not None and base["peak_share"] < 0.1:
            notes.append(
                f"{BASELINE} reaches {base['peak_share']:.1%} of this GPU's fp32 peak: the step is overhead-bound (kernel launches, "
                "the optimizer, the loop), so faster matmuls barely show. Raise the hidden width or the batch size to see the speedup appear."
            )
    return notes


def summarize_group(runs: list[Run]) -> dict:
    """The comparison as one dict (JSON-ready): settings, one row per variant with ratios and verdict, notes."""
    runs = sorted(runs, key=_order)
    rows = [_row(r) for r in runs]
    base_run = next((r for r in runs if variant_of(r) == BASELINE), None)
    base = next((row for row in rows if base_run is not None and row["run_id"] == base_run.id), None)
    rows = [{**row, **_against(row, base)} for row in rows]
    c = (base_run or runs[0]).config if runs else {}
    return {
        "group": c.get("compare_group"),
        "baseline": BASELINE,
        "targets": dict(TARGETS),
        "settings": {k: c.get(k) for k in ("max_steps", "batch_size", "hidden", "depth", "seed", "lr", "accelerator_resolved", "matmul_flops_per_step")},
        "device": rows[0]["device"] if rows else None,
        "memory_kind": rows[0]["memory_kind"] if rows else None,
        "complete": bool(runs) and all(r.state in FINAL_STATES for r in runs),
        "rows": rows,
        "notes": _notes(rows, base, base_run),
    }


# -- showing it ------------------------------------------------------------------------------

TABLE_COLUMNS = (  # (row key, header, format)
    ("variant", "variant", "{}"),
    ("state", "state", "{}"),
    ("median_step_ms", "step ms", "{:.2f}"),
    ("steps_per_s", "steps/s", "{:.3g}"),
    ("samples_per_s", "samples/s", "{:.0f}"),
    ("tflops", "TFLOP/s", "{:.3g}"),
    ("peak_share", "of peak", "{:.1%}"),
    ("memory_mib", "peak MiB", "{:.0f}"),
    ("final_loss", "final loss", "{:.4f}"),
    ("loss_diff", "loss diff", "{:+.4f}"),
    ("skipped_steps", "skipped", "{}"),
    ("speedup", "speedup", "{:.2f}x"),
    ("memory_ratio", "memory", "{:.2f}x"),
    ("verdict", "verdict", "{}"),
)
CHECK_MARK = {True: "pass", False: "fail", None: "-"}
LOG_AXIS_SPREAD = 30
LOSS_DASHES = ("solid", "dash", "dot", "dashdot", "longdash")


def peak_label(row: dict) -> str:
    """The share of the GPU's peak as text; why there is none where there is none."""
    if row["peak_share"] is not None:
        return f"{row['peak_share']:.1%}"
    return "n/a, CPU" if row["device"] == "cpu" else "n/a"


def _cell(value: Any, fmt: str) -> str:
    return "n/a" if value is None else fmt.format(value)


def format_table(summary: dict) -> str:
    """The comparison as a plain-text table, its settings above and the per-target checks below."""
    s = summary["settings"]
    head = [h for _, h, _ in TABLE_COLUMNS]
    body = [[peak_label(r) if k == "peak_share" else _cell(r[k], fmt) for k, _, fmt in TABLE_COLUMNS] for r in summary["rows"]]
    widths = [max(len(x) for x in col) for col in zip(head, *body)]
    line = lambda cells: "  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    t = summary["targets"]
    checks = [
        f"  {r['variant']}: speedup {CHECK_MARK[r['speedup_ok']]}, memory {CHECK_MARK[r['memory_ok']]}, loss {CHECK_MARK[r['loss_ok']]}"
        for r in summary["rows"] if r["verdict"] != "baseline"
    ]
    return "\n".join([
        f"comparison {summary['group']} on {summary['device']}: hidden {s['hidden']} x depth {s['depth']}, batch {s['batch_size']}, "
        f"{s['max_steps']} steps, seed {s['seed']}; {(s['matmul_flops_per_step'] or 0) / 1e9:.3g} GFLOP of matmuls per step; "
        f"memory = {summary['memory_kind']}",
        line(head),
        *(line(b) for b in body),
        f"targets against {summary['baseline']}: speedup >= {t['speedup']}x, memory reduction >= {t['memory_reduction']:.0%}, |loss diff| < {t['loss_diff']}",
        *checks,
    ])


def _bars(summary: dict, key: str) -> tuple[list[str], np.ndarray, list[str]]:
    rows = summary["rows"]
    values = np.array([np.nan if r[key] is None else r[key] for r in rows], dtype=np.float64)
    return [r["variant"] for r in rows], values, [PALETTE[i % len(PALETTE)] for i in range(len(rows))]


def _bar_layout(fig: go.Figure, title: str, ytitle: str) -> go.Figure:
    fig.update_layout(title=title, height=320, margin=dict(l=60, r=20, t=50, b=40), yaxis_title=ytitle, showlegend=False, uirevision="keep")
    return fig


def bar_figure(summary: dict, key: str) -> go.Figure:
    """One measured quantity per variant: 'median_step_ms', 'tflops' or 'memory_mib'."""
    title, ytitle = {
        "median_step_ms": ("Median step time (lower is faster)", "ms per step"),
        "tflops": ("Achieved matmul throughput", "TFLOP/s"),
        "memory_mib": (f"Peak memory ({summary['memory_kind']})", "MiB"),
    }[key]
    x, y, colors = _bars(summary, key)
    text = [
        "" if np.isnan(v) else f"{v:.3g}" + (f" · {r['peak_share']:.1%} of peak" if key == "tflops" and r["peak_share"] is not None else "")
        for v, r in zip(y, summary["rows"])
    ]
    fig = _bar_layout(go.Figure(go.Bar(x=x, y=y, marker_color=colors, text=text, name=key)), title, ytitle)
    finite = y[np.isfinite(y) & (y > 0)]
    if len(finite) and finite.max() > LOG_AXIS_SPREAD * finite.min():  # emulated fp16 on a CPU: 40x the others
        fig.update_yaxes(type="log", title=f"{ytitle} (log axis)")
    return fig


def loss_figure(runs: list[Run]) -> go.Figure:
    """The runs' losses overlaid; dashed lines, since with one seed and one data order they often coincide."""
    fig = charts.loss_figure([(variant_of(r), r.metrics) for r in runs])
    for i, trace in enumerate(fig.data):
        trace.line.dash = LOSS_DASHES[i % len(LOSS_DASHES)]
    return fig.update_layout(title="Training loss (same seed, same batches)")


def ratio_figure(summary: dict) -> go.Figure:
    """Speedup and memory against 32-true, with the AMP targets drawn in."""
    x, speedup, _ = _bars(summary, "speedup")
    _, memory, _ = _bars(summary, "memory_ratio")
    fig = go.Figure([
        go.Bar(x=x, y=speedup, name="speedup (32-true step time / this)", marker_color=PALETTE[0]),
        go.Bar(x=x, y=memory, name="memory (this / 32-true)", marker_color=PALETTE[1]),
    ])
    t = summary["targets"]
    fig.add_hline(y=t["speedup"], line_dash="dash", line_color=PALETTE[0], annotation_text=f"speedup target {t['speedup']}x")
    fig.add_hline(y=1 - t["memory_reduction"], line_dash="dot", line_color=PALETTE[1], annotation_text=f"memory target {1 - t['memory_reduction']:.1f}x")
    _bar_layout(fig, f"Against {summary['baseline']}", "ratio (x)")
    return fig.update_layout(barmode="group", showlegend=True, legend=dict(orientation="h", y=-0.2))


# -- the CLI ---------------------------------------------------------------------------------


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m amp_core.compare", description="The same model, data and seed under several precisions, side by side.")
    p.add_argument("--precisions", default="", help=f"comma-separated, e.g. 32-true,16-mixed,bf16-mixed (the default; on CUDA also {TF32}); 32-true always runs")
    p.add_argument("--accelerator", default="auto", help="auto, cpu or gpu")
    p.add_argument("--max-steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--hidden", type=int, default=1024, help="width of the demo MLP: wider is more matmul-bound")
    p.add_argument("--depth", type=int, default=4, help="hidden layers of the demo MLP")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--wandb", default="disabled", help="disabled (default), offline or online")
    p.add_argument("--runs-dir", default=None, help="where run records go (default: $AMP_RUNS_DIR or runs/)")
    p.add_argument("--json", default=None, help="also write the JSON summary to this file")
    from amp_core.config import RULES

    for name in WORKLOAD_FLAGS:
        p.add_argument(f"--{name}", type=int if RULES[name].kind == "int" else str, default=None, help=RULES[name].help)
    return p


def _child_env() -> dict:
    root = str(Path(__file__).resolve().parents[1])  # `-m amp_core.train` must import this very package
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}


def main(argv: list[str] | None = None) -> int:
    from amp_core.train import ConfigError, resolve_accelerator

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
            names, on_cuda=on_cuda, accelerator=args.accelerator, max_steps=args.max_steps, batch_size=args.batch_size, hidden=args.hidden,
            depth=args.depth, seed=args.seed, lr=args.lr, wandb=args.wandb, runs_dir=args.runs_dir or str(default_runs_dir()),
            **{name: getattr(args, name) for name in WORKLOAD_FLAGS if getattr(args, name) is not None},
        )
    except (ConfigError, _ArgumentError) as e:
        return error(str(e))

    group, runs_dir = configs[0].compare_group, configs[0].runs_dir
    for i, config in enumerate(configs, 1):
        variant = config.precision + MATMUL_SUFFIX[config.matmul_precision]
        print(f"[{i}/{len(configs)}] {variant}: {config.max_steps} steps ...", file=sys.stderr, flush=True)
        # One run at a time, each in its own process: its timing undisturbed, its peak RSS its own.
        proc = subprocess.run([sys.executable, "-m", "amp_core.train", *train_argv(config)], env=_child_env(), capture_output=True, text=True)
        if proc.returncode == 2:  # bad input the plan could not see (e.g. an unwritable runs dir): nothing ran
            return error((proc.stderr.strip().splitlines() or ["the run refused its settings"])[-1].removeprefix("amp_core.train: error: "))
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
