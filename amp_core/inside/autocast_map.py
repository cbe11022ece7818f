"""The autocast map: which dtype every op of one real training step ran in, under a run's precision plugin.

    python -m amp_core.inside.autocast_map --workload mlp --precision 16-mixed [--json]

One step of the workload runs under the very plugin a run would get (`amp_core.train.build_precision`
handed to a Lightning Trainer, whose `strategy.precision_plugin` is taken), recorded op by op by
`amp_core.inside.op_recorder.record_step`; the model, its weights and the optimizer are left untouched.
For fp16 a second step runs at loss scale 1, so the backward underflow is measured both ways.

Importing this module is cheap (no torch): the app's server imports it to read maps, which are
taken in a child process (`probe_map`), like the hardware probe, and cached on disk per
workload, precision, device and settings.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from amp_core.analysis.gradients import FP16_MAX
from amp_core.training.workloads import WORKLOADS

PRECISIONS = ("16-mixed", "bf16-mixed", "32-true")
DEVICES = ("cpu", "cuda")
SIXTEEN_BIT = ("float16", "bfloat16")
# log2 of the largest finite value of each 16-bit format (65504 for fp16), for the headroom column.
MAX_LOG2 = {"float16": math.log2(FP16_MAX), "bfloat16": math.log2(3.3895313892515355e38)}
NEAR_OVERFLOW_LOG2 = 4  # a 16-bit output within 2**4 of the format's largest value is marked
CAST_OPS = ("_to_copy",)
# Shared run settings a map depends on; each workload adds its own (amp_core.training.config.workload_settings).
SHARED_SETTINGS = ("batch_size", "init_scale", "seed")
PROBE_TIMEOUT_S = 600


class MapError(ValueError):
    """A map that cannot be taken with these settings; the message is one line a user can act on."""


# The map keeps every op's facts and runs a step twice for fp16: past this many weights plus one batch's
# activations (an estimate from the settings) a map takes minutes and gigabytes on a CPU, and says little
# more about autocast than a smaller model of the same shape.
MAX_MAP_VALUES = {"cpu": 50_000_000, "cuda": 500_000_000}


def estimated_values(workload: str, settings: dict[str, Any]) -> int | None:
    """Rough count of weights plus one step's activations for a built-in workload; None for your own model."""
    from amp_core.training.config import defaults_for

    c = {**defaults_for(workload), **{k: v for k, v in settings.items() if v is not None}}
    if workload == "mlp":
        h, d = int(c["hidden"]), int(c["depth"])
        return 64 * h + (d - 1) * h * h + 10 * h + int(c["batch_size"]) * h * d
    if workload == "gpt":
        w, n, t, b = int(c["width"]), int(c["layers"]), int(c["context"]), int(c["batch_size"])
        return 12 * n * w * w + 128 * w + b * t * (16 * w + int(c["heads"]) * t) * n
    return None


def size_problem(workload: str, settings: dict[str, Any], device: str = "cpu") -> str | None:
    """One line when these settings make a map too large to take here; None when they are fine."""
    values, limit = estimated_values(workload, settings), MAX_MAP_VALUES.get(device, MAX_MAP_VALUES["cpu"])
    if values is None or values <= limit:
        return None
    return (
        f"these settings make about {values / 1e6:,.0f} M weights and activations, over the {limit / 1e6:,.0f} M a map "
        f"takes on {device}: every op of the step is recorded, so choose a smaller model (the autocast rules are the same)"
    )


def first_batch(built: Any) -> Any:
    """One batch of a built workload's data, found where Lightning's fit would find it."""
    import pytorch_lightning as pl

    data = built.data
    if isinstance(data, pl.LightningDataModule):
        data.prepare_data()
        data.setup("fit")
        data = data.train_dataloader()
    elif data is None:
        data = built.module.train_dataloader()
    return next(iter(data))


def map_settings(workload: str) -> list[str]:
    """The settings a map takes for `workload`: the shared ones it depends on, then the workload's own."""
    from amp_core.training.config import workload_settings

    return [*SHARED_SETTINGS, *workload_settings(workload)]


def plugin_for(precision: str, device: str = "cpu", init_scale: float = 2.0**16) -> Any:
    """The precision plugin a run of `precision` on `device` gets: train.build_precision's Trainer arguments, given to a Trainer."""
    import pytorch_lightning as pl

    from amp_core.training.cli import RunConfig, build_precision

    accelerator = "gpu" if device == "cuda" else "cpu"
    config = RunConfig(precision=precision, accelerator=accelerator, init_scale=init_scale).validate()
    kwargs, info = build_precision(config, accelerator)
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kwargs,
    )
    return trainer.strategy.precision_plugin, info


def take(workload: str = "mlp", precision: str = "16-mixed", device: str = "cpu", **settings: Any) -> dict[str, Any]:
    """Take the map in this process (imports torch and Lightning). Raises MapError for bad settings."""
    import torch

    from amp_core.inside.backward_underflow import MagnitudeCounter
    from amp_core.inside.op_recorder import record_step

    config, plugin, info, built = _build_for_map(workload, precision, device, settings)
    model, batch = built.module, first_batch(built)
    at_run_scale = MagnitudeCounter()
    step = record_step(model, batch, plugin, device=device, magnitudes=at_run_scale)
    underflow = {"run_scale": {"scale": step["loss_scale"] or 1.0, "by_dtype": at_run_scale.by_dtype}}
    if getattr(plugin, "scaler", None) is not None:
        at_one = MagnitudeCounter()
        record_step(model, batch, plugin, device=device, magnitudes=at_one, loss_scale=1.0)
        underflow["scale_1"] = {"scale": 1.0, "by_dtype": at_one.by_dtype}
    cpu_name = f"CPU ({torch.backends.cpu.get_cpu_capability()})"
    return {
        "workload": workload,
        "precision": config.precision,
        "precision_plugin": type(plugin).__name__,
        "autocast_dtype": info["autocast_dtype"],
        "amp_path": info["path"],
        "device": device,
        "device_name": torch.cuda.get_device_name() if device == "cuda" else cpu_name,
        "torch": torch.__version__,
        "settings": {name: getattr(config, name) for name in map_settings(workload)},
        "loss": step["loss"],
        "loss_scale": step["loss_scale"],
        "ops": step["ops"],
        "underflow": underflow,
    }


def _build_for_map(workload: str, precision: str, device: str, settings: dict[str, Any]) -> tuple[Any, Any, dict, Any]:
    """The checked RunConfig, the precision plugin and its description, and the workload (seeded);
    MapError with one line for anything that cannot be mapped."""
    from amp_core.training.cli import ConfigError, RunConfig

    if workload not in WORKLOADS:
        raise MapError(f"workload must be one of {', '.join(WORKLOADS)}, got {workload!r}")
    if device not in DEVICES:
        raise MapError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    import pytorch_lightning as pl
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise MapError("device 'cuda' needs a CUDA GPU, and torch.cuda.is_available() is False here; use --device cpu")
    from amp_core.training.config import defaults_for

    values = {k: v for k, v in settings.items() if v is not None and k in map_settings(workload)}
    if problem := size_problem(workload, values, device):
        raise MapError(problem)
    accelerator = "gpu" if device == "cuda" else "cpu"
    try:
        config = RunConfig(**{**defaults_for(workload), **values, "precision": precision, "accelerator": accelerator})
        config.validate()
        plugin, info = plugin_for(config.precision, device, config.init_scale)
        pl.seed_everything(config.seed, verbose=False)
        built = WORKLOADS[workload].build(config)  # a user model's import or build error is a ConfigError line
    except ConfigError as e:
        raise MapError(str(e)) from None
    return config, plugin, info, built


# ---------------------------------------------------------------- reading a map (plain Python)


def _compute_dtype(op: dict[str, Any]) -> str | None:
    """'16-bit' when every floating input is 16-bit, else the widest floating input dtype."""
    floats = [d for d in op["in_dtypes"] if d.startswith(("float", "bfloat"))]
    if not floats:
        return None
    if all(d in SIXTEEN_BIT for d in floats):
        return "16-bit"
    return "float64" if "float64" in floats else "float32" if "float32" in floats else floats[0]


def headroom_log2(op: dict[str, Any]) -> float | None:
    """log2(format max) - log2(largest |output|) for a 16-bit output; -inf when it overflowed; None otherwise."""
    if op["out_dtype"] not in SIXTEEN_BIT:
        return None
    if op["nonfinite"]:
        return -math.inf
    return None if op["log2_max"] is None else MAX_LOG2[op["out_dtype"]] - op["log2_max"]


def near_overflow(op: dict[str, Any]) -> bool:
    room = headroom_log2(op)
    return room is not None and room < NEAR_OVERFLOW_LOG2


def summarize(m: dict[str, Any]) -> dict[str, Any]:
    """The map's summary: 16-bit FLOP share, ops kept in fp32, casts, op counts per phase, near-overflow ops."""
    ops = m["ops"]
    counted = [o for o in ops if o["phase"] in ("forward", "backward") and o["flops"]]
    flops = sum(o["flops"] for o in counted)
    flops16 = sum(o["flops"] for o in counted if _compute_dtype(o) == "16-bit")
    fp32 = Counter(
        o["op"]
        for o in ops
        if o["phase"] == "forward" and o["out_dtype"] == "float32" and not o["view"] and o["op"] not in CAST_OPS
    )
    casts: dict[str, Counter] = defaultdict(Counter)
    for o in ops:
        if o["op"] in CAST_OPS and o["in_dtypes"] and o["out_dtype"] and o["in_dtypes"][0] != o["out_dtype"]:
            casts[o["phase"]][f"{o['in_dtypes'][0]} → {o['out_dtype']}"] += 1
    return {
        "device": m["device"],
        "device_name": m.get("device_name"),
        "precision": m["precision"],
        "autocast_dtype": m.get("autocast_dtype"),
        "loss_scale": m.get("loss_scale"),
        "ops": {p: sum(1 for o in ops if o["phase"] == p) for p in ("forward", "backward", "optimizer")},
        "compute_ops": {p: sum(1 for o in ops if o["phase"] == p and not o["view"]) for p in ("forward", "backward")},
        "flops": flops,
        "flops_16bit": flops16,
        "share_flops_16bit": flops16 / flops if flops else 0.0,
        "fp32_forward_ops": dict(fp32.most_common()),
        "casts": {p: dict(c) for p, c in casts.items()},
        "near_overflow": [
            {k: o[k] for k in ("phase", "module", "op", "out_dtype", "log2_max")}
            for o in ops
            if near_overflow(o) and not o["view"]
        ],
    }


def module_table(m: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per (phase, module): ops, FLOPs and their 16-bit share, output dtypes, the 16-bit headroom."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for o in m["ops"]:
        groups[(o["phase"], o["module"])].append(o)
    rows = []
    for (phase, module), ops in groups.items():
        flops = sum(o["flops"] or 0 for o in ops)
        flops16 = sum(o["flops"] or 0 for o in ops if _compute_dtype(o) == "16-bit")
        rooms = [r for r in (headroom_log2(o) for o in ops) if r is not None]
        rows.append(
            {
                "phase": phase,
                "module": module,
                "ops": sum(1 for o in ops if not o["view"]),
                "op names": ", ".join(sorted({o["op"] for o in ops if not o["view"]})),
                "output dtypes": ", ".join(sorted({o["out_dtype"] for o in ops if o["out_dtype"]})),
                "FLOPs": flops,
                "16-bit FLOP share": flops16 / flops if flops else None,
                "16-bit headroom (log2)": min(rooms) if rooms else None,
                "near overflow": bool(rooms) and min(rooms) < NEAR_OVERFLOW_LOG2,
            }
        )
    return rows


def summary_lines(m: dict[str, Any]) -> list[str]:
    s = summarize(m)
    fp32 = ", ".join(f"{op} ×{n}" for op, n in s["fp32_forward_ops"].items()) or "none"
    casts = (
        "; ".join(f"{phase}: " + ", ".join(f"{k} ×{n}" for k, n in c.items()) for phase, c in s["casts"].items())
        or "none"
    )
    scale = f", loss scale {s['loss_scale']:g}" if s["loss_scale"] else ""
    return [
        f"{m['workload']} under {s['precision']} on {s['device']} ({s['device_name']}), autocast {s['autocast_dtype'] or 'off'}{scale}",
        f"share of matmul/conv/attention FLOPs in 16 bits: {s['share_flops_16bit']:.1%} of {s['flops']:,}",
        f"ops: {s['ops']['forward']} forward ({s['compute_ops']['forward']} not views), {s['ops']['backward']} backward "
        f"({s['compute_ops']['backward']} not views), {s['ops']['optimizer']} in the optimizer step",
        f"forward ops that ran in float32 (not casts or views): {fp32}",
        f"casts (_to_copy): {casts}",
        f"16-bit outputs within 2^{NEAR_OVERFLOW_LOG2} of overflow: {len(s['near_overflow'])}",
    ]


# ---------------------------------------------------------------- from the app: a child process, cached


def cache_key(workload: str, precision: str, device: str, settings: dict[str, Any] | None = None) -> str:
    values = dict(settings or {})
    digest = hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:10]
    return f"{workload}-{precision}-{device}-{digest}"


def _args(workload: str, precision: str, device: str, settings: dict[str, Any]) -> list[str]:
    out = ["--workload", workload, "--precision", precision, "--device", device]
    for name, value in settings.items():
        out += [f"--{name.replace('_', '-')}", str(value)]
    return out


def probe_map(
    workload: str,
    precision: str,
    device: str = "cpu",
    settings: dict[str, Any] | None = None,
    cache_dir: str | os.PathLike | None = None,
    timeout: float = PROBE_TIMEOUT_S,
    refresh: bool = False,
) -> dict[str, Any]:
    """The map from a child process (`python -m amp_core.inside.autocast_map --json`), read from `cache_dir`
    when taken before (unless `refresh`). Never raises: a failure is a dict with an `error` line (not cached)."""
    settings = dict(settings or {})
    path = Path(cache_dir) / f"{cache_key(workload, precision, device, settings)}.json" if cache_dir else None
    if path is not None and path.is_file() and not refresh:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass  # a damaged cache entry is taken again
    cmd = [
        sys.executable,
        "-m",
        "amp_core.inside.autocast_map",
        "--json",
        *_args(workload, precision, device, settings),
    ]
    try:
        out = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, cwd=Path(__file__).resolve().parents[2]
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"error": f"the map's child process did not finish: {type(e).__name__}"}
    if out.returncode != 0:
        lines = (out.stderr or "").strip().splitlines()
        return {"error": lines[-1] if lines else f"the map's child process exited with code {out.returncode}"}
    try:
        result = json.loads(out.stdout)
    except ValueError:
        return {"error": "the map's child process printed no JSON"}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(out.stdout)
        tmp.replace(path)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m amp_core.inside.autocast_map", description="Which dtype every op of one training step ran in."
    )
    p.add_argument("--workload", default="mlp", help=f"one of {', '.join(WORKLOADS)}")
    p.add_argument("--precision", default="16-mixed", help="any Lightning precision value, e.g. 16-mixed, bf16-mixed")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    from amp_core.training.config import RULES

    names = list(dict.fromkeys([*SHARED_SETTINGS, *(n for n, r in RULES.items() if r.workload)]))
    for name in names:  # typed by the run configuration's own table; None: the workload's default
        kind = {"int": int, "float": float}.get(RULES[name].kind, str)
        p.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None, help=RULES[name].help)
    p.add_argument("--json", action="store_true", help="print the whole map as JSON")
    args = p.parse_args(argv)
    settings = {k: getattr(args, k) for k in names}
    try:
        m = take(args.workload, args.precision, args.device, **settings)
    except MapError as e:
        print(f"amp_core.inside.autocast_map: error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(m, allow_nan=False))
        return 0
    print("\n".join(summary_lines(m)))
    print(f"\n{'phase':<12} {'module':<22} {'ops':>4} {'FLOPs':>12} {'16-bit':>7} {'headroom':>8}  dtypes")
    for r in module_table(m):
        share = "" if r["16-bit FLOP share"] is None else f"{r['16-bit FLOP share']:.0%}"
        room = (
            ""
            if r["16-bit headroom (log2)"] is None
            else f"{r['16-bit headroom (log2)']:.1f}" + ("!" if r["near overflow"] else "")
        )
        print(
            f"{r['phase']:<12} {r['module']:<22} {r['ops']:>4} {r['FLOPs']:>12,} {share:>7} {room:>8}  {r['output dtypes']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
