"""End-to-end fixtures: one real `streamlit run app.py` server and one headless Chromium per session.

The server gets its own runs directory (AMP_RUNS_DIR) and W&B stays offline. Each simulated user
is a new browser context. The suite needs Debian's chromium at /usr/bin/chromium (or
$AMP_CHROMIUM) and the PyPI `playwright` package; without them it is skipped, except under CI
(CI=true), where a missing browser is a failure.

Screenshots go to $AMP_BROWSER_ARTIFACTS when set, else to a pytest temporary folder; the server's
log is printed when a test fails.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urlparse

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # the tests read and write run records with amp_core; the harness is bench/harness.py
    sys.path.insert(0, str(REPO))
from bench.harness import CHROMIUM, EXCEPTION, SETTLED, Server, launch_browser, worker_pids  # noqa: E402

IN_CI = os.environ.get("CI", "").lower() == "true"

# Generous: this machine is small and shared. Waits poll a condition; nothing asserts a duration.
SERVER_START_S = 90
PAGE_S = 60  # a page to load and settle (the first Train page imports torch and Lightning)
RUN_S = 150  # a short training run to finish (the worker imports torch and Lightning first)

NAV_LINKS = "[data-testid='stSidebarNav'] a"
# Plotly receives NumPy arrays as base64 typed arrays ({dtype, bdata}): `data[i].x` is that object
# (with the decoded array in `_inputArray`), and `_fullData[i].x` is the decoded array.
TRACE_LENGTHS_JS = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(e =>
  (e._fullData || e.data || []).map(t => {
    const x = t.x;
    if (!x) return 0;
    if (typeof x.length === 'number') return x.length;
    if (x._inputArray && typeof x._inputArray.length === 'number') return x._inputArray.length;
    return 0;
  }))"""
TRACE_LAST_X_JS = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(e =>
  (e._fullData || e.data || []).map(t => {
    let x = t.x;
    if (x && x._inputArray) x = x._inputArray;
    if (!x || typeof x.length !== 'number' || x.length === 0) return null;
    return Number(x[x.length - 1]);
  }))"""
CHART_TITLES_JS = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(e => {
  const t = e.layout && e.layout.title;
  const text = typeof t === 'string' ? t : (t && t.text) || '';
  return text.replace(/<[^>]*>/g, '');
})"""


# -- what the whole suite needs ----------------------------------------------------------------


def _missing_requirement() -> str | None:
    if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set AMP_CHROMIUM)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -r requirements-dev.txt)"
    return None


@pytest.fixture(scope="session", autouse=True)
def _browser_requirements():
    reason = _missing_requirement()
    if reason:
        if IN_CI:
            pytest.fail(f"browser suite cannot run under CI: {reason}", pytrace=False)
        pytest.skip(f"browser suite skipped: {reason}")


# -- the server --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def app_server(tmp_path_factory):
    """The app, served from the repository root with an empty runs directory of its own (bench/harness.Server)."""
    if not (REPO / "app.py").exists():
        pytest.fail("app.py is missing from the repository root", pytrace=False)
    base = tmp_path_factory.mktemp("amp-app")
    server = Server("app.py", REPO, base / "runs", base / "streamlit.log", start_timeout=SERVER_START_S)
    yield server
    server.stop()
    assert not worker_pids(server.runs_dir), "amp_core.serve.worker processes survived the server"


# -- the browser -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = launch_browser(p)
        yield b
        b.close()


@pytest.fixture
def new_page(browser, request, shots_dir):
    """new_page() -> a page in a fresh browser context (one simulated user); closed after the test."""
    contexts = []
    request.node._amp_pages = pages = []
    request.node._amp_shots = shots_dir

    def make(viewport: dict | None = None):
        context = browser.new_context(viewport=viewport or {"width": 1400, "height": 1000})
        context.set_default_timeout(PAGE_S * 1000)
        contexts.append(context)
        page = context.new_page()
        page._amp_events = events = []  # what the browser said, for the failure report
        page.on("crash", lambda *_: events.append("the page crashed"))
        page.on("pageerror", lambda e: events.append(f"page error: {e}"))
        page.on(
            "console",
            lambda m: events.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None,
        )
        pages.append(page)
        return page

    yield make
    for c in contexts:
        try:
            c.close()
        except Exception:
            pass


@pytest.fixture(scope="session")
def shots_dir(tmp_path_factory) -> Path:
    d = os.environ.get("AMP_BROWSER_ARTIFACTS")
    path = Path(d) if d else tmp_path_factory.mktemp("screenshots")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        server = item.funcargs.get("app_server")
        if server is not None:
            report.sections.append(("streamlit server log (tail)", server.log_tail()))
        shots = getattr(item, "_amp_shots", None)
        for i, page in enumerate(getattr(item, "_amp_pages", [])):
            events = getattr(page, "_amp_events", [])
            if events:
                report.sections.append((f"page {i}: browser events", "\n".join(events[-40:])[-6000:]))
            try:  # what each simulated user saw when the test failed
                name = f"FAILED-{item.name}-{i}".replace("/", "_")
                if shots is not None:
                    page.screenshot(path=str(shots / f"{name}.png"), full_page=True)
                text = page.locator("[data-testid='stMain']").inner_text(timeout=2000)
                report.sections.append((f"page {i} ({page.url})", text[-3000:]))
            except Exception as e:
                report.sections.append((f"page {i} ({page.url})", f"no page text: {type(e).__name__}"))


# -- page helpers --------------------------------------------------------------------------------


def settle(page, timeout_s: float = PAGE_S) -> None:
    """Wait until the script has run (Streamlit's own e2e wait: script state notRunning)."""
    page.wait_for_selector(SETTLED, timeout=timeout_s * 1000)


def open_page(page, server: Server, path: str = "/", timeout_s: float = PAGE_S) -> None:
    page.goto(server.url + path)
    settle(page, timeout_s)


def exception_texts(page) -> list[str]:
    return page.locator(EXCEPTION).all_inner_texts()


def assert_no_exception(page) -> None:
    shown = exception_texts(page)
    assert not shown, "the page shows an exception:\n" + "\n---\n".join(shown)


def trace_lengths(page) -> list[list[int]]:
    """Points per trace, per Plotly chart on the page, in page order."""
    return page.evaluate(TRACE_LENGTHS_JS)


def chart_titles(page) -> list[str]:
    return page.evaluate(CHART_TITLES_JS)


def first_trace_points(page, title: str) -> int:
    """Points in the first trace of the chart whose title starts with `title` (0 while none is drawn).

    While a fragment redraws, Streamlit can show the old and the new chart for a moment: the
    largest count wins."""
    counts = [
        traces[0] if traces else 0 for t, traces in zip(chart_titles(page), trace_lengths(page)) if t.startswith(title)
    ]
    return max(counts, default=0)


def first_trace_last_x(page, title: str) -> float:
    """The x (optimizer step) where the first trace of the chart titled `title` ends; 0 while none is drawn."""
    ends = [
        traces[0]
        for t, traces in zip(chart_titles(page), page.evaluate(TRACE_LAST_X_JS))
        if t.startswith(title) and traces
    ]
    return max((x for x in ends if x is not None), default=0)


def loss_scale_points(page) -> int:
    return first_trace_points(page, "Loss scale")


def loss_points(page) -> int:
    return first_trace_points(page, "Training loss")


def loss_reach(page) -> float:
    """The last step the loss line reaches: it moves with every redraw, even once the line is downsampled."""
    return first_trace_last_x(page, "Training loss")


def loss_scale_reach(page) -> float:
    """The last step the loss-scale line reaches. Its point count need not grow (change points only)."""
    return first_trace_last_x(page, "Loss scale")


def wait_until(predicate, timeout_s: float, interval_s: float = 0.25, message: str = "condition"):
    """Poll `predicate` until it returns something truthy; fail with `message` after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s:g} s waiting for {message} (last value: {last!r})")


def read_status(runs_dir: Path, run_id: str) -> dict:
    try:
        return json.loads((runs_dir / run_id / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def url_params(page) -> dict[str, list[str]]:
    # Asked from the page: `page.url` is only refreshed while Playwright handles events, and a
    # polling loop that sleeps between checks would keep reading a stale address.
    return parse_qs(urlparse(page.evaluate("() => location.href")).query, keep_blank_values=True)


def screenshot(page, shots: Path, name: str, max_height: int = 6000) -> Path:
    """A PNG of the whole page for people to look at (never compared).

    Streamlit scrolls inside its main container, so a "full page" screenshot would stop at the
    window: the window is made as tall as the content for the shot, then put back."""
    path = shots / f"{name}.png"
    size = page.viewport_size or {"width": 1400, "height": 1000}
    height = page.evaluate(
        "() => Math.max(...Array.from(document.querySelectorAll(\"[data-testid='stMain'], [data-testid='stAppViewContainer'] section\"))"
        ".map(e => e.scrollHeight), document.body.scrollHeight)"
    )
    try:
        page.set_viewport_size({"width": size["width"], "height": min(max_height, max(size["height"], int(height)))})
        page.wait_for_timeout(300)
        page.screenshot(path=str(path))
    finally:
        page.set_viewport_size(size)
    return path


ui = SimpleNamespace(
    SETTLED=SETTLED, EXCEPTION=EXCEPTION, NAV_LINKS=NAV_LINKS, PAGE_S=PAGE_S, RUN_S=RUN_S,
    settle=settle, open_page=open_page, exception_texts=exception_texts, assert_no_exception=assert_no_exception,
    trace_lengths=trace_lengths, chart_titles=chart_titles, first_trace_points=first_trace_points,
    loss_scale_points=loss_scale_points, loss_points=loss_points, loss_scale_reach=loss_scale_reach, loss_reach=loss_reach, wait_until=wait_until,
    read_status=read_status, url_params=url_params, screenshot=screenshot,
)  # fmt: skip


@pytest.fixture(scope="session")
def page_helpers() -> SimpleNamespace:
    """The helpers above, for test modules (a conftest is not imported by name)."""
    return ui
