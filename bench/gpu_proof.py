"""Everything issues 11 and 12 need from a GPU, in one device call (run by bench/gpu_proof.sh).

    OUT=/tmp/gpuproof bash bench/gpu_proof.sh      # here: a rehearsal, the CUDA arms skipped or CPU-sized

Phases, in order of priority, each a child process with its own time limit inside one overall
budget (a phase that overruns is interrupted, then killed; what it wrote stays):

    env           nvidia-smi, torch / CUDA / Lightning versions, the hardware probe, the wheel install -> env.txt
    tests         pytest -m cuda on the test files that have CUDA tests                               -> cuda-tests.txt
    monitor       host syncs per step inside the monitor's hooks, counted (sync debug mode "warn"),
                  and its overhead per step against bare Lightning (bench/monitor_overhead.py's arms) -> monitor.json
    compare-mlp   python -m amp_core.compare: 32-true, 32-true+tf32, bf16-mixed, 16-mixed on the MLP
                  at a matmul-bound size                                                               -> compare-mlp.json
    recordings    bench/record_demo_runs.py: the demo recordings (issue 12), with the comparison above
                  as their compare group                                                               -> demo_runs.tar.gz
    compare-gpt   the same comparison with --workload gpt, or "not available" where the flag is refused -> compare-gpt.json

Then summary.json: each phase's exit code and seconds, and the headline figures. bench/gpu_proof.sh
tees the whole output to proof.log. Eight files in all, none in a subfolder. Without CUDA the
monitor phase is skipped, and compare and recordings run CPU-sized (the tarball is then named
demo_runs-cpu-rehearsal.tar.gz: a CPU run is never shipped as a GPU one).
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
TAG = "AMP_PROOF_TAG"  # in the environment of every process this script starts: leftovers are found by it
WORK = Path(os.environ.get("AMP_PROOF_WORK", "/tmp/amp-proof"))
CAPS = {"env": 60, "tests": 220, "monitor": 130, "compare-mlp": 170, "recordings": 150, "compare-gpt": 120}
CPU_CAPS = {
    "recordings": 260
}  # the rehearsal: six CPU-sized runs on a small shared CPU take longer than on the GPU machine
COMPARE = {  # (precisions, hidden, depth, batch, steps): matmul-bound on a GPU, seconds on a CPU
    "gpu": ("32-true,32-true+tf32,bf16-mixed,16-mixed", 8192, 4, 8192, 50),
    "cpu": (
        "32-true,bf16-mixed",
        64,
        1,
        32,
        17,
    ),  # 17: the fewest steps a comparison times (compare.min_comparison_steps)
}
GPT_SIZE = {  # a GPT a GPU is matmul-bound on (~25M parameters, 8k tokens a step); the workload's defaults on a CPU
    "gpu": ["--layers", "8", "--heads", "8", "--width", "512", "--context", "256", "--batch-size", "32"],
    "cpu": ["--batch-size", "16"],
}
SUMMARY_LINE = re.compile(r"^=*\s*(\d+ (passed|failed|skipped|deselected|error|errors)\b.*?)\s*=*$")


def log(message: str) -> None:
    print(f"[gpu_proof {time.strftime('%H:%M:%S')}] {message}", flush=True)


class Budget:
    def __init__(self, seconds: float, caps: dict):
        self.deadline = time.monotonic() + seconds
        self.caps = caps

    def limit(self, phase: str) -> float:
        return max(0.0, min(self.caps[phase], self.deadline - time.monotonic() - 5))


def run_phase(name: str, argv: list[str], limit: float, output: Path | None = None, env: dict | None = None) -> dict:
    """Run one child; its output goes to `output` (or to this log). On overrun: SIGINT (pytest's
    finalizers close launchers), then SIGKILL. Returns its exit code, seconds and last lines."""
    if limit < 10:
        log(f"{name}: skipped, the overall budget is spent")
        return {"rc": None, "seconds": 0.0, "note": "skipped: no time left in the budget"}
    log(f"{name}: {shlex.join(argv)}  (limit {limit:.0f} s)")
    started = time.monotonic()
    sink = open(output, "w") if output else None
    proc = subprocess.Popen(
        argv,
        cwd=ROOT,
        stdout=sink or subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
        start_new_session=True,
    )
    note = ""
    try:
        out, _ = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        note = f"interrupted after {limit:.0f} s"
        os.killpg(proc.pid, signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
    finally:
        if sink:
            sink.close()
    text = output.read_text(errors="replace") if output else (out or "")
    if not output:
        print(text, end="" if text.endswith("\n") else "\n", flush=True)
    seconds = time.monotonic() - started
    log(f"{name}: exit {proc.returncode} in {seconds:.0f} s {note}")
    return {
        "rc": proc.returncode,
        "seconds": round(seconds, 1),
        "note": note,
        "tail": text.strip().splitlines()[-3:],
        "last_line": (text.strip().splitlines() or [""])[-1],
    }


def kill_leftovers(tag: str) -> list[int]:
    """Kill, by pid, processes this script started that outlived their phase (workers run in their own session)."""
    killed = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if f"{TAG}={tag}".encode() in environ.split(b"\0"):
            try:
                os.kill(int(entry.name), signal.SIGKILL)
                killed.append(int(entry.name))
            except (ProcessLookupError, PermissionError):
                pass
    return killed


def hardware() -> dict:
    try:
        out = subprocess.run(
            [PY, "-m", "amp_core.serve.hardware"], cwd=ROOT, capture_output=True, text=True, timeout=90
        )
        return json.loads(out.stdout)
    except (OSError, ValueError, subprocess.TimeoutExpired) as e:
        return {"error": f"{type(e).__name__}: {e}", "cuda_available": False, "devices": []}


def env_phase(out: Path, facts: dict) -> dict:
    started = time.monotonic()
    lines = [
        f"python {sys.version.split()[0]} at {PY}",
        f"hardware probe (python -m amp_core.serve.hardware): {json.dumps(facts)}",
    ]
    for name in (
        "torch",
        "pytorch-lightning",
        "lightning",
        "numpy",
        "plotly",
        "wandb",
        "pydantic",
        "pytest",
        "hypothesis",
        "pandas",
    ):
        try:
            lines.append(f"{name} {md.version(name)}")
        except md.PackageNotFoundError:
            lines.append(f"{name} not installed")
    cuda = subprocess.run(
        [
            PY,
            "-c",
            "import torch; print(torch.version.cuda, torch.backends.cudnn.version() if torch.cuda.is_available() else None)",
        ],
        capture_output=True,
        text=True,
    )
    lines.append(f"torch.version.cuda, cudnn: {cuda.stdout.strip() or cuda.stderr.strip()[-200:]}")
    api = subprocess.run([PY, "-c", API_CHECK], cwd=ROOT, capture_output=True, text=True, timeout=120)
    lines.append(api.stdout.strip() or f"API check failed: {api.stderr.strip()[-400:]}")
    wheels = Path(os.environ.get("AMP_PROOF_WHEELS_LOG", "/nonexistent"))
    lines.append("wheels: " + (wheels.read_text().strip() if wheels.is_file() else "no install log"))
    for cmd in (
        ["nvidia-smi"],
        ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm", "--format=csv"],
    ):
        try:
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            lines += [f"$ {' '.join(cmd)}", res.stdout.strip() or res.stderr.strip()]
        except (OSError, subprocess.TimeoutExpired) as e:
            lines.append(f"$ {' '.join(cmd)}: {type(e).__name__}")
    lines.append(f"cpu count {os.cpu_count()}; started {time.strftime('%Y-%m-%d %H:%M:%S %Z')}")
    (out / "env.txt").write_text("\n".join(lines) + "\n")
    return {
        "rc": 0,
        "seconds": round(time.monotonic() - started, 1),
        "note": api.stdout.strip().splitlines()[0] if api.stdout.strip() else "API check failed",
    }


# The torch APIs amp_core relies on (public and GradScaler internals), checked on the torch there (2.11 on
# the GPU machine, 2.13 here), and every amp_core module imported.
API_CHECK = """
import importlib, pkgutil, torch, amp_core
from torch.amp.grad_scaler import OptState
s = torch.amp.GradScaler("cpu")
checks = {
    "torch.OutOfMemoryError": hasattr(torch, "OutOfMemoryError"),
    "torch.get_autocast_dtype": hasattr(torch, "get_autocast_dtype"),
    "torch.is_autocast_enabled(device)": torch.is_autocast_enabled("cpu") in (True, False),
    "GradScaler('cpu') _scale/_growth_tracker/_per_optimizer_states": all(hasattr(s, a) for a in ("_scale", "_growth_tracker", "_per_optimizer_states")),
    "OptState.UNSCALED": hasattr(OptState, "UNSCALED"),
    "torch._foreach_norm(ord=inf)": float(torch.stack(torch._foreach_norm([torch.tensor([3.0, -4.0])], float("inf")))[0]) == 4.0,
    "torch.cuda.get_sync_debug_mode": hasattr(torch.cuda, "get_sync_debug_mode"),
    "torch.backends.cpu.get_cpu_capability": bool(torch.backends.cpu.get_cpu_capability()),
    "torch.float8_e4m3fn": hasattr(torch, "float8_e4m3fn"),
}
failed = []
for m in pkgutil.iter_modules(amp_core.__path__):
    try:
        importlib.import_module("amp_core." + m.name)
    except Exception as e:
        failed.append(f"amp_core.{m.name}: {type(e).__name__}: {e}")
print("torch", torch.__version__, "API checks:", "all present" if all(checks.values()) else "MISSING " + str([k for k, v in checks.items() if not v]))
print("amp_core imports:", "all" if not failed else failed)
"""


def test_files() -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_*.py") if "mark.cuda" in p.read_text())


def compare_argv(accelerator: str, runs_dir: Path, json_out: Path, workload: str | None = None) -> list[str]:
    precisions, hidden, depth, batch, steps = COMPARE[accelerator]
    size = (
        ["--hidden", str(hidden), "--depth", str(depth), "--batch-size", str(batch)]
        if workload is None
        else ["--workload", workload, *GPT_SIZE[accelerator]]
    )
    return [
        PY,
        "-m",
        "amp_core.compare",
        "--accelerator",
        accelerator,
        "--precisions",
        precisions,
        *size,
        "--max-steps",
        str(steps),
        "--runs-dir",
        str(runs_dir),
        "--json",
        str(json_out),
    ]


def compare_gpt(accelerator: str, out: Path, budget: Budget, env: dict) -> dict:
    json_out = out / "compare-gpt.json"
    result = run_phase(
        "compare-gpt",
        compare_argv(accelerator, WORK / "compare-gpt-runs", json_out, "gpt"),
        budget.limit("compare-gpt"),
        env=env,
    )
    refused = result["rc"] == 2 and any("workload" in line for line in result.get("tail", []))
    if refused or (result["rc"] is not None and not json_out.exists()):
        json_out.write_text(
            json.dumps(
                {
                    "available": not refused,
                    "reason": "python -m amp_core.compare refused --workload gpt" if refused else "no summary written",
                    "output": result.get("tail", []),
                },
                indent=1,
            )
        )
    return result


def headline(out: Path, phases: dict) -> dict:
    """The figures the issues ask for, read back from the files the phases wrote."""

    def read(name: str) -> dict:
        try:
            return json.loads((out / name).read_text())
        except (OSError, ValueError):
            return {}

    tests = (
        (out / "cuda-tests.txt").read_text(errors="replace").splitlines() if (out / "cuda-tests.txt").exists() else []
    )
    summary_line = next((m.group(1) for line in reversed(tests) if (m := SUMMARY_LINE.match(line.strip()))), None)
    monitor = read("monitor.json")
    figures = {
        "cuda_tests": summary_line,
        "syncs_per_step": {r["precision"]: r["syncs_per_step"] for r in monitor.get("sync_counts", [])}
        or monitor.get("skipped"),
        "monitor_overhead": {
            r["precision"]: {k: round(r[k], 4) for k in ("paired", "hooks", "trials")}
            for r in monitor.get("overhead", [])
        }
        or monitor.get("skipped"),
    }
    for name in ("compare-mlp", "compare-gpt"):
        c = read(f"{name}.json")
        keys = (
            "variant",
            "state",
            "median_step_ms",
            "speedup",
            "memory_reduction",
            "tflops",
            "peak_share",
            "loss_diff",
            "verdict",
        )
        figures[name] = (
            {"device": c.get("device"), "rows": [{k: r.get(k) for k in keys} for r in c.get("rows", [])]}
            if "rows" in c
            else c or None
        )
    try:  # record_demo_runs.py ends with its JSON summary: each recording's steps, backoffs and growths
        figures["recordings"] = json.loads(phases["recordings"].get("last_line") or "")
    except ValueError:
        figures["recordings"] = None
    for phase in phases.values():  # the phases' own lines, short: the figures above are the full record
        if isinstance(phase, dict):
            phase.pop("last_line", None)
            phase["tail"] = [line[:300] for line in phase.get("tail", [])]
    figures["phases"] = phases
    return figures


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument(
        "--budget",
        type=float,
        default=float(os.environ.get("PROOF_BUDGET_S", 450)),
        help="seconds for all phases together",
    )
    args = p.parse_args()
    started = time.monotonic()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex
    env = {
        TAG: tag,
        "PYTHONPATH": os.pathsep.join(x for x in (str(ROOT), os.environ.get("PYTHONPATH")) if x),
        "WANDB_MODE": "offline",
    }
    facts = hardware()
    accelerator = "gpu" if facts.get("devices") else "cpu"
    budget = Budget(args.budget, {**CAPS, **(CPU_CAPS if accelerator == "cpu" else {})})
    log(f"accelerator: {accelerator}; {facts.get('devices') or facts.get('error') or 'no CUDA device'}")
    phases = {"env": env_phase(out, facts)}
    phases["tests"] = run_phase(
        "tests",
        [PY, "-m", "pytest", "-m", "cuda", "-rA", "-p", "no:cacheprovider", *test_files()],
        budget.limit("tests"),
        out / "cuda-tests.txt",
        env,
    )
    phases["tests"]["leftovers_killed"] = kill_leftovers(tag)
    phases["monitor"] = run_phase(
        "monitor",
        [PY, str(ROOT / "bench" / "monitor_proof.py"), str(out / "monitor.json")],
        budget.limit("monitor"),
        env=env,
    )
    compare_runs = WORK / "compare-mlp-runs"
    cmp_argv = compare_argv(accelerator, compare_runs, out / "compare-mlp.json")
    phases["compare-mlp"] = run_phase("compare-mlp", cmp_argv, budget.limit("compare-mlp"), env=env)
    demo = WORK / "demo_runs"
    rec_argv = [
        PY,
        str(ROOT / "bench" / "record_demo_runs.py"),
        "--into",
        str(demo),
        "--group",
        str(compare_runs),
        "--group-command",
        "python " + shlex.join(cmp_argv[1:]),
        *(["--rehearse", "--parallel", "2"] if accelerator == "cpu" else []),
    ]
    phases["recordings"] = run_phase("recordings", rec_argv, budget.limit("recordings"), env=env)
    if demo.is_dir():
        tar_name = "demo_runs.tar.gz" if accelerator == "gpu" else "demo_runs-cpu-rehearsal.tar.gz"
        with tarfile.open(out / tar_name, "w:gz") as tar:
            tar.add(demo, arcname="demo_runs")
        phases["recordings"]["tarball"] = f"{tar_name} ({(out / tar_name).stat().st_size / 1024:.0f} KiB)"
    phases["compare-gpt"] = compare_gpt(accelerator, out, budget, env)
    phases["leftovers_killed"] = kill_leftovers(tag)
    summary = {
        "accelerator": accelerator,
        "device": (facts.get("devices") or [{}])[0].get("name", "cpu"),
        "seconds": round(time.monotonic() - started, 1),
        **headline(out, phases),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    log("summary: " + json.dumps({k: v for k, v in summary.items() if k != "phases"}, separators=(",", ":")))
    for name, phase in phases.items():
        if isinstance(phase, dict):
            log(f"  {name:<12} exit {phase.get('rc')}  {phase.get('seconds')} s  {phase.get('note') or ''}")
    log(f"done in {summary['seconds']:.0f} s; files: {', '.join(sorted(f.name for f in out.iterdir()))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
