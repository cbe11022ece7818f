"""bench/run.py and bench/report.py: the report it writes, what it carries over, how a failing benchmark shows.

Real files throughout: reports written by write_report and read back as JSON, and run.py's own main
running benchmark modules in child processes. Nothing here times anything.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import report  # noqa: E402  (bench/report.py, as run.py and the benchmark modules import it)

_spec = importlib.util.spec_from_file_location("bench_run", BENCH / "run.py")
bench_run = sys.modules["bench_run"] = importlib.util.module_from_spec(_spec)  # run.py, by its path
_spec.loader.exec_module(bench_run)

CPU_BOX = {"cpu": "AMD EPYC", "cores": 2, "gpu": None, "cuda": False, "probe_error": None}
GPU_BOX = {"cpu": "Intel Xeon", "cores": 16, "gpu": "NVIDIA H200 (139.8 GiB)", "cuda": True, "probe_error": None}
VERSIONS = {"python": "3.11.7", "torch": "2.13.0+cpu"}


def entry(benchmark: str, machine: str, host: dict, date: str, figures: list[report.Figure]) -> dict:
    return {"benchmark": benchmark, "module": "m", "function": "figures", "machine": machine, "status": report.MEASURED,
            "date": date, "seconds": 12.5, "error": None, "host": host, "figures": [f.to_json() for f in figures]}  # fmt: skip


def written(tmp: Path, entries: list[dict], date: str, host: dict, notes: list[str] | None = None) -> dict:
    """Write a report as run.py does and read back what is on disk."""
    built = report.build_report(entries, date=date, host=host, versions=VERSIONS, quick=True, notes=notes or [])
    json_path, md_path = report.write_report(built, tmp)
    return {"json": json.loads(json_path.read_text()), "md": md_path.read_text()}


def cpu_run(date: str) -> list[dict]:
    return [
        entry("monitor", "cpu", CPU_BOX, date, [report.figure("monitor", "32-true", 1.05, "x", "paired", at_most=1.03)]),
        entry("compare", "cpu", CPU_BOX, date, [
            report.figure("compare", "mlp bf16-mixed: speedup", 1.9, "x", "ABBA", at_least=1.5),
            report.figure("compare", "mlp 32-true: step time", 97.5, "ms", "median"),
        ]),
    ]  # fmt: skip


def test_the_report_on_disk_has_machine_versions_and_figures_grouped_by_section(tmp_path):
    entries = cpu_run("2026-12-02T04:00:00+00:00")
    entries.insert(1, entry("redraw", "cpu", CPU_BOX, "2026-12-02T04:01:00+00:00", [
        report.figure("compare", "late compare figure", 3.0, "ms", "from another module"),
        report.figure("redraw", "1e6 steps", 42.0, "ms", "server time", at_most=50),
    ]))  # fmt: skip
    out = written(tmp_path, entries, "2026-12-02T04:05:00+00:00", CPU_BOX)
    data, md = out["json"], out["md"]
    assert data["machine"] == CPU_BOX and data["versions"] == VERSIONS and data["date"] == "2026-12-02T04:05:00+00:00"
    sections = [f["section"] for f in data["figures"]]
    assert sections == ["monitor", "compare", "compare", "compare", "redraw"]  # grouped, first appearance first
    names = [f["name"] for f in data["figures"] if f["section"] == "compare"]
    assert names == ["late compare figure", "mlp bf16-mixed: speedup", "mlp 32-true: step time"]
    for f in data["figures"]:
        assert set(f) == {"section", "name", "value", "unit", "goal", "met", "how", "benchmark"}
    monitor = data["figures"][0]
    assert (monitor["goal"], monitor["met"], monitor["benchmark"]) == ("<= 1.03", False, "monitor")
    assert [b["benchmark"] for b in data["benchmarks"]] == ["monitor", "redraw", "compare"]
    assert all("figures" not in b for b in data["benchmarks"])
    assert "## compare" in md and "## redraw" in md
    assert "| 32-true | 1.05 x | <= 1.03 | **no** | paired |" in md
    assert "| mlp bf16-mixed: speedup | 1.9 x | >= 1.5 | yes | ABBA |" in md
    assert "AMD EPYC, 2 logical CPUs, no CUDA GPU" in md
    assert not list(tmp_path.glob("*.tmp"))


def test_a_cpu_run_keeps_the_last_gpu_section_with_its_device_and_date(tmp_path):
    gpu_date = "2026-11-27T10:00:00+00:00"
    cuda = entry(
        "cuda",
        "cuda",
        GPU_BOX,
        gpu_date,
        [report.figure("cuda", "mlp bf16-mixed: share of dense peak", 0.41, "", "H200 bf16")],
    )
    gpu_run = [
        {"benchmark": "compare", "machine": "cpu", "status": report.NOT_RUN, "why": "measured on the CPU box"},
        cuda,
    ]
    previous = written(tmp_path, gpu_run, gpu_date, GPU_BOX)["json"]

    not_here = {"benchmark": "cuda", "machine": "cuda", "status": report.NOT_RUN, "why": "no CUDA GPU on this machine"}
    kept = report.carry_over(not_here, previous)
    assert kept["status"] == report.CARRIED and kept["carried_from"] == gpu_date and kept["host"] == GPU_BOX
    out = written(tmp_path, [*cpu_run("2026-12-02T04:00:00+00:00"), kept], "2026-12-02T04:05:00+00:00", CPU_BOX)
    data = out["json"]
    carried = [f for f in data["figures"] if f["benchmark"] == "cuda"]
    assert [(f["name"], f["value"]) for f in carried] == [("mlp bf16-mixed: share of dense peak", 0.41)]
    cuda_entry = next(b for b in data["benchmarks"] if b["benchmark"] == "cuda")
    assert cuda_entry["date"] == gpu_date and cuda_entry["status"] == report.CARRIED
    assert (
        f"- cuda: measured {gpu_date} on Intel Xeon, 16 logical CPUs, NVIDIA H200 (139.8 GiB); no CUDA GPU" in out["md"]
    )

    # Carried again by the next CPU run: still dated from the GPU run, not from the run that carried it.
    again = report.carry_over(not_here, report.load_previous(tmp_path / "report.json")[0])
    assert again["carried_from"] == gpu_date and again["figures"] == [
        {k: v for k, v in carried[0].items() if k != "benchmark"}
    ]


def test_a_gpu_run_keeps_the_last_cpu_sections(tmp_path):
    cpu_date = "2026-12-02T04:00:00+00:00"
    previous = written(tmp_path, cpu_run(cpu_date), cpu_date, CPU_BOX)["json"]
    here = [(b, why) for b, why in bench_run.plan(bench_run.BENCHMARKS, None, cuda=True)]
    assert {b.key for b, why in here if why is None} == {"cuda"}
    kept = [report.carry_over({"benchmark": b.key, "machine": b.machine, "status": report.NOT_RUN, "why": why}, previous)
            for b, why in here if why]  # fmt: skip
    by_key = {k["benchmark"]: k for k in kept}
    assert by_key["monitor"]["status"] == by_key["compare"]["status"] == report.CARRIED
    assert by_key["compare"]["carried_from"] == cpu_date and len(by_key["compare"]["figures"]) == 2
    assert by_key["redraw"]["status"] == report.NOT_RUN  # nothing on record to keep: nothing invented


def test_a_failed_benchmark_is_not_carried_and_an_unreadable_report_says_so(tmp_path):
    failed = {
        **entry("cuda", "cuda", GPU_BOX, "2026-11-27T10:00:00+00:00", []),
        "status": report.FAILED,
        "error": "boom",
    }
    previous = written(tmp_path, [failed], "2026-11-27T10:00:00+00:00", GPU_BOX)["json"]
    not_here = {"benchmark": "cuda", "machine": "cuda", "status": report.NOT_RUN, "why": "no CUDA GPU"}
    assert report.carry_over(not_here, previous) == not_here
    (tmp_path / "report.json").write_text("{not json")
    data, note = report.load_previous(tmp_path / "report.json")
    assert data is None and "could not be read" in note
    assert report.load_previous(tmp_path / "absent.json") == (None, None)


MODULES = {
    "fine_bench.py": "from report import figure\n\ndef figures(quick, tmp):\n"
                     "    assert quick and tmp.is_dir()\n    return [figure('fine', 'answer', 42.0, 'x', 'by the test', at_most=50)]\n",
    "raising_bench.py": "def figures(quick, tmp):\n    raise ValueError('deliberately broken')\n",
    "wrong_bench.py": "def figures(quick, tmp):\n    return {'not': 'a list'}\n",
    "namespaced_bench.py": "from bench.report import figure  # the same class under another module name\n\n"
                           "def figures(quick, tmp):\n    return [figure('ns', 'other name', 1.0, 'x', 'bench.report')]\n",
    "nan_bench.py": "from report import figure\n\ndef figures(quick, tmp):\n"
                    "    return [figure('nan', 'ratio', float('nan'), 'x', 'zero over zero', at_most=1.03)]\n",
    "stopped_bench.py": "import time\nfrom report import figure\n\ndef figures(quick, tmp):\n"
                        "    first = figure('stopped', 'measured before the limit', 7.0, 'ms', 'by the test')\n"
                        "    time.sleep(120)\n    return [first]\n",
    "half_bench.py": "from bench.report import figure\n\ndef figures(quick, tmp):\n"
                     "    figure('half', 'first part', 3.0, 'x', 'by the test', at_most=5)\n"
                     "    raise RuntimeError('second part broke')\n",
}  # fmt: skip


@pytest.fixture
def bench_modules(tmp_path, monkeypatch):
    mods = tmp_path / "mods"
    mods.mkdir()
    for name, text in MODULES.items():
        (mods / name).write_text(text)
    monkeypatch.setenv("PYTHONPATH", str(mods))
    return mods


def test_run_records_a_failing_benchmark_and_exits_non_zero(tmp_path, bench_modules):
    B = bench_run.Benchmark
    table = (
        B("fine", "fine_bench", "figures", "fine", "cpu", 60),
        B("missing", "no_such_bench_module", "figures", "missing", "cpu", 60),
        B("raises", "raising_bench", "figures", "raises", "cpu", 60),
        B("wrong", "wrong_bench", "figures", "wrong", "cpu", 60),
        B("nan", "nan_bench", "figures", "nan", "cpu", 60),
        B("namespaced", "namespaced_bench", "figures", "ns", "cpu", 60),
        B("gpu only", "fine_bench", "figures", "cuda", "cuda", 60),
    )
    out_dir = tmp_path / "out"
    assert bench_run.main(["--quick", "--out-dir", str(out_dir)], benchmarks=table) == 1
    data = json.loads((out_dir / "report.json").read_text())
    status = {b["benchmark"]: b["status"] for b in data["benchmarks"]}
    assert status == {
        "fine": "measured",
        "missing": "failed",
        "raises": "failed",
        "wrong": "failed",
        "nan": "measured",
        "namespaced": "measured",
        "gpu only": "not run",
    }
    by_name = {f["name"]: f for f in data["figures"]}
    assert by_name["answer"]["value"] == 42.0 and by_name["answer"]["met"] is True
    assert by_name["other name"]["value"] == 1.0
    for key, words in (
        ("missing", "ModuleNotFoundError"),
        ("raises", "deliberately broken"),
        ("wrong", "not a list of Figure"),
    ):
        f = by_name[f"{key} failed"]
        assert f["value"] is None and f["met"] is None and words in f["how"], f
    assert by_name["ratio"]["value"] is None and by_name["ratio"]["met"] is None and "nan" in by_name["ratio"]["how"]
    assert "(at raising_bench.py:2)" in by_name["raises failed"]["how"]
    assert data["machine"]["cores"] and "torch" in data["versions"]
    assert "| missing | failed (ModuleNotFoundError" in (out_dir / "REPORT.md").read_text()


def test_run_refuses_an_unknown_benchmark_name(tmp_path):
    assert bench_run.main(["--only", "nope", "--out-dir", str(tmp_path)]) == 2
    assert not (tmp_path / "report.json").exists()


def test_a_second_run_keeps_what_it_did_not_measure_and_not_what_failed(tmp_path, bench_modules):
    B = bench_run.Benchmark
    table = (
        B("fine", "fine_bench", "figures", "fine", "cpu", 60),
        B("raises", "raising_bench", "figures", "raises", "cpu", 60),
    )
    out_dir = tmp_path / "out"
    assert bench_run.main(["--quick", "--out-dir", str(out_dir)], benchmarks=table) == 1
    first = json.loads((out_dir / "report.json").read_text())
    assert bench_run.main(["--quick", "--only", "raises", "--out-dir", str(out_dir)], benchmarks=table) == 1
    second = json.loads((out_dir / "report.json").read_text())
    fine = next(b for b in second["benchmarks"] if b["benchmark"] == "fine")
    assert fine["status"] == "carried over" and fine["carried_from"] == first["benchmarks"][0]["date"]
    assert [f["name"] for f in second["figures"] if f["benchmark"] == "fine"] == ["answer"]
    assert "- fine: measured " + fine["carried_from"] in (out_dir / "REPORT.md").read_text()
    assert bench_run.main(["--quick", "--only", "fine", "--out-dir", str(out_dir)], benchmarks=table) == 0
    third = json.loads((out_dir / "report.json").read_text())
    raises = next(b for b in third["benchmarks"] if b["benchmark"] == "raises")
    assert raises["status"] == "not run" and not [f for f in third["figures"] if f["benchmark"] == "raises"]


def test_the_machine_line_says_the_vector_units_that_decide_16_bit_speed(tmp_path):
    avx2 = {**CPU_BOX, "cpu_features": ["avx2"]}
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    older = written(
        tmp_path / "a", [entry("monitor", "cpu", CPU_BOX, "2026-12-01T08:00:00+00:00", [])], "2026-12-01", CPU_BOX
    )
    newer = written(
        tmp_path / "b", [entry("monitor", "cpu", avx2, "2026-12-02T08:00:00+00:00", [])], "2026-12-02", avx2
    )
    assert "Machine: AMD EPYC (AVX2), 2 logical CPUs, no CUDA GPU." in newer["md"]
    # a report written before the units were noted says nothing about them (rather than "none")
    assert "Machine: AMD EPYC, 2 logical CPUs, no CUDA GPU." in older["md"]
    assert newer["json"]["machine"]["cpu_features"] == ["avx2"] and "cpu_features" not in older["json"]["machine"]
    assert set(bench_run.cpu_features()) <= set(bench_run.CPU_FEATURES)


def test_what_a_benchmark_measured_before_it_was_stopped_or_broke_stays_in_the_report(tmp_path, bench_modules):
    B = bench_run.Benchmark
    table = (
        B("stopped", "stopped_bench", "figures", "stopped", "cpu", 1),  # --quick: stopped after 2 s
        B("half", "half_bench", "figures", "half", "cpu", 60),
    )
    out_dir = tmp_path / "out"
    assert bench_run.main(["--quick", "--out-dir", str(out_dir)], benchmarks=table) == 1
    data = json.loads((out_dir / "report.json").read_text())
    assert {b["benchmark"]: b["status"] for b in data["benchmarks"]} == {"stopped": "failed", "half": "failed"}
    by_name = {f["name"]: f for f in data["figures"]}
    assert by_name["measured before the limit"]["value"] == 7.0
    assert "ran past its limit of 2 s" in by_name["stopped failed"]["how"]
    assert by_name["first part"]["value"] == 3.0 and by_name["first part"]["met"] is True
    assert "second part broke" in by_name["half failed"]["how"]
    md = (out_dir / "REPORT.md").read_text()
    assert "| measured before the limit | 7 ms |" in md and "| first part | 3 x | <= 5 | yes |" in md
