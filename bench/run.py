"""Every benchmark, one report: bench/REPORT.md and bench/report.json.

    python bench/run.py --quick            # at most 10 minutes on a 2-core CPU box
    python bench/run.py                    # the full benchmark: more pairs, more sizes
    python bench/run.py --only compare     # some benchmarks; the others keep their last figures

Each benchmark is a module in bench/ with `figures(quick: bool, tmp: Path) -> list[Figure]`
(bench/report.py), run in a child process of its own (`--child module:function`): one that fails,
hangs or crashes is recorded as failed (a figure with no value, the error in `how`; the exit code is
then 1) and the others still run. Nothing is measured here: the numbers are the modules' own.

A benchmark is for one kind of machine: "cpu" ones run where no CUDA GPU is visible (this project's
2-core box), "cuda" ones only where one is. A benchmark not run (the other kind of machine, or left
out by --only) keeps its last measured figures from the previous report.json, with the date and the
machine they were measured on, and REPORT.md says so.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as md
import json
import math
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
for _path in (str(BENCH), str(REPO)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from report import (  # noqa: E402
    FAILED,
    MEASURED,
    NOT_RUN,
    Figure,
    build_report,
    carry_over,
    failure_figure,
    load_previous,
    write_report,
)

VERSIONS = ("torch", "pytorch-lightning", "lightning", "streamlit", "plotly", "wandb")


@dataclass(frozen=True)
class Benchmark:
    key: str  # the benchmark's name in the report
    module: str  # a module in bench/ (or anywhere on PYTHONPATH)
    function: str  # its figures(quick, tmp) -> list[Figure]
    section: str  # where its failure is reported
    machine: str  # "cpu": run where no CUDA GPU is; "cuda": only where one is
    quick_s: float  # its share of --quick's 10 minutes (printed beside what it took)


BENCHMARKS = (
    Benchmark("monitor", "monitor_overhead", "figures", "monitor", "cpu", 180),
    Benchmark("first point", "first_point", "figures", "first point", "cpu", 150),
    Benchmark("redraw", "redraw", "figures", "redraw", "cpu", 150),
    Benchmark("compare", "compare_bench", "figures", "compare", "cpu", 120),
    Benchmark("cuda", "compare_bench", "cuda_figures", "cuda", "cuda", 250),
)
FULL_LIMIT_S = 3600  # a hung full benchmark is stopped after an hour
QUICK_LIMIT_FACTOR = 2  # ... a quick one after twice its share


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# The vector units that decide how fast 16-bit math is on a CPU: without AVX-512 BF16 (or AMX), torch
# emulates bf16 matmuls, and "AMD EPYC" alone names hosts where bf16-mixed is 1.9x faster than 32-true
# and hosts where it is 15x slower.
CPU_FEATURES = ("amx_bf16", "amx_fp16", "avx512_bf16", "avx512_fp16", "avx512f", "avx2")


def cpu_features() -> list[str]:
    """Which of CPU_FEATURES /proc/cpuinfo lists (empty where it cannot be read)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                return [f for f in CPU_FEATURES if f in flags]
    except OSError:
        pass
    return []


def host_facts() -> dict:
    """CPU model, logical CPUs, and the CUDA GPU if any (amp_core's hardware probe, in a child process)."""
    from amp_core.serve.hardware import probe

    facts = probe(timeout=120)
    devices = facts.get("devices") or []
    gpu = ", ".join(f"{d['name']} ({d['memory_gib']} GiB)" for d in devices) or None
    return {
        "cpu": cpu_model(),
        "cpu_features": cpu_features(),
        "cores": os.cpu_count(),
        "gpu": gpu,
        "cuda": bool(devices),
        "probe_error": facts.get("error"),
    }


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in VERSIONS:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            if name != "lightning":  # the project uses pytorch-lightning; the unified package is optional
                out[name] = "not installed"
    return out


# -- one benchmark, in a child process ----------------------------------------------------------


FIGURE_FIELDS = set(Figure.__dataclass_fields__)


def _as_list(target: str, figures: object) -> list:
    if not isinstance(figures, list):
        raise TypeError(f"{target} returned {type(figures).__name__}, not a list of Figure")
    return figures


def _figure_json(target: str, f: object) -> dict:
    """A Figure as JSON; also one made by the same class imported under another name (bench.report)."""
    d = f.to_json() if callable(getattr(f, "to_json", None)) else None
    if not isinstance(d, dict) or set(d) != FIGURE_FIELDS:
        raise TypeError(f"{target} returned a {type(f).__name__}, not a Figure")
    if isinstance(d["value"], float) and not math.isfinite(d["value"]):  # JSON has no NaN: say so instead
        d = {**d, "value": None, "met": None, "how": f"not measured: the value came out {d['value']}; {d['how']}"}
    return d


def _made_so_far(target: str) -> list[dict]:
    """The figures the benchmark had made before it failed or was stopped (report.MADE, under either of
    the names the module may be imported by); unreadable ones are left out."""
    made = []
    for name in ("report", "bench.report"):
        module = sys.modules.get(name)
        for f in getattr(module, "MADE", []):
            try:
                made.append(_figure_json(target, f))
            except TypeError:
                continue
    return made


def child(target: str, quick: bool, tmp: Path, out: Path) -> int:
    """Import `module:function`, call it, write its figures (or the error) to `out` as JSON."""
    module_name, function = target.split(":")
    try:
        figures = getattr(importlib.import_module(module_name), function)(quick, tmp)
        out.write_text(json.dumps({"figures": [_figure_json(target, f) for f in _as_list(target, figures)]}))
        return 0
    except BaseException as e:  # the parent records it; KeyboardInterrupt is how an overrun is stopped
        last = f"{type(e).__name__}: {e}".strip().splitlines()[0][:400] or type(e).__name__
        # Where the benchmark itself raised: its last frame outside run.py and importlib's own.
        frames = [
            f for f in traceback.extract_tb(e.__traceback__) if f.filename != __file__ and "<frozen" not in f.filename
        ]
        at = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
        out.write_text(json.dumps({"error": last + at, "figures": _made_so_far(target)}))
        traceback.print_exc()
        return 1


def _stop(proc: subprocess.Popen) -> None:
    """SIGINT the benchmark's process group (its finally blocks stop servers), then SIGKILL it."""
    for sig, wait in ((signal.SIGINT, 30), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def run_one(b: Benchmark, quick: bool, tmp: Path) -> dict:
    """One benchmark's entry: its figures, or a failure figure with what went wrong."""
    out = tmp / f"{b.key.replace(' ', '_')}.json"
    work = tmp / b.key.replace(" ", "_")
    work.mkdir(parents=True, exist_ok=True)
    limit = b.quick_s * QUICK_LIMIT_FACTOR if quick else FULL_LIMIT_S
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", f"{b.module}:{b.function}", "--tmp", str(work)]
    cmd += ["--out", str(out), *(["--quick"] if quick else [])]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCH), str(REPO), os.environ.get("PYTHONPATH")) if p)
    started, date, load = time.perf_counter(), now_iso(), os.getloadavg()[0]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, start_new_session=True)
    error = None
    try:
        proc.wait(limit)
    except subprocess.TimeoutExpired:
        _stop(proc)
        error = f"ran past its limit of {limit:.0f} s and was stopped"
    seconds = time.perf_counter() - started
    try:
        result = json.loads(out.read_text())
    except (OSError, ValueError):
        result = {"error": error or f"exited with code {proc.returncode} and wrote no figures"}
    error = error or result.get("error")
    if error is None and proc.returncode != 0:
        error = f"exited with code {proc.returncode}"
    figures = result.get("figures", [])
    if error is not None:  # what it measured before it failed or was stopped stays, beside the failure
        figures = [*figures, failure_figure(b.section, b.key, error).to_json()]
    return {
        "benchmark": b.key,
        "module": b.module,
        "function": b.function,
        "machine": b.machine,
        "status": FAILED if error else MEASURED,
        "date": date,
        "seconds": round(seconds, 1),
        "load_before": round(load, 2),
        "error": error,
        "figures": figures,
    }


# -- the whole run --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="the short version: at most 10 minutes on a 2-core CPU box")
    p.add_argument("--only", action="append", default=None, help="run only this benchmark (repeatable)")
    p.add_argument("--out-dir", default=str(BENCH), help="where report.json and REPORT.md go (default: bench/)")
    p.add_argument("--keep", action="store_true", help="keep the work folder (records, server logs)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--tmp", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def plan(benchmarks: tuple[Benchmark, ...], only: list[str] | None, cuda: bool) -> list[tuple[Benchmark, str | None]]:
    """Each benchmark with why it is not run here (None: it runs)."""
    kind = "cuda" if cuda else "cpu"
    out = []
    for b in benchmarks:
        if only and b.key not in only:
            out.append((b, "not selected (--only)"))
        elif b.machine != kind:
            out.append(
                (b, "no CUDA GPU on this machine" if b.machine == "cuda" else "measured on the CPU box, not here")
            )
        else:
            out.append((b, None))
    return out


def main(argv: list[str] | None = None, benchmarks: tuple[Benchmark, ...] = BENCHMARKS) -> int:
    args = parse_args(argv)
    if args.child:
        return child(args.child, args.quick, Path(args.tmp), Path(args.out))
    unknown = sorted(set(args.only or []) - {b.key for b in benchmarks})
    if unknown:
        print(f"run.py: no benchmark named {', '.join(unknown)} (there are: {', '.join(b.key for b in benchmarks)})")
        return 2
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    previous, previous_note = load_previous(out_dir / "report.json")
    host, date = host_facts(), now_iso()
    tmp = Path(tempfile.mkdtemp(prefix="amp-bench-"))
    print(f"bench/run.py ({'quick' if args.quick else 'full'}) on {host['cpu']}, {host['cores']} CPUs, "
          f"{host['gpu'] or 'no CUDA GPU'}; work folder {tmp}", flush=True)  # fmt: skip
    entries, t_all = [], time.perf_counter()
    for b, why in plan(benchmarks, args.only, host["cuda"]):
        if why:
            entry = carry_over({"benchmark": b.key, "machine": b.machine, "status": NOT_RUN, "why": why}, previous)
            print(f"-- {b.key}: {entry['status']} ({why})", flush=True)
        else:
            print(f"-- {b.key} ({b.module}.{b.function}) ...", flush=True)
            entry = {**run_one(b, args.quick, tmp), "host": host}
            share = f" of its {b.quick_s:.0f} s share" if args.quick else ""
            print(f"-- {b.key}: {entry['status']} in {entry['seconds']:.0f} s{share}"
                  + (f": {entry['error']}" if entry["error"] else ""), flush=True)  # fmt: skip
        entries.append(entry)
    notes = [previous_note] if previous_note else []
    report = build_report(entries, date=date, host=host, versions=versions(), quick=args.quick, notes=notes)
    json_path, md_path = write_report(report, out_dir)
    failed = [e["benchmark"] for e in entries if e["status"] == FAILED]
    print(f"wrote {md_path} and {json_path} in {time.perf_counter() - t_all:.0f} s"
          + (f"; FAILED: {', '.join(failed)} (work folder kept: {tmp})" if failed else ""), flush=True)  # fmt: skip
    if not failed and not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
