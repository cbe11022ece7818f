"""A crowded demo: N browser viewers on one live run, measured.

    python bench/crowd.py                  # 10 viewers, 40 s of watching
    python bench/crowd.py --viewers 1,5,10 --seconds 30

A real `streamlit run app.py` server, a real training run started with `python -m amp_core.train`
(a run record is all the Runs page needs to show it live), and N headless Chromium pages on
`/Runs?run=<id>`. For each N it reports live redraws per viewer per second (a redraw is seen when a
viewer's loss line reaches a later step), the CPU seconds per wall second spent by the server, the browsers and the
training process, the server's resident memory before and after, and the run's steps per second.

On one small machine the browsers compete with the server and the run for the same cores, so the
browser share is part of what is measured, not noise: read it beside the server share.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.harness import REPO, SETTLED, Server, cpu_ticks, launch_browser  # noqa: E402

# The last step the loss line reaches: it grows with every redraw, where the point count stops
# growing once the line is downsampled.
LOSS_REACH_JS = """() => {
  let best = 0;
  for (const e of document.querySelectorAll('.js-plotly-plot')) {
    const t = e.layout && e.layout.title;
    const title = (typeof t === 'string' ? t : (t && t.text) || '').replace(/<[^>]*>/g, '');
    const traces = e._fullData || e.data || [];
    if (!title.startsWith('Training loss') || !traces.length || !traces[0].x) continue;
    const x = traces[0].x._inputArray || traces[0].x;
    if (x.length) best = Math.max(best, Number(x[x.length - 1]));
  }
  return best;
}"""
TICK = os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_s(pids: list[int]) -> float:
    return sum(t for t in (cpu_ticks(p) for p in pids) if t is not None) / TICK


def steps_done(run_dir: Path) -> int:
    try:
        return sum(1 for _ in open(run_dir / "metrics.jsonl", "rb"))
    except OSError:
        return 0


def measure(viewers: int, seconds: float, steps: int, tmp: Path, p=None) -> dict:
    """N viewers on one real training run for `seconds`; `p`: a running sync_playwright() (else one is started)."""
    if p is None:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            return measure(viewers, seconds, steps, tmp, p)
    runs_dir = tmp / f"runs-{viewers}"
    server = Server("app.py", REPO, runs_dir, tmp / f"server-{viewers}.log")
    env = dict(os.environ, AMP_RUNS_DIR=str(runs_dir), WANDB_MODE="offline", WANDB_SILENT="true")
    train = subprocess.Popen([sys.executable, "-m", "amp_core.train", "--precision", "16-mixed", "--accelerator", "cpu", "--max-steps", str(steps),
                              "--wandb", "disabled", "--runs-dir", str(runs_dir)], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not (dirs := list(runs_dir.glob("*/metrics.jsonl"))) or steps_done(dirs[0].parent) < 5:
            if time.monotonic() > deadline or train.poll() is not None:
                raise RuntimeError("the training run did not start")
            time.sleep(0.2)
        run_dir = dirs[0].parent
        browser = launch_browser(p)
        try:
            rss_before = rss_mb(server.proc.pid)
            pages = []
            for _ in range(viewers):
                page = browser.new_context(viewport={"width": 1280, "height": 900}).new_page()
                page.set_default_timeout(180_000)
                page.goto(f"{server.url}/Runs?run={run_dir.name}")
                page.wait_for_selector(SETTLED)
                pages.append(page)
            browser_pids = descendants(browser_pid(server))
            groups = {"server": [server.proc.pid], "browsers": browser_pids, "training": [train.pid]}
            before = {k: cpu_s(v) for k, v in groups.items()}
            steps_before, t0 = steps_done(run_dir), time.monotonic()
            last = [p.evaluate(LOSS_REACH_JS) for p in pages]
            redraws = [0] * viewers
            while time.monotonic() - t0 < seconds and train.poll() is None:
                for i, page in enumerate(pages):
                    n = page.evaluate(LOSS_REACH_JS)
                    if n > last[i]:
                        redraws[i], last[i] = redraws[i] + 1, n
                time.sleep(0.05)
            wall = time.monotonic() - t0
            cpu = {k: round((cpu_s(v) - before[k]) / wall, 2) for k, v in groups.items()}
            result = {
                "viewers": viewers,
                "seconds": round(wall, 1),
                "redraws_per_viewer_per_s": round(sum(redraws) / viewers / wall, 2),
                "slowest_viewer_redraws": min(redraws),
                "cpu_s_per_s": cpu,
                "server_rss_mb": [round(rss_before, 1), round(rss_mb(server.proc.pid), 1)],
                "train_steps_per_s": round((steps_done(run_dir) - steps_before) / wall, 1),
            }
        finally:
            browser.close()
        return result
    finally:
        train.kill()
        train.wait()
        server.stop()


def browser_pid(server: Server) -> int:
    """The newest Chromium process that is not a child of another Chromium (the one this bench launched)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().split(b"\0")[0]
                parent_cmd = (
                    Path(f"/proc/{(entry / 'stat').read_text().rsplit(')', 1)[1].split()[1]}/cmdline")
                    .read_bytes()
                    .split(b"\0")[0]
                )
            except (OSError, IndexError):
                continue
            if cmd.endswith(b"chromium") and not parent_cmd.endswith(b"chromium"):
                pids.append(int(entry.name))
    return max(pids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--viewers", default="10", help="comma-separated viewer counts (default 10)")
    ap.add_argument("--seconds", type=float, default=40.0, help="how long to watch at each count")
    ap.add_argument("--steps", type=int, default=100_000, help="steps of the watched run (it is killed after watching)")
    args = ap.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="amp-crowd-") as tmp:
        for n in [int(v) for v in args.viewers.split(",")]:
            r = measure(n, args.seconds, args.steps, Path(tmp))
            print(json.dumps(r), flush=True)
            results.append(r)
    out = REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "crowd.json").write_text(json.dumps({"cpus": os.cpu_count(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
