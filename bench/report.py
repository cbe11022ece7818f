"""What every benchmark returns: figures, each with its goal, and side-by-side ratios.

A figure is one measured number with the goal it is held to (or none) and one line saying how it
was measured. Speed figures are ratios of two things measured in the same run, interleaved (A B B A
...), so a machine that slows down or speeds up mid-run affects both sides alike.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class Figure:
    section: str  # e.g. "monitor", "first point", "redraw", "compare", "cuda"
    name: str
    value: float | None  # None: not measured (then `how` says why)
    unit: str
    goal: str | None  # e.g. "<= 1.03"; None where no goal applies
    met: bool | None  # None where no goal applies or nothing was measured
    how: str  # one line

    def __post_init__(self) -> None:
        MADE.append(self)

    def to_json(self) -> dict:
        return asdict(self)


# Every Figure made in this process, in order: what a benchmark stopped at its limit (or failing part-way)
# had already measured, which bench/run.py keeps beside the failure instead of losing it.
MADE: list[Figure] = []


def figure(
    section: str,
    name: str,
    value: float | None,
    unit: str,
    how: str,
    *,
    at_most: float | None = None,
    at_least: float | None = None,
) -> Figure:
    """A Figure whose goal and `met` follow from `at_most` / `at_least` (neither: no goal)."""
    if at_most is not None and at_least is not None:
        raise ValueError("a figure has one goal: at_most or at_least")
    goal, met = None, None
    if at_most is not None:
        goal = f"<= {at_most:g}"
        met = None if value is None else value <= at_most
    elif at_least is not None:
        goal = f">= {at_least:g}"
        met = None if value is None else value >= at_least
    return Figure(section, name, value, unit, goal, met, how)


def not_measured(section: str, name: str, unit: str, why: str, goal: str | None = None) -> Figure:
    """A figure that could not be measured; `met` stays None and `how` says why."""
    return Figure(section, name, None, unit, goal, None, f"not measured: {why}")


@dataclass
class Ratio:
    ratio: float  # median of b/a over the pairs
    a_median: float
    b_median: float
    pairs: int


def interleaved_ratio(a: Callable[[], float], b: Callable[[], float], pairs: int) -> Ratio:
    """Median of b()/a() over `pairs` pairs, run in ABBA order.

    Each callable returns the quantity measured (a duration in seconds, say); alternating which goes
    first cancels a drift that favours the first or the second of a pair.
    """
    if pairs < 1:
        raise ValueError("pairs must be at least 1")
    ratios, xs, ys = [], [], []
    for i in range(pairs):
        if i % 2 == 0:
            x, y = a(), b()
        else:
            y, x = b(), a()
        xs.append(x)
        ys.append(y)
        ratios.append(y / x)
    return Ratio(statistics.median(ratios), statistics.median(xs), statistics.median(ys), pairs)


def timed(fn: Callable[[], object]) -> Callable[[], float]:
    """`fn` as a callable returning how long one call took (perf_counter seconds)."""

    def run() -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    return run


# -- the report: bench/report.json and bench/REPORT.md ----------------------------------------------
#
# bench/run.py runs benchmarks (each a module's `figures(quick, tmp)`) and hands their results here.
# A benchmark's result is an entry: {"benchmark", "module", "function", "machine" ("cpu": measured where
# no CUDA GPU is, "cuda": only with one), "status", "date", "host" (the machine facts), "seconds",
# "error", "figures"}. The report lists the entries (without their figures) and all figures, each
# tagged with its benchmark, grouped by section. A benchmark this run did not measure (no CUDA here,
# or not selected) keeps its last measured entry and figures from the previous report.json, dated.

SCHEMA = 1
MEASURED, FAILED, CARRIED, NOT_RUN = "measured", "failed", "carried over", "not run"


def failure_figure(section: str, benchmark: str, error: str) -> Figure:
    """What a benchmark that failed leaves in the report: no value, the error in `how`."""
    return Figure(section, f"{benchmark} failed", None, "", None, None, f"failed: {error}")


def load_previous(path: Path) -> tuple[dict | None, str | None]:
    """The previous report.json, or (None, why not) where it is missing or unreadable."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as e:
        return None, f"the previous {Path(path).name} could not be read ({type(e).__name__}): nothing carried over"
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        return None, f"the previous {Path(path).name} is not a report of this kind: nothing carried over"
    return data, None


def carry_over(entry: dict, previous: dict | None) -> dict:
    """`entry` (not run here) replaced by its last measured entry in `previous`, figures included; else as is."""
    if previous is None:
        return entry
    old = next((b for b in previous["benchmarks"] if b.get("benchmark") == entry["benchmark"]), None)
    if old is None or old.get("status") not in (MEASURED, CARRIED):
        return entry
    figures = [f for f in previous.get("figures", []) if f.get("benchmark") == entry["benchmark"]]
    return {
        **old,
        "status": CARRIED,
        "carried_from": old.get("carried_from") or old.get("date"),
        "why": entry.get("why"),
        "figures": [{k: v for k, v in f.items() if k != "benchmark"} for f in figures],
    }


def build_report(entries: list[dict], *, date: str, host: dict, versions: dict, quick: bool, notes: list[str]) -> dict:
    """The report as one JSON-ready dict: this run's facts, every benchmark's entry, all figures by section."""
    figures = [{**f, "benchmark": e["benchmark"]} for e in entries for f in e.get("figures", [])]
    sections = list(dict.fromkeys(f["section"] for f in figures))
    return {
        "schema": SCHEMA,
        "date": date,
        "quick": quick,
        "machine": host,
        "versions": versions,
        "notes": notes,
        "benchmarks": [{k: v for k, v in e.items() if k != "figures"} for e in entries],
        "figures": sorted(figures, key=lambda f: sections.index(f["section"])),  # stable: order kept within a section
    }


def _value(f: dict) -> str:
    v = f.get("value")
    if v is None:
        return "—"
    text = f"{v:.4g}" if isinstance(v, float) else str(v)
    return f"{text} {f.get('unit') or ''}".strip()


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _host_line(host: dict) -> str:
    gpu = host.get("gpu") or "no CUDA GPU"
    features = host.get("cpu_features")  # absent in reports written before it was noted
    units = (
        f" ({', '.join(f.upper() for f in features) or 'none of AVX2, AVX-512, AMX'})" if features is not None else ""
    )
    return f"{host.get('cpu', '?')}{units}, {host.get('cores', '?')} logical CPUs, {gpu}"


def _benchmark_rows(report: dict) -> list[str]:
    lines = ["| benchmark | status | measured on | machine | seconds | load |", "|---|---|---|---|---|---|"]
    for b in report["benchmarks"]:
        status = (
            b["status"] + (f" ({b['error']})" if b.get("error") else "") + (f": {b['why']}" if b.get("why") else "")
        )
        seconds = f"{b['seconds']:.0f}" if isinstance(b.get("seconds"), (int, float)) else "—"
        host = _host_line(b["host"]) if b.get("host") else "—"
        cells = [b["benchmark"], status, b.get("date") or "—", host, seconds, b.get("load_before", "—")]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    carried = [b for b in report["benchmarks"] if b["status"] == CARRIED]
    if carried:
        lines += ["", "Carried over from an earlier report (not measured by this run):"]
        lines += [
            f"- {b['benchmark']}: measured {b['carried_from']} on {_host_line(b['host'])}; {b['why']}." for b in carried
        ]
    return lines


def _figure_rows(figures: list[dict]) -> list[str]:
    lines, section = [], None
    for f in figures:
        if f["section"] != section:
            section = f["section"]
            lines += ["", f"## {section}", "", "| figure | value | goal | met | how |", "|---|---|---|---|---|"]
        met = {True: "yes", False: "**no**", None: "—"}[f.get("met")]
        cells = [f["name"], _value(f), f.get("goal") or "—", met, f.get("how", "")]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return lines


def render_markdown(report: dict) -> str:
    """REPORT.md: the machine and versions, what each benchmark did (carried-over ones dated), the figures."""
    v = report["versions"]
    lines = [
        "# AMP Explorer: speed report",
        "",
        f"Written by `python bench/run.py{' --quick' if report['quick'] else ''}` on {report['date']}.",
        f"Machine: {_host_line(report['machine'])}.",
        "Versions: " + ", ".join(f"{k} {v[k]}" for k in v) + ".",
        "",
        "A speed figure held to a goal is a ratio of two things measured side by side in one run (interleaved pairs,",
        "median); absolute times stand beside them for scale. Load: the 1-minute load average as a benchmark began.",
        "",
        *_benchmark_rows(report),
    ]
    if report.get("notes"):
        lines += ["", *[f"Note: {n}" for n in report["notes"]]]
    return "\n".join([*lines, *_figure_rows(report["figures"])]) + "\n"


def write_report(report: dict, out_dir: Path) -> tuple[Path, Path]:
    """report.json and REPORT.md in `out_dir`, each written whole (a temporary file, then renamed)."""
    out_dir = Path(out_dir)
    paths = out_dir / "report.json", out_dir / "REPORT.md"
    for path, text in zip(paths, (json.dumps(report, indent=1) + "\n", render_markdown(report))):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
    return paths


def print_figures(found: list[Figure], with_how: bool = True) -> None:
    """A benchmark's figures as a plain table on stdout (its own `main()`; bench/run.py writes REPORT.md)."""
    for f in found:
        value = "-" if f.value is None else f"{f.value:.3f}"
        verdict = "" if f.met is None else ("met" if f.met else "NOT met")
        print(f"{f.name:<78} {value:>9} {f.unit:<4} {f.goal or '':<8} {verdict}")
        if with_how:
            print(f"    {f.how}")
