"""How fast the app feels, measured against a real `streamlit run` server and headless Chromium.

    python bench/app_latency.py            # the full benchmark (a few minutes)
    python bench/app_latency.py --quick    # fewer repeats
    python bench/app_latency.py --only redraw --sizes 1000,100000

Three measurements, each printed with its goal:

1. start: click "Start run" on the Train page -> the loss-scale chart has its first point in the
   browser. Warm (the launcher's spare worker has finished importing torch and Lightning) and cold
   (the warm worker turned off: the app offers no switch, so the server process patches
   Launcher's `warm` default to False before Streamlit starts; each start then imports torch and
   Lightning in a fresh worker).
2. redraw: synthetic run records of 1e3..1e6 steps (written with RunWriter). Server-side time of
   one live redraw (RunFollower.poll of the new lines, the three chart figures, and what
   st.plotly_chart does with them: validate and serialise), the figure JSON bytes
   (charts.figure_payload_bytes), the first full read (load_run), and, in the browser, the
   websocket bytes the Runs page receives per live redraw of a running record.
3. home: the Home page ready in the browser (navigation start -> script state notRunning) as a
   ratio to a one-line `st.write("hi")` app served the same way; loads interleaved, fresh browser
   context each.

Needs the PyPI `playwright` package and Chromium at /usr/bin/chromium (or $AMP_CHROMIUM); W&B
stays offline. Timings on a small shared machine are noisy: read medians, not single numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from amp_core import charts  # noqa: E402
from amp_core.record import RunFollower, RunWriter, load_run, now_iso  # noqa: E402
from bench.harness import (  # noqa: E402
    CHROMIUM,
    SETTLED,
    Server,
    check_no_exception,
    launch_browser,
    new_page,
    worker_pids,
)

# Points in the first trace of the chart titled "Loss scale ..." (0 while there is none); with an
# argument, only a chart of the run now in the URL (`?run=`), and only if that is not the run given.
# NumPy arrays reach Plotly as base64 typed arrays: `_fullData[i].x` is the decoded array.
LOSS_SCALE_POINTS_JS = """(notRun) => {
  const run = new URLSearchParams(location.search).get('run');
  if (notRun !== undefined && (!run || run === notRun)) return 0;
  let best = 0;
  for (const e of document.querySelectorAll('.js-plotly-plot')) {
    const t = e.layout && e.layout.title;
    const title = (typeof t === 'string' ? t : (t && t.text) || '').replace(/<[^>]*>/g, '');
    const traces = e._fullData || e.data || [];
    if (!title.startsWith('Loss scale') || !traces.length || !traces[0].x) continue;
    if (notRun !== undefined && !String(traces[0].name || '').startsWith(run)) continue;
    const x = traces[0].x;
    const n = typeof x.length === 'number' ? x.length : (x._inputArray && x._inputArray.length) || 0;
    best = Math.max(best, n);
  }
  return best;
}"""

GOALS = {"start_warm": 1.0, "start_cold": 3.0, "payload": 2_000_000, "home_ratio": 1.5}


# -- 1. start -> first point ------------------------------------------------------------------------


def run_state(runs_dir: Path, run_id: str) -> str:
    try:
        return json.loads((runs_dir / run_id / "status.json").read_text()).get("state", "")
    except (OSError, ValueError):
        return ""


def _iso_epoch(value) -> float | None:
    from datetime import datetime

    try:
        return datetime.fromisoformat(value).timestamp()
    except (TypeError, ValueError):
        return None


def click_start_and_time(page, server: Server, steps: int, wandb: str = "offline") -> tuple[float, str, str]:
    """On a settled Train page: set Steps, click Start run, time until the first loss-scale point.

    Returns (seconds, run id, where the time went: click -> the trainer writes 'running' -> the
    first step is written -> the browser draws it, from the record's own timestamps)."""
    page.get_by_role("spinbutton", name="Steps", exact=True).fill(str(steps))
    if wandb != "offline":  # the form's default
        page.locator("[data-testid='stRadio'] label").filter(has_text=re.compile(f"^{wandb}$")).click()
    button = page.get_by_role("button", name="Start run")
    button.wait_for()
    before = page.evaluate("() => new URLSearchParams(location.search).get('run') || ''")
    wall0, t0 = time.time(), time.perf_counter()
    button.click()
    # The page may still show the previous run (the Train page shows what is training): wait for
    # the new run's id in the URL and a loss-scale chart of that run.
    page.wait_for_function(f"(pre) => ({LOSS_SCALE_POINTS_JS})(pre) >= 1", arg=before, polling=20)
    elapsed = time.perf_counter() - t0
    drawn = wall0 + elapsed
    check_no_exception(page, "the Train page")
    run_id = page.evaluate("() => new URLSearchParams(location.search).get('run')") or ""
    split = ""
    try:
        status = json.loads((server.runs_dir / run_id / "status.json").read_text())
        with open(server.runs_dir / run_id / "metrics.jsonl") as f:
            first_row = json.loads(f.readline())
        running, written = _iso_epoch(status.get("started_at")), float(first_row["time"])
        if running:
            split = f"running +{running - wall0:.2f} s, first step written +{written - wall0:.2f} s, drawn +{drawn - wall0:.2f} s"
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return elapsed, run_id, split


def wait_final(runs_dir: Path, run_id: str, timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = run_state(runs_dir, run_id)
        if state in ("completed", "failed", "stopped", "interrupted"):
            return state
        time.sleep(0.2)
    return run_state(runs_dir, run_id)


def bench_start(p, tmp: Path, warm_n: int, cold_n: int, steps: int = 30, wandb: str = "offline") -> dict:
    out: dict = {"warm": [], "cold": [], "notes": []}
    browser = launch_browser(p)
    try:
        # Warm: one server; before each start, wait until its spare worker has warmed up.
        server = Server("app.py", REPO, tmp / "start-warm" / "runs", tmp / "start-warm.log")
        try:
            for i in range(warm_n):
                ctx, page = new_page(browser)
                page.goto(server.url + "/Train")
                page.wait_for_selector(SETTLED)
                check_no_exception(page, "the Train page")
                server.wait_spare()
                time.sleep(0.5)
                elapsed, run_id, split = click_start_and_time(page, server, steps, wandb)
                out["warm"].append(elapsed)
                print(f"  start warm #{i + 1}: {elapsed:.2f} s ({split})", flush=True)
                if run_id:
                    state = wait_final(server.runs_dir, run_id)
                    if state != "completed":
                        out["notes"].append(f"warm run {run_id} ended {state}")
                ctx.close()
        finally:
            server.stop()
        # Cold: the warm worker turned off, so every start launches a worker that imports torch and
        # Lightning first. One server; each start waits until the previous run has ended.
        server = Server("app.py", REPO, tmp / "start-cold" / "runs", tmp / "start-cold.log", cold=True)
        try:
            if worker_pids(server.runs_dir):
                out["notes"].append("cold server still started a warm worker: the patch did not apply")
            for i in range(cold_n):
                ctx, page = new_page(browser)
                page.goto(server.url + "/Train")
                page.wait_for_selector(SETTLED)
                check_no_exception(page, "the Train page")
                time.sleep(1.0)
                busy = worker_pids(server.runs_dir)
                if busy:
                    out["notes"].append(f"cold start #{i + 1}: a worker was already running ({busy})")
                elapsed, run_id, split = click_start_and_time(page, server, steps, wandb)
                out["cold"].append(elapsed)
                print(f"  start cold #{i + 1}: {elapsed:.2f} s ({split})", flush=True)
                if run_id:
                    wait_final(server.runs_dir, run_id)
                ctx.close()
                deadline = time.monotonic() + 30  # the finished run's process exits
                while worker_pids(server.runs_dir) and time.monotonic() < deadline:
                    time.sleep(0.2)
        finally:
            server.stop()
    finally:
        browser.close()
    return out


# -- 2. redraw cost per run size --------------------------------------------------------------------


def synth_rows(n: int, seed: int = 0, start_step: int = 0, t0: float | None = None) -> list[dict]:
    """Realistic fp16 AMP metrics: a GradScaler (init 2^16, growth interval 2000, backoff 0.5) with
    about 0.1% overflow steps, a decaying noisy loss and a log-normal gradient norm."""
    rng = np.random.default_rng(seed)
    overflow = rng.random(n) < 0.001
    scale = np.empty(n)
    tracker = np.empty(n, dtype=np.int64)
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
    rows = []
    for i in range(n):
        rows.append({
            "step": int(steps[i]), "loss": round(float(loss[i]), 6), "loss_scale": float(scale[i]),
            "skipped": bool(overflow[i]), "grad_norm": None if overflow[i] else round(float(grad[i]), 6),
            "growth_tracker": int(tracker[i]), "time": round(float(times[i]), 4),
        })  # fmt: skip
    return rows


def synth_run(runs_dir: Path, n: int, state: str = "completed") -> Path:
    config = {"precision": "16-mixed", "precision_resolved": "16-mixed", "accelerator": "cpu", "accelerator_resolved": "cpu",
              "max_steps": n, "init_scale": 65536.0, "growth_interval": 2000, "synthetic": True, "created_at": now_iso()}  # fmt: skip
    w = RunWriter.create(runs_dir, config, label=f"synthetic-{n}")
    w.set_status("running", created_at=now_iso(), started_at=now_iso(), pid=os.getpid(), host=socket.gethostname())
    chunk = 50_000
    for a in range(0, n, chunk):
        w.append_metrics(synth_rows(min(chunk, n - a), seed=a, start_step=a, t0=time.time() - (n - a) * 0.01))
    w.close()
    if state != "running":
        w.set_status(state, ended_at=now_iso(), global_step=n)
    return w.path


def st_plotly_serialise(fig) -> str:
    """What st.plotly_chart does with a figure before it goes on the wire."""
    import plotly.io
    import plotly.tools

    figure = plotly.tools.return_figure_from_figure_or_data(fig, validate_figure=True)
    return plotly.io.to_json(figure, validate=False)


def redraw_once(follower: RunFollower, run_id: str) -> tuple[float, int, list[int]]:
    t0 = time.perf_counter()
    follower.poll()
    series = [(run_id, follower.metrics)]
    figs = [charts.loss_scale_figure(series), charts.loss_figure(series), charts.grad_norm_figure(series)]
    specs = [st_plotly_serialise(f) for f in figs]
    elapsed = time.perf_counter() - t0
    return elapsed, sum(len(s.encode()) for s in specs), [charts.figure_payload_bytes(f) for f in figs]


def bench_redraw_server(runs_dir: Path, sizes: list[int], repeats: int) -> dict[int, dict]:
    results = {}
    for n in sizes:
        t0 = time.perf_counter()
        path = synth_run(runs_dir / f"n{n}", n)  # a runs folder per size: each page open reads only its own
        write_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        run = load_run(path)
        load_s = time.perf_counter() - t0
        assert len(run.metrics) == n, (len(run.metrics), n)
        follower = RunFollower(path)
        t0 = time.perf_counter()
        follower.poll()
        first_poll_s = time.perf_counter() - t0
        # Live redraws: each appends 10 new steps (about one second of a CPU run), then redraws.
        writer = RunWriter.open(path)
        times, payload, per_fig = [], 0, []
        for r in range(repeats):
            writer.append_metrics(synth_rows(10, seed=10_000_000 + r, start_step=n + 10 * r))
            elapsed, payload, per_fig = redraw_once(follower, path.name)
            times.append(elapsed)
        writer.close()
        skipped = int(np.nansum(follower.metrics.skipped))
        results[n] = {
            "path": path, "write_s": write_s, "load_s": load_s, "first_poll_s": first_poll_s,
            "redraw_s": statistics.median(times), "payload": payload, "per_fig": per_fig,
            "file_mb": (path / "metrics.jsonl").stat().st_size / 1e6, "skipped_pct": 100 * skipped / len(follower.metrics),
        }  # fmt: skip
        print(f"  redraw {n:>9,} steps: server {1e3 * results[n]['redraw_s']:.1f} ms, payload {payload / 1e3:.1f} kB "
              f"(load_run {load_s:.2f} s, file {results[n]['file_mb']:.1f} MB, {results[n]['skipped_pct']:.2f}% skipped)", flush=True)  # fmt: skip
    return results


def bench_redraw_browser(p, tmp: Path, runs_dir: Path, results: dict[int, dict], seconds: float) -> None:
    """Websocket bytes per live redraw on the Runs page, for a record made to look like a running run.

    The record's status says running with this process's pid, and a thread appends 10 steps every
    0.5 s, so the page's live fragment keeps redrawing it. One server per size (its own runs folder)."""
    browser = launch_browser(p)
    try:
        for n, res in results.items():
            path = res["path"]
            server = Server("app.py", REPO, path.parent, tmp / f"redraw-{n}.log")
            writer = RunWriter.open(path)
            writer.set_status("running", pid=os.getpid(), host=socket.gethostname())
            stop = threading.Event()
            step = [n + 10_000]

            def append() -> None:
                while not stop.wait(0.5):
                    writer.append_metrics(synth_rows(10, seed=step[0], start_step=step[0]))
                    step[0] += 10

            appender = threading.Thread(target=append, daemon=True)
            appender.start()
            ctx, page = new_page(browser, timeout_s=300)
            frames: list[tuple[float, int, bool]] = []

            def on_ws(ws) -> None:
                def got(payload) -> None:
                    data = payload if isinstance(payload, bytes) else payload.encode()
                    frames.append((time.perf_counter(), len(data), b"Loss scale" in data))

                ws.on("framereceived", got)

            page.on("websocket", on_ws)
            try:
                t_open = time.perf_counter()
                page.goto(f"{server.url}/Runs?run={path.name}")
                page.wait_for_function(f"() => ({LOSS_SCALE_POINTS_JS})() >= 1", polling=50)
                first_chart_s = time.perf_counter() - t_open
                check_no_exception(page, "the Runs page")
                page.wait_for_timeout(1500)  # let the first full render finish (Playwright handles events meanwhile)
                t0 = time.perf_counter()
                page.wait_for_timeout(seconds * 1000)
                t1 = time.perf_counter()
                # Streamlit sends each element as its own message (a chart unchanged since the last
                # redraw goes as a short cache reference): a redraw is a burst of frames.
                window = sorted(f for f in frames if t0 <= f[0] < t1)
                bursts: list[int] = []
                last = -1.0
                for when, size, _ in window:
                    if not bursts or when - last > 0.25:
                        bursts.append(0)
                    bursts[-1] += size
                    last = when
                redraws = len(bursts)
                res["ws_first_chart_s"] = first_chart_s
                res["ws_redraws"] = redraws
                res["ws_bytes_per_redraw"] = statistics.median(bursts) if bursts else None
                res["ws_max_redraw"] = max(bursts, default=0)
                res["ws_max_frame"] = max((f[1] for f in window), default=0)
                per = (
                    f"{res['ws_bytes_per_redraw'] / 1e3:.1f} kB (max {res['ws_max_redraw'] / 1e3:.1f} kB)"
                    if redraws
                    else "no redraw seen"
                )
                print(
                    f"  websocket {n:>9,} steps: {per} per redraw ({redraws} redraws in {seconds:g} s; page open -> chart {first_chart_s:.1f} s)",
                    flush=True,
                )
            finally:
                stop.set()
                appender.join()
                writer.close()
                writer.set_status("completed", ended_at=now_iso())
                ctx.close()
                server.stop()
    finally:
        browser.close()


# -- 3. Home page ready vs a bare Streamlit page ----------------------------------------------------

READY_JS = f'() => document.querySelector("{SETTLED}") ? performance.now() : false'


def page_ready_ms(browser, url: str) -> float:
    ctx, page = new_page(browser)
    try:
        page.goto(url, wait_until="commit")
        ms = page.wait_for_function(READY_JS, polling="raf").json_value()
        check_no_exception(page, url)
        return float(ms)
    finally:
        ctx.close()


def bench_home(p, tmp: Path, loads: int) -> dict:
    bare_dir = tmp / "bare"
    bare_dir.mkdir()
    (bare_dir / "hi.py").write_text('import streamlit as st\nst.write("hi")\n')
    app = Server("app.py", REPO, tmp / "home" / "runs", tmp / "home.log")
    bare = Server("hi.py", bare_dir, None, tmp / "bare.log")
    browser = launch_browser(p)
    out = {"app": [], "bare": []}
    try:
        page_ready_ms(browser, app.url + "/")  # first loads import the app's modules: not counted
        page_ready_ms(browser, bare.url + "/")
        for i in range(loads):
            pair = [("app", app.url + "/"), ("bare", bare.url + "/")]
            for name, url in pair if i % 2 == 0 else pair[::-1]:
                out[name].append(page_ready_ms(browser, url))
        print(
            f"  home: app {statistics.median(out['app']):.0f} ms, bare {statistics.median(out['bare']):.0f} ms (medians of {loads})",
            flush=True,
        )
    finally:
        browser.close()
        app.stop()
        bare.stop()
    return out


# -- report -----------------------------------------------------------------------------------------


def verdict(value: float | None, goal: float) -> str:
    if value is None:
        return "n/a"
    return "ok" if value <= goal else "MISSED"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument(
        "--only", action="append", choices=("start", "redraw", "home"), help="run only these parts (repeatable)"
    )
    ap.add_argument("--sizes", default="1000,10000,100000,1000000", help="run sizes for the redraw part")
    ap.add_argument("--no-websocket", action="store_true", help="skip the in-browser websocket measurement")
    ap.add_argument(
        "--wandb",
        default="offline",
        choices=("offline", "disabled"),
        help="the W&B choice in the Train form for the start part",
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder (records, server logs)")
    args = ap.parse_args(argv)
    parts = args.only or ["start", "redraw", "home"]
    sizes = [int(float(s)) for s in args.sizes.split(",") if s.strip()]
    warm_n, cold_n, redraw_n, home_n, ws_s = (3, 2, 3, 4, 4.0) if args.quick else (5, 3, 7, 9, 6.0)

    if not os.access(CHROMIUM, os.X_OK):
        print(f"no Chromium at {CHROMIUM}: set AMP_CHROMIUM", file=sys.stderr)
        return 2
    from playwright.sync_api import sync_playwright

    tmp = Path(tempfile.mkdtemp(prefix="amp-bench-"))
    os.environ["WANDB_MODE"] = "offline"
    print(
        f"AMP Explorer app latency benchmark ({'quick' if args.quick else 'full'}); {os.cpu_count()} CPUs; work folder {tmp}",
        flush=True,
    )
    t_all = time.perf_counter()
    start = redraw = home = None
    errors: list[str] = []

    def part(name: str, fn):
        try:
            return fn()
        except Exception as e:  # one part failing still reports the others
            errors.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            print(f"  {name} FAILED: {errors[-1]}", flush=True)
            return None

    try:
        with sync_playwright() as p:
            if "start" in parts:
                print("1. Start run -> first point in the browser", flush=True)
                start = part("start", lambda: bench_start(p, tmp, warm_n, cold_n, wandb=args.wandb))
            if "redraw" in parts:
                print("2. Live redraw cost per run size", flush=True)
                runs_dir = (tmp / "redraw" / "runs").resolve()
                runs_dir.mkdir(parents=True)
                redraw = part("redraw", lambda: bench_redraw_server(runs_dir, sizes, redraw_n))
                if redraw and not args.no_websocket:
                    part("websocket", lambda: bench_redraw_browser(p, tmp, runs_dir, redraw, ws_s))
            if "home" in parts:
                print("3. Home page ready vs a bare Streamlit page", flush=True)
                home = part("home", lambda: bench_home(p, tmp, home_n))
    finally:
        if not args.keep and not errors:
            shutil.rmtree(tmp, ignore_errors=True)

    rows = []
    if start:
        for kind, goal in (("warm", GOALS["start_warm"]), ("cold", GOALS["start_cold"])):
            v = statistics.median(start[kind]) if start[kind] else None
            spread = f"{min(start[kind]):.2f}-{max(start[kind]):.2f} s, n={len(start[kind])}" if start[kind] else ""
            rows.append(
                (
                    f"Start run -> first point ({kind}, W&B {args.wandb})",
                    f"{v:.2f} s" if v is not None else "n/a",
                    spread,
                    f"<= {goal:g} s",
                    verdict(v, goal),
                )
            )
    if redraw:
        for n, r in redraw.items():
            ws = r.get("ws_bytes_per_redraw")
            detail = f"figures {'+'.join(f'{b / 1e3:.0f}' for b in r['per_fig'])} kB; load_run {r['load_s']:.2f} s"
            if ws is not None:
                detail += f"; websocket {ws / 1e3:.1f} kB/redraw"
            rows.append(
                (
                    f"Redraw {n:,} steps: server time",
                    f"{1e3 * r['redraw_s']:.1f} ms",
                    f"first read {r['first_poll_s']:.2f} s",
                    "",
                    "",
                )
            )
            worst = max(r["payload"], r.get("ws_max_redraw") or 0)
            rows.append(
                (
                    f"Redraw {n:,} steps: payload",
                    f"{r['payload'] / 1e3:.1f} kB",
                    detail,
                    "<= 2 MB",
                    verdict(worst, GOALS["payload"]),
                )
            )
    if home:
        a, b = statistics.median(home["app"]), statistics.median(home["bare"])
        rows.append(
            (
                "Home ready / bare page ready",
                f"{a / b:.2f}x",
                f"{a:.0f} ms vs {b:.0f} ms, n={len(home['app'])}",
                f"<= {GOALS['home_ratio']:g}x",
                verdict(a / b, GOALS["home_ratio"]),
            )
        )
    widths = [max(len(str(r[i])) for r in rows + [("measure", "median", "detail", "goal", "result")]) for i in range(5)]
    print()
    for r in [("measure", "median", "detail", "goal", "result")] + rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip())
    if start and start["notes"]:
        print("notes: " + "; ".join(start["notes"]))
    if start:
        print(
            "warm = the launcher's spare worker had finished importing torch and Lightning; cold = the server ran with the spare\n"
            "worker turned off (Launcher's warm default patched to False in the server process: the app has no switch for it)."
        )
    for e in errors:
        print(f"FAILED {e} (server logs kept in {tmp})")
    print(f"total {time.perf_counter() - t_all:.0f} s")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
