"""Live redraw cost per run size, the Home page against a bare Streamlit page, and a crowd of viewers.

    python bench/redraw.py [--quick] [--keep]

1. Server time of one live redraw at 1e3..1e6 steps: synthetic fp16 records (RunWriter), each made
   to look running; before each redraw 10 steps are appended (about a second of a CPU run), then
   what a live view does on the server is timed: `LiveRun.snapshot()` (the poll of the new lines),
   `LiveRun.figures()` (the three charts), and what `st.plotly_chart` does with each figure
   (validate, serialise). Payload: the three figures' JSON bytes. Goal at 1e6: <= 50 ms, <= 300 kB.
   In the browser: the websocket bytes the Runs page receives per live redraw of the 1e6 record.
2. Home ready (navigation start -> script settled) as a ratio to a one-line `st.write("hi")` app,
   served the same way; loads interleaved (A B B A ...), a fresh browser context each.
3. 10 viewers on one real training run (bench/crowd.py): redraws per viewer per minute, the
   server's CPU (seconds per second) and resident memory.

Timings on a small shared machine are noisy: medians of repeated redraws; the Home figure is a ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from amp_core.record import METRICS_FILE, RunWriter, now_iso  # noqa: E402
from amp_core.serve import live  # noqa: E402
from bench import crowd  # noqa: E402
from bench.harness import REPO, SETTLED, Server, check_no_exception, launch_browser, new_page  # noqa: E402
from bench.report import Figure, figure, interleaved_ratio, not_measured  # noqa: E402

SECTION = "redraw"
SIZES = (1_000, 10_000, 100_000, 1_000_000)
GOAL_AT = 1_000_000
GOAL_MS, GOAL_KB, GOAL_HOME = 50.0, 300.0, 1.5


def synth_columns(n: int, seed: int = 0, start_step: int = 0, t0: float | None = None) -> dict[str, list]:
    """Realistic fp16 AMP metrics: a GradScaler (init 2^16, growth interval 2000, backoff 0.5) with
    about 0.1% overflow steps, a decaying noisy loss and a log-normal gradient norm."""
    rng = np.random.default_rng(seed)
    overflow = rng.random(n) < 0.001
    scale, tracker = np.empty(n), np.empty(n, dtype=np.int64)
    s, t = 65536.0, 0
    for i in range(n):
        if overflow[i]:
            s, t = max(1.0, s * 0.5), 0
        else:
            t += 1
            if t >= 2000:
                s, t = min(2.0**24, s * 2.0), 0
        scale[i], tracker[i] = s, t
    steps = np.arange(start_step, start_step + n)
    loss = 2.3 * np.exp(-steps / 20000.0) + 0.05 + 0.03 * rng.standard_normal(n)
    grad = np.exp(rng.normal(-1.5, 0.4, n))
    t0 = time.time() - n * 0.01 if t0 is None else t0
    times = t0 + np.cumsum(rng.uniform(0.008, 0.012, n))
    return {"step": steps.tolist(), "loss": np.round(loss, 6).tolist(), "loss_scale": scale.tolist(),
            "skipped": overflow.tolist(), "grad_norm": np.round(grad, 6).tolist(), "growth_tracker": tracker.tolist(),
            "time": np.round(times, 4).tolist()}  # fmt: skip


def synth_rows(n: int, seed: int = 0, start_step: int = 0) -> list[dict]:
    c = synth_columns(n, seed, start_step)
    rows = [dict(zip(c, values)) for values in zip(*c.values())]
    for r in rows:
        r["grad_norm"] = None if r["skipped"] else r["grad_norm"]  # no gradient norm on an overflow step
    return rows


def synth_lines(n: int, seed: int, start_step: int, t0: float) -> str:
    """The lines RunWriter.append_metrics writes for synth_rows (json.dumps' own spelling), made faster
    for a million steps: floats as repr, null for a skipped step's gradient norm."""
    c = synth_columns(n, seed, start_step, t0)
    return "".join(
        f'{{"step": {s}, "loss": {lo!r}, "loss_scale": {sc!r}, "skipped": {"true" if k else "false"}, '
        f'"grad_norm": {"null" if k else repr(g)}, "growth_tracker": {gt}, "time": {tm!r}}}\n'
        for s, lo, sc, k, g, gt, tm in zip(*c.values())
    )


def synth_run(runs_dir: Path, n: int) -> Path:
    """A record of n steps whose status says running (this process's pid), as a live run's does."""
    config = {"precision": "16-mixed", "precision_resolved": "16-mixed", "accelerator": "cpu",
              "max_steps": 10 * n, "synthetic": True, "created_at": now_iso()}  # fmt: skip
    w = RunWriter.create(runs_dir, config, label=f"synthetic-{n}")
    w.set_status("running", created_at=now_iso(), started_at=now_iso(), pid=os.getpid(), host=socket.gethostname())
    w.close()
    with open(w.path / METRICS_FILE, "a") as f:
        for a in range(0, n, 50_000):
            f.write(synth_lines(min(50_000, n - a), seed=a, start_step=a, t0=time.time() - (n - a) * 0.01))
    return w.path


def st_plotly_serialise(fig) -> str:
    """What st.plotly_chart does with a figure before it goes on the wire."""
    import plotly.io
    import plotly.tools

    return plotly.io.to_json(plotly.tools.return_figure_from_figure_or_data(fig, validate_figure=True), validate=False)


def redraw_server(path: Path, n: int, repeats: int) -> dict:
    """Median server time and payload of a live redraw of the record at `path` (n steps)."""
    run = live.LiveRun(path)
    t0 = time.perf_counter()
    run.figures(run.snapshot())
    first_s = time.perf_counter() - t0
    writer = RunWriter.open(path)
    times, payload = [], 0
    try:
        for r in range(repeats):
            time.sleep(live.POLL_EVERY_S)  # a redraw a second: each reads the record anew
            writer.append_metrics(synth_rows(10, seed=10_000_000 + r, start_step=n + 10 * r))
            t0 = time.perf_counter()
            figs = run.figures(run.snapshot())
            payload = sum(len(st_plotly_serialise(f).encode()) for f in figs)
            times.append(time.perf_counter() - t0)
    finally:
        writer.close()
    return {"ms": 1e3 * statistics.median(times), "kb": payload / 1e3, "first_s": first_s, "repeats": repeats}


def websocket_per_redraw(p, path: Path, tmp: Path, seconds: float) -> dict:
    """Websocket bytes the Runs page receives per live redraw of the running record at `path`.

    A thread appends 10 steps every 0.5 s so the page's live fragment keeps redrawing. Streamlit sends
    each element as its own message (an unchanged chart as a short cache reference): a redraw is a
    burst of frames, split where the websocket is quiet for 0.25 s."""
    server = Server("app.py", REPO, path.parent, tmp / f"redraw-{path.name}.log")
    writer, stop, step = RunWriter.open(path), threading.Event(), [10**8]

    def append() -> None:
        while not stop.wait(0.5):
            writer.append_metrics(synth_rows(10, seed=step[0], start_step=step[0]))
            step[0] += 10

    appender = threading.Thread(target=append, daemon=True)
    browser = launch_browser(p)
    frames: list[tuple[float, int]] = []
    try:
        appender.start()
        ctx, page = new_page(browser, timeout_s=300)
        page.on("websocket", lambda ws: ws.on("framereceived", lambda d: frames.append((time.perf_counter(), len(d)))))
        page.goto(f"{server.url}/Runs?run={path.name}")
        page.wait_for_selector(SETTLED)
        page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length >= 3", polling=100)
        check_no_exception(page, "the Runs page")
        page.wait_for_timeout(1500)  # the first full render
        t0 = time.perf_counter()
        page.wait_for_timeout(seconds * 1000)
        t1 = time.perf_counter()
        bursts: list[int] = []
        last = -1.0
        for when, size in sorted(f for f in frames if t0 <= f[0] < t1):
            if not bursts or when - last > 0.25:
                bursts.append(0)
            bursts[-1] += size
            last = when
        ctx.close()
        return {"kb": statistics.median(bursts) / 1e3 if bursts else None, "redraws": len(bursts)}
    finally:
        stop.set()
        appender.join()
        writer.close()
        browser.close()
        server.stop()


READY_JS = f'() => document.querySelector("{SETTLED}") ? performance.now() : false'


def page_ready_s(browser, url: str) -> float:
    ctx, page = new_page(browser)
    try:
        page.goto(url, wait_until="commit")
        ms = page.wait_for_function(READY_JS, polling="raf").json_value()
        check_no_exception(page, url)
        return float(ms) / 1e3
    finally:
        ctx.close()


def home_ratio(p, tmp: Path, pairs: int):
    bare_dir = tmp / "bare"
    bare_dir.mkdir(exist_ok=True)
    (bare_dir / "hi.py").write_text('import streamlit as st\nst.write("hi")\n')
    app = Server("app.py", REPO, tmp / "home" / "runs", tmp / "home.log")
    bare = Server("hi.py", bare_dir, None, tmp / "bare.log")
    browser = launch_browser(p)
    try:
        page_ready_s(browser, app.url + "/")  # the first loads import the pages' modules: not counted
        page_ready_s(browser, bare.url + "/")
        return interleaved_ratio(
            lambda: page_ready_s(browser, bare.url + "/"), lambda: page_ready_s(browser, app.url + "/"), pairs
        )
    finally:
        browser.close()
        app.stop()
        bare.stop()


def _redraw_figures(sizes, repeats: int, tmp: Path) -> tuple[list[Figure], dict[int, Path]]:
    out, paths = [], {}
    for n in sizes:
        paths[n] = synth_run(tmp / f"runs-{n}", n)  # a runs folder per size: the Runs page lists only it
        r = redraw_server(paths[n], n, repeats)
        how = f"median of {r['repeats']} redraws, each after 10 new steps: LiveRun.snapshot + figures + st.plotly_chart's serialisation; first read {r['first_s']:.2f} s"
        goal = {"at_most": GOAL_MS} if n == GOAL_AT else {}
        out.append(figure(SECTION, f"redraw server time at {n:,} steps", round(r["ms"], 1), "ms", how, **goal))
        goal = {"at_most": GOAL_KB} if n == GOAL_AT else {}
        how = "the three live figures' JSON (what a redraw sends when every chart changed)"
        out.append(figure(SECTION, f"redraw payload at {n:,} steps", round(r["kb"], 1), "kB", how, **goal))
        print(
            f"  redraw {n:>9,} steps: {r['ms']:.1f} ms, {r['kb']:.1f} kB (first read {r['first_s']:.2f} s)", flush=True
        )
    return out, paths


def _browser_figures(p, paths: dict[int, Path], sizes, tmp: Path, quick: bool) -> list[Figure]:
    out = []
    for n in sizes:
        ws = websocket_per_redraw(p, paths[n], tmp, 5.0 if quick else 8.0)
        how = f"Runs page in Chromium, median websocket bytes per redraw burst ({ws['redraws']} redraws seen)"
        goal = {"at_most": GOAL_KB} if n == GOAL_AT else {}
        out.append(
            figure(
                SECTION, f"websocket per live redraw at {n:,} steps", ws["kb"] and round(ws["kb"], 1), "kB", how, **goal
            )
        )
        print(f"  websocket {n:>9,} steps: {ws['kb']} kB per redraw ({ws['redraws']} redraws)", flush=True)
    r = home_ratio(p, tmp, 4 if quick else 8)
    how = f"navigation -> settled, interleaved pairs, median {1e3 * r.b_median:.0f} ms vs {1e3 * r.a_median:.0f} ms bare (n={r.pairs})"
    out.append(figure(SECTION, "Home ready / bare Streamlit page", round(r.ratio, 2), "x", how, at_most=GOAL_HOME))
    print(f"  home: {r.ratio:.2f}x ({how})", flush=True)
    return out


def _crowd_figures(p, tmp: Path, seconds: float, viewers: int = 10) -> list[Figure]:
    (tmp / "crowd").mkdir(exist_ok=True)
    r = crowd.measure(viewers, seconds, 100_000, tmp / "crowd", p)
    print(f"  crowd: {json.dumps(r)}", flush=True)
    how = f"{viewers} Chromium pages on /Runs?run= of a real 16-mixed CPU run, {r['seconds']} s watched"
    rss = r["server_rss_mb"]
    return [
        figure(SECTION, f"{viewers} viewers: redraws per viewer per minute", round(60 * r["redraws_per_viewer_per_s"], 1), "/min",
               f"{how}; slowest viewer {r['slowest_viewer_redraws']} redraws"),
        figure(SECTION, f"{viewers} viewers: server CPU", r["cpu_s_per_s"]["server"], "CPU s/s",
               f"{how}; browsers {r['cpu_s_per_s']['browsers']}, training {r['cpu_s_per_s']['training']} CPU s/s, {r['train_steps_per_s']} steps/s"),
        figure(SECTION, f"{viewers} viewers: server memory", rss[1], "MB", f"{how}; resident set before the viewers {rss[0]} MB"),
    ]  # fmt: skip


def figures(quick: bool, tmp: Path) -> list[Figure]:
    """Every figure of this benchmark; each part that fails is reported as not measured."""
    tmp.mkdir(parents=True, exist_ok=True)
    out, paths = [], {}
    try:
        part, paths = _redraw_figures(SIZES, 5 if quick else 9, tmp)
        out += part
    except Exception as e:  # one part failing still reports the others
        out.append(not_measured(SECTION, "redraw server time", "ms", f"{type(e).__name__}: {e}"))
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser_sizes = [GOAL_AT] if quick else list(SIZES)
        for name, unit, fn in (
            (
                "websocket per live redraw / Home ready",
                "kB",
                lambda: _browser_figures(p, paths, browser_sizes, tmp, quick),
            ),
            ("10 viewers", "/min", lambda: _crowd_figures(p, tmp, 15.0 if quick else 40.0)),
        ):
            try:
                out += fn()
            except Exception as e:
                out.append(
                    not_measured(SECTION, name, unit, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
                )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--quick", action="store_true", help="fewer repeats, the browser at 1e6 steps only (about 2.5 minutes)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the work folder (records, server logs)")
    args = ap.parse_args(argv)
    os.environ["WANDB_MODE"] = "offline"
    tmp = Path(tempfile.mkdtemp(prefix="amp-redraw-"))
    t0 = time.perf_counter()
    print(
        f"redraw benchmark ({'quick' if args.quick else 'full'}); {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.1f}; {tmp}"
    )
    try:
        out = figures(args.quick, tmp)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    for f in out:
        met = {True: "met", False: "MISSED", None: ""}[f.met]
        print(f"{f.name:<48} {f.value!s:>9} {f.unit:<8} {f.goal or '':<9} {met:<7} {f.how}")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0 if all(f.met is not False and f.value is not None for f in out) else 1


if __name__ == "__main__":
    sys.exit(main())
