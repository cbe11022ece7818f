"""A comparison read back from its run records: one row per variant, ratios against 32-true, verdicts, notes.

`summarize_group` is a pure function of the run records, so the CLI and the page show the same
numbers, and a past comparison can be shown again from the runs directory. Standard library and
NumPy only: the page imports this without torch.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from amp_core.record import FINAL_STATES, Run, list_runs
from amp_core.training.memory import METHODS as RSS_METHODS

BASELINE = "32-true"
TF32 = "32-true+tf32"
# The usual AMP targets against 32-true.
TARGETS = {"speedup": 1.5, "memory_reduction": 0.40, "loss_diff": 0.01}
# A median of n step times is trusted when its distribution-free 95% confidence interval (order
# statistics: the count of steps below the true median is Binomial(n, 1/2)) leaves out the two slowest
# and the two fastest steps, so that two stray steps (a GC pause, the scheduler, another process on a
# shared machine) cannot carry it. [x(3), x(n-2)] covers the median with 96.1% at n = 12 and only 93.5%
# at n = 11. Fewer timed steps get no speed verdict ("too few steps"), and a comparison refuses them.
MIN_TIMED_STEPS = 12
TOO_FEW_STEPS = "too few steps"

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
CUDA_MEMORY_KIND = "CUDA allocator peak"
# What a CPU run's memory figure is, by the method amp_core.training.memory used (a run record's run_memory_method).
RSS_MEMORY_KIND = {"clear_refs": "RSS the run added, peak reset", "sampled": "RSS the run added, sampled peak"}
NOT_MEASURED = "not measured"


def timed_steps_for(max_steps: int) -> int:
    """How many of `max_steps` steps are timed: amp_core.train.step_timing leaves out the warm-up."""
    from amp_core.training.run_facts import WARMUP_MIN_STEPS, WARMUP_SHARE

    warmup = min(max(WARMUP_MIN_STEPS, math.ceil(max_steps * WARMUP_SHARE)), max_steps // 2)
    return max(0, max_steps - warmup)


def min_comparison_steps() -> int:
    """The fewest steps whose timed part reaches MIN_TIMED_STEPS."""
    return next(n for n in range(MIN_TIMED_STEPS, 10 * MIN_TIMED_STEPS) if timed_steps_for(n) >= MIN_TIMED_STEPS)


def too_few_steps_message(max_steps: int) -> str:
    timed = timed_steps_for(max_steps)
    return (
        f"too few steps to time: {max_steps} step{'s' * (max_steps != 1)} leave{'s' * (max_steps == 1)} {timed} timed after the warm-up, and a median "
        f"needs at least {MIN_TIMED_STEPS} timed steps; use {min_comparison_steps()} steps or more"
    )


def variant_of(run: Run) -> str:
    return run.precision + MATMUL_SUFFIX.get(str(run.config.get("matmul_precision", "highest")), "+?")


def _created(r: Run) -> str:
    return str(r.status.get("created_at") or r.config.get("created_at") or "")


def _order(r: Run) -> tuple:
    return (variant_of(r) != BASELINE, _created(r), r.id)  # the baseline first, then in the order they were made


def group_runs(runs_dir: str | os.PathLike, group: str, include_recordings: bool = False) -> list[Run]:
    """The runs of one comparison, baseline first (with `include_recordings`, a shipped one's too)."""
    runs = [r for r in list_runs(runs_dir, include_recordings) if r.config.get("compare_group") == group]
    return sorted(runs, key=_order)


def list_groups(runs_dir: str | os.PathLike, include_recordings: bool = False) -> list[dict]:
    """Every comparison in `runs_dir` (and, with `include_recordings`, in the shipped recordings), newest
    first: id, when, its variants and their states, its settings, and whether it is a recording."""
    groups: dict[str, list[Run]] = {}
    for r in list_runs(runs_dir, include_recordings):
        if isinstance(r.config.get("compare_group"), str) and r.config["compare_group"]:
            groups.setdefault(r.config["compare_group"], []).append(r)
    out = []
    for group, runs in groups.items():
        runs.sort(key=_order)
        c = runs[0].config
        out.append(
            {
                "group": group,
                "created_at": min(_created(r) for r in runs),
                "variants": [variant_of(r) for r in runs],
                "states": [r.state for r in runs],
                "settings": _settings_line(c),
                "recording": all(r.recording for r in runs),
            }
        )
    return sorted(out, key=lambda g: (g["created_at"], g["group"]), reverse=True)


def _settings_line(c: dict) -> str:
    """A comparison's model settings in words: the workload's own settings (records before workloads are mlp runs)."""
    own = c.get("workload_settings") or {"hidden": c.get("hidden"), "depth": c.get("depth")}
    shown = ", ".join(f"{k} {v}" for k, v in own.items() if v not in (None, ""))
    return f"{c.get('workload') or 'mlp'}: {shown}, batch {c.get('batch_size')}, {c.get('max_steps')} steps"


def peak_tflops(device_name: str | None, dtype: str | None) -> float | None:
    """The GPU's dense peak for `dtype`, or None for an unknown GPU, a CPU or a dtype without a peak."""
    if not device_name or not dtype:
        return None
    return next((peaks.get(dtype) for name, peaks in PEAK_TFLOPS if name.lower() in device_name.lower()), None)


def _num(value: Any) -> float | None:
    return (
        float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        else None
    )


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _memory(accel: str, status: dict) -> tuple[float | None, str | None, str]:
    """(MiB, method, kind): the CUDA allocator's peak on a GPU, else the RSS the run added.

    A record from before runs measured their own RSS has only the process's lifetime peak, which is
    the imports' and the same for every run: it is not shown."""
    if accel == "gpu":
        return _num(status.get("cuda_peak_mib")), "cuda_max_memory_allocated", CUDA_MEMORY_KIND
    method = status.get("run_memory_method")
    if method in RSS_MEMORY_KIND:
        return _num(status.get("run_memory_mib")), method, RSS_MEMORY_KIND[method]
    return None, None, NOT_MEASURED


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
    timed = s.get("timed_steps") if isinstance(s.get("timed_steps"), int) else None
    memory_mib, memory_method, memory_kind = _memory(accel, s)
    return {
        "variant": variant_of(run),
        "run_id": run.id,
        "state": run.state,
        "precision": run.precision,
        "matmul_precision": matmul,
        "matmul_dtype": dtype,
        "device": device or "cpu",
        "steps": len(m),
        "timed_steps": timed,
        "enough_timed_steps": timed is not None and timed >= MIN_TIMED_STEPS,
        "median_step_ms": step_ms,
        "steps_per_s": _num(s.get("steps_per_s")),
        "samples_per_s": _num(s.get("samples_per_s")),
        "tflops": tflops,
        "peak_tflops": peak,
        "peak_share": _ratio(tflops, peak),
        "memory_mib": memory_mib,
        "memory_method": memory_method,
        "memory_kind": memory_kind,
        "final_loss": float(m.loss[-1]) if len(m) and np.isfinite(m.loss[-1]) else None,
        "skipped_steps": run.skipped_steps,
        "error": s.get("error"),
    }


def _against(row: dict, base: dict | None) -> dict:
    """Ratios and verdict of one row against the baseline row (None where a value is missing)."""
    base_timed = base is None or base["enough_timed_steps"]  # no baseline: nothing to judge against, not "too few"
    base = base or dict.fromkeys(row)
    is_base = row["run_id"] == base["run_id"]
    speedup = _ratio(base["median_step_ms"], row["median_step_ms"])
    memory_ratio = _ratio(row["memory_mib"], base["memory_mib"])
    loss_diff = (
        row["final_loss"] - base["final_loss"]
        if row["final_loss"] is not None and base["final_loss"] is not None
        else None
    )
    checks = {
        "speedup_ok": None if speedup is None else speedup >= TARGETS["speedup"],
        "memory_ok": None if memory_ratio is None else 1 - memory_ratio >= TARGETS["memory_reduction"],
        "loss_ok": None if loss_diff is None else abs(loss_diff) < TARGETS["loss_diff"],
    }
    too_few = row["state"] == "completed" and not (row["enough_timed_steps"] and base_timed)
    if (
        is_base or row["state"] != "completed" or too_few
    ):  # a run that did not finish, or was barely timed, gets no verdict
        checks = dict.fromkeys(checks)
    verdict = (
        "baseline"
        if is_base
        else TOO_FEW_STEPS
        if too_few
        else "n/a"
        if None in checks.values()
        else "pass"
        if all(checks.values())
        else "fail"
    )
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
    "Memory on a CPU is what the run adds to the process's resident memory (RSS): its peak during the run minus the RSS just "
    "before the model was built, so Python, torch and Lightning themselves are left out. Measured as the {method}. It holds "
    "the fp32 weights, gradients and optimizer state, the batches, and fit's own fixed cost (some tens of MiB); autocast keeps "
    "the fp32 weights and adds low-precision copies, so mixed precision need not use less. The 40% target is a GPU figure (the CUDA allocator's peak)."
)


def cpu_notes(hardware: dict, memory_method: str | None = "clear_refs") -> list[str]:
    """Why a CPU gives the numbers it gives, from the CPU features the run recorded."""
    flags = list(hardware.get("cpu_flags") or [])
    fp16 = [f.upper().replace("_", "-") for f in ("avx512_fp16", "amx_fp16") if f in flags]
    bf16 = [f.upper().replace("_", "-") for f in ("avx512_bf16", "amx_bf16") if f in flags]
    memory = (
        CPU_MEMORY_NOTE.format(method=RSS_METHODS[memory_method])
        if memory_method in RSS_METHODS
        else "These runs recorded no memory of their own (made before runs measured it; only the process's lifetime peak RSS, "
        "which is the imports', is on record): the memory column is empty."
    )
    return [
        f"These runs were on a CPU: PyTorch's CPU kernels use {hardware.get('cpu_capability') or 'an unknown instruction set'} "
        f"(torch.backends.cpu.get_cpu_capability()); CPU features seen: {', '.join(flags) or 'none of those that matter here'}.",
        FP16_NOTE[bool(fp16)].format(fp16=" and ".join(fp16)),
        BF16_NOTE[bool(bf16)].format(bf16=" and ".join(bf16)),
        memory,
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
    barely = [
        f"{r['variant']} ({r['timed_steps'] or 0})"
        for r in rows
        if r["state"] == "completed" and not r["enough_timed_steps"]
    ]
    if barely:
        notes.append(
            f"Too few timed steps for a median to trust: {', '.join(barely)}; at least {MIN_TIMED_STEPS} are needed "
            f"({min_comparison_steps()} steps with the warm-up), so these rows get no verdict."
        )
    if (
        base_run is not None
        and (base_run.config.get("accelerator_resolved") or "cpu") == "cpu"
        and base_run.config.get("hardware")
    ):
        notes += cpu_notes(base_run.config["hardware"], base["memory_method"] if base else None)
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
    kinds = list(dict.fromkeys(r["memory_kind"] for r in rows))
    methods = list(dict.fromkeys(r["memory_method"] for r in rows if r["memory_method"]))
    return {
        "group": c.get("compare_group"),
        "baseline": BASELINE,
        "targets": dict(TARGETS),
        "min_timed_steps": MIN_TIMED_STEPS,
        "settings": {
            k: c.get(k)
            for k in (
                "max_steps",
                "batch_size",
                "hidden",
                "depth",
                "seed",
                "lr",
                "accelerator_resolved",
                "matmul_flops_per_step",
            )
        },
        "device": rows[0]["device"] if rows else None,
        "memory_kind": " / ".join(kinds) if kinds else None,
        "memory_method": " / ".join(methods) if methods else None,
        "complete": bool(runs) and all(r.state in FINAL_STATES for r in runs),
        "rows": rows,
        "notes": _notes(rows, base, base_run),
    }
