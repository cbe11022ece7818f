"""Start run -> the first point drawn, in a real Chromium clicking the real Start button on the Train page.

    python bench/first_point.py            # 7 warm starts, 5 cold
    python bench/first_point.py --quick    # 5 warm, 3 cold (about 2.5 minutes)

Warm: the launcher's spare worker has imported torch, Lightning and W&B before the click. Cold: the
server runs with the warm worker turned off (bench/harness.py, `Server(cold=True)`), so each start
spawns a worker that imports them first. Each start is a new browser context (a new user) on a
settled Train page, with nothing else training; the run is the form's default (the MLP, 16-mixed,
W&B offline) at 30 steps.

Where the time goes, from one clock (this machine's wall clock, in the page and in the processes):
- click: the button's click event, in the page;
- record created: the run record's `created_at` (the server's rerun of the Train page submitted it);
- worker running: its `started_at` (the worker took the job and opened the record);
- first line written: metrics.jsonl first non-empty, seen by a thread here polling every 5 ms;
- first draw: the first animation frame in which the loss-scale chart has a point of the new run.
The Train page's own rerun after the click (click -> the page's script state back to notRunning)
is reported beside them.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
for _path in (str(BENCH), str(BENCH.parent)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from harness import REPO, SETTLED, Server, check_no_exception, launch_browser, new_page, worker_pids  # noqa: E402
from report import Figure, figure, print_figures  # noqa: E402

SECTION = "first point"
GOALS_S = {"warm": 1.0, "cold": 3.0}
STEPS = 30
FINAL = ("completed", "failed", "stopped", "interrupted")
STAGES = (  # (key, label): each stage's end, in ms after the click
    ("created", "record created"),
    ("running", "worker running"),
    ("first_line", "first line written"),
    ("drawn", "first draw"),
)

# Installed in the page just before the click. Names of loss-scale traces already shown (a run still on
# screen) do not count: only a point of the run this click starts.
RECORDER_JS = """() => {
  const title = e => { const t = e.layout && e.layout.title; return (typeof t === 'string' ? t : (t && t.text) || '').replace(/<[^>]*>/g, ''); };
  const scaleTraces = () => Array.from(document.querySelectorAll('.js-plotly-plot'))
    .filter(e => title(e).startsWith('Loss scale')).flatMap(e => e._fullData || []);
  const before = new Set(scaleTraces().map(t => t.name));
  const rec = window.__firstPoint = {click: null, drawn: null, settled: null};
  document.addEventListener('click', () => { if (rec.click === null) rec.click = Date.now(); }, true);
  const app = document.querySelector("[data-testid='stApp']");
  new MutationObserver(() => {
    if (rec.click !== null && rec.settled === null && app.getAttribute('data-test-script-state') === 'notRunning') rec.settled = Date.now();
  }).observe(app, {attributes: true, attributeFilter: ['data-test-script-state']});
  const frame = () => {
    const drawn = scaleTraces().some(t => !before.has(t.name) && t.x && t.x.length > 0);
    if (rec.click !== null && drawn) { rec.drawn = Date.now(); return; }
    requestAnimationFrame(frame);
  };
  requestAnimationFrame(frame);
}"""


class FirstLineWatch:
    """Polls the runs folder every 5 ms for a new run whose metrics.jsonl has its first bytes."""

    def __init__(self, runs_dir: Path):
        self.runs_dir = runs_dir
        self.known = {p.name for p in runs_dir.iterdir()}
        self.seen: dict[str, float] = {}  # run id -> wall time its first line was seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(0.005):
            for p in self.runs_dir.iterdir():
                if p.name in self.known or p.name in self.seen:
                    continue
                try:
                    if (p / "metrics.jsonl").stat().st_size > 0:
                        self.seen[p.name] = time.time()
                except OSError:
                    pass

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _epoch_ms(iso: str | None) -> float | None:
    try:
        return datetime.fromisoformat(iso).timestamp() * 1000
    except (TypeError, ValueError):
        return None


def _status(runs_dir: Path, run_id: str) -> dict:
    try:
        return json.loads((runs_dir / run_id / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def _pid_alive(pid) -> bool:
    return isinstance(pid, int) and Path(f"/proc/{pid}").exists()


def wait_idle(server: Server, warm: bool, timeout: float = 180) -> None:
    """Nothing training: every run ended and its process gone; warm: the spare worker ready, cold: no worker."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        statuses = [_status(server.runs_dir, p.parent.name) for p in server.runs_dir.glob("*/status.json")]
        busy = [s for s in statuses if s.get("state") not in FINAL or _pid_alive(s.get("pid"))]
        if not busy and (server.spare_ready() if warm else not worker_pids(server.runs_dir)):
            return
        time.sleep(0.2)
    raise RuntimeError(f"the server did not become idle within {timeout:.0f} s ({'warm' if warm else 'cold'})")


def one_start(browser, server: Server, warm: bool) -> dict:
    """One new user: open Train, wait until the server is idle (`wait_idle`), click Start run, wait for
    the first point. Times in ms after the click."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    ctx, page = new_page(browser)
    try:
        page.goto(server.url + "/Train")
        page.wait_for_selector(SETTLED)
        try:  # the empty chart a Train page without a run shows (a page that draws none: go on)
            page.locator(".js-plotly-plot").first.wait_for(timeout=10_000)
        except PlaywrightTimeout:
            pass
        check_no_exception(page, "the Train page")
        page.get_by_role("spinbutton", name="Steps", exact=True).fill(str(STEPS))
        wait_idle(server, warm)  # after the page opened: its first visit starts the launcher and its spare
        page.wait_for_timeout(500)  # a user reads the form; the page settles
        page.evaluate(RECORDER_JS)
        watch = FirstLineWatch(server.runs_dir)
        try:
            page.get_by_role("button", name="Start run").click()
            page.wait_for_function("() => window.__firstPoint.drawn !== null", polling="raf", timeout=120_000)
        finally:
            watch.stop()
        check_no_exception(page, "the Train page after Start")
        rec = page.evaluate("() => window.__firstPoint")
        url_run = page.evaluate("() => new URLSearchParams(location.search).get('run')")
        new = sorted(set(watch.seen) | {p.name for p in server.runs_dir.iterdir()} - watch.known)
        if len(new) != 1:
            raise RuntimeError(f"expected one new run, found {new}")
        run_id = new[0]
        status = _status(server.runs_dir, run_id)
        click = rec["click"]
        at = {
            "created": _epoch_ms(status.get("created_at")),
            "running": _epoch_ms(status.get("started_at")),
            "first_line": watch.seen[run_id] * 1000 if run_id in watch.seen else None,
            "drawn": rec["drawn"],
            "rerun": rec["settled"],
        }
        out = {k: (v - click if v is not None else None) for k, v in at.items()}
        out.update(run_id=run_id, url_has_run=url_run == run_id)
        _wait_final(server.runs_dir, run_id)
        return out
    finally:
        ctx.close()


def _wait_final(runs_dir: Path, run_id: str, timeout: float = 180) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = _status(runs_dir, run_id).get("state", "")
        if state in FINAL:
            return state
        time.sleep(0.2)
    return ""


def measure(p, tmp: Path, kind: str, starts: int, log=print) -> list[dict]:
    """`starts` starts of `kind` ('warm' or 'cold') on one server of their own."""
    warm = kind == "warm"
    server = Server("app.py", REPO, tmp / kind / "runs", tmp / f"{kind}.log", cold=not warm)
    browser = launch_browser(p)
    results = []
    try:
        if not warm and worker_pids(server.runs_dir):
            raise RuntimeError("the cold server started a warm worker: bench/harness.py's cold patch did not apply")
        for i in range(starts):
            r = one_start(browser, server, warm)
            results.append(r)
            log(f"  {kind} #{i + 1}: " + ", ".join(f"{k} +{r[k]:.0f} ms" for k in (*dict(STAGES), "rerun") if r[k]))
    finally:
        browser.close()
        server.stop()
    return results


def compare_warm(p, tmp: Path, base: Path, starts: int, log=print) -> dict[str, list[dict]]:
    """Warm starts on a server of `base` (another checkout) and one of this tree, interleaved A B B A."""
    trees = {"base": base.resolve(), "this": REPO}
    servers = {k: Server("app.py", tree, tmp / k / "runs", tmp / f"{k}.log") for k, tree in trees.items()}
    browser = launch_browser(p)
    results: dict[str, list[dict]] = {k: [] for k in trees}
    try:
        for i in range(starts):
            for k in ("base", "this") if i % 2 == 0 else ("this", "base"):
                r = one_start(browser, servers[k], warm=True)
                results[k].append(r)
                log(f"  {k} #{i + 1}: " + ", ".join(f"{s} +{r[s]:.0f} ms" for s in (*dict(STAGES), "rerun") if r[s]))
    finally:
        browser.close()
        for server in servers.values():
            server.stop()
    return results


def _median(results: list[dict], key: str) -> float | None:
    values = [r[key] for r in results if r.get(key) is not None]
    return statistics.median(values) if values else None


def figures_for(kind: str, results: list[dict], quick: bool) -> list[Figure]:
    total = [r["drawn"] / 1000 for r in results]
    spread = f"{min(total):.2f}-{max(total):.2f} s" if total else "none"
    runs = "a spare worker ready (torch, Lightning, W&B imported)" if kind == "warm" else "no warm worker"
    how = (
        f"median of {len(results)} starts ({spread}), {runs}; a real Chromium clicks Start run on the Train page "
        f"(new context each, the form's default run at {STEPS} steps, W&B offline) until the loss-scale chart draws "
        "a point of the new run"
    )
    if quick and kind == "cold":
        how += "; --quick: 2 cold starts, to fit its 2.5 minutes"
    if not all(r["url_has_run"] for r in results):
        how += "; the URL lacked ?run=<id> after some starts"
    out = [figure(SECTION, f"Start run -> first point, {kind}", statistics.median(total), "s", how,
                  at_most=GOALS_S[kind])]  # fmt: skip
    previous, previous_label = 0.0, "click"
    for key, label in STAGES:
        end = _median(results, key)
        value = None if end is None else (end - previous) / 1000
        out.append(
            figure(SECTION, f"{kind}: {previous_label} -> {label}", value, "s",
                   f"median over the starts of this stage's end ({end or 0:.0f} ms after the click) minus the last's")
        )  # fmt: skip
        previous, previous_label = end or previous, label
    rerun = _median(results, "rerun")
    out.append(
        figure(SECTION, f"{kind}: the Train page's rerun after the click", None if rerun is None else rerun / 1000,
               "s", "median, click -> the page's script state notRunning again (the rerun that submits the run)")
    )  # fmt: skip
    return out


def figures(quick: bool, tmp: Path) -> list[Figure]:
    from playwright.sync_api import sync_playwright

    warm_n, cold_n = (5, 2) if quick else (7, 5)
    with sync_playwright() as p:
        warm = measure(p, tmp, "warm", warm_n)
        cold = measure(p, tmp, "cold", cold_n)
    return figures_for("warm", warm, quick) + figures_for("cold", cold, quick)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="5 warm starts and 2 cold")
    ap.add_argument("--against", type=Path, help="another checkout: warm starts on both, interleaved (before/after)")
    ap.add_argument("--starts", type=int, default=5, help="with --against: starts on each")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    if args.against:
        from playwright.sync_api import sync_playwright

        with tempfile.TemporaryDirectory(prefix="amp-first-point-") as tmp, sync_playwright() as p:
            both = compare_warm(p, Path(tmp), args.against, args.starts)
        for k, results in both.items():
            stages = ", ".join(f"{s} {_median(results, s):.0f}" for s in (*dict(STAGES), "rerun"))
            print(f"{k}: median ms after the click: {stages}")
        return 0
    with tempfile.TemporaryDirectory(prefix="amp-first-point-") as tmp:
        found = figures(args.quick, Path(tmp))
    print_figures(found)
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
