"""The app in a real browser: every page, a live run, Stop, a second viewer, shared links, downloads.

One server for the whole module (tests/browser/conftest.py), one browser context per simulated
user. The tests run in file order and share the server's runs directory; each one waits for the
runs it starts to end, and nothing asserts a duration: waits poll with generous limits.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

from amp_core.record import METRIC_COLUMNS, RunWriter, change_points, load_run, now_iso

REPO = Path(__file__).resolve().parents[2]


def app_pages() -> list[tuple[str, str]]:
    """(URL path, name) of Home and of every page in pages/, in navigation order.

    Streamlit orders pages/ by their number prefix and serves `pages/2_Train.py` at `/Train`."""
    found = []
    for f in (REPO / "pages").glob("*.py"):
        m = re.match(r"^(\d*)_?(.+)$", f.stem)
        found.append((int(m.group(1)) if m.group(1) else float("inf"), m.group(2)))
    return [("/", "home")] + [(f"/{name}", name.lower()) for _, name in sorted(found)]


PAGES = app_pages()
NAV_PATHS = [path for path, _ in PAGES]
CORE_PATHS = ["/", "/Precision", "/Train", "/Runs"]  # the pages the UI contract names


@pytest.fixture
def ui(page_helpers):
    return page_helpers


def progress_text(page) -> str:
    """The live section's progress bar text ("running · step 12 of 150 · ..."); '' when absent."""
    texts = page.locator("[data-testid='stProgress']").all_inner_texts()
    return texts[-1] if texts else ""


def metric_value(page, label: str) -> str:
    return (
        page.locator("[data-testid='stMetric']")
        .filter(has_text=label)
        .locator("[data-testid='stMetricValue']")
        .inner_text()
        .strip()
    )


def combobox_value(page, label: str) -> str:
    return page.get_by_role("combobox", name=label).input_value()


def choose(page, label: str, option: str) -> None:
    """Pick `option` in the selectbox labelled `label`."""
    page.get_by_role("combobox", name=label).click()
    page.get_by_role("option", name=option, exact=True).click()


def click_checkbox(page, label: str) -> None:
    page.locator("[data-testid='stCheckbox']").filter(has_text=label).locator("label").click()


def download(page, ui, server, path: str, button: str) -> str:
    """Open `path` afresh, click the download button `button`, return the file's text.

    Afresh, because a download button reruns the page (on_click="rerun", Streamlit's default) and
    each rerun issues new file ids: a click on another download button before that rerun has
    reached the browser asks for a file the server has dropped, and nothing downloads
    (MediaFileStorageError "Deferred file ... not found" in the server log)."""
    ui.open_page(page, server, path)
    with page.expect_download() as dl:
        page.get_by_role("button", name=button).click()
    return open(dl.value.path(), encoding="utf-8").read()


def start_run(page, ui, server, steps: int) -> str:
    """On the Train page: set Steps, press Start run; returns the run id the page puts in the URL."""
    ui.open_page(page, server, "/Train")
    ui.assert_no_exception(page)
    page.get_by_role("spinbutton", name="Steps", exact=True).fill(str(steps))
    page.get_by_role("button", name="Start run").click()
    ids = ui.wait_until(lambda: ui.url_params(page).get("run"), ui.PAGE_S, message="?run=<id> in the Train page's URL")
    return ids[0]


def stop_button(page):
    """The run's Stop button (Streamlit's own header shows a "Stop" of its own while a script runs)."""
    return page.locator("[data-testid='stMain']").get_by_role("button", name="Stop", exact=True)


def wait_final_state(ui, server, run_id: str, timeout_s: float) -> str:
    def final() -> str | None:
        state = ui.read_status(server.runs_dir, run_id).get("state")
        return state if state in ("completed", "failed", "stopped", "interrupted") else None

    return ui.wait_until(final, timeout_s, message=f"run {run_id} to end")


def synthetic_record(runs_dir, steps: int = 500, state: str = "completed") -> str:
    """A finished fp16 run record written directly (no training): loss scale backs off and grows."""
    rng = np.random.default_rng(7)
    writer = RunWriter.create(runs_dir, {"precision": "16-mixed", "precision_resolved": "16-mixed", "accelerator": "cpu",
                                         "max_steps": steps, "created_at": now_iso()}, label="synthetic")  # fmt: skip
    writer.set_status("running", created_at=now_iso(), started_at=now_iso())
    scale, tracker, rows = 2.0**20, 0, []
    for i in range(steps):
        skipped = i % 97 == 5
        if skipped:
            scale, tracker = scale / 2, 0
        else:
            tracker += 1
            if tracker == 50:
                scale, tracker = scale * 2, 0
        rows.append({"step": i, "loss": float(2.3 * np.exp(-i / 200) + 0.01 * rng.random()), "loss_scale": scale, "skipped": skipped,
                     "grad_norm": None if skipped else float(0.2 + 0.01 * rng.random()), "growth_tracker": tracker, "time": time.time()})  # fmt: skip
    writer.append_metrics(rows)
    writer.close()
    writer.set_status(state, ended_at=now_iso(), global_step=steps)
    return writer.id


# -- every page ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path,name", PAGES, ids=[n for _, n in PAGES])
def test_page_opens_without_exception(app_server, new_page, ui, shots_dir, path, name):
    page = new_page()
    ui.open_page(page, app_server, path)
    ui.assert_no_exception(page)
    links = page.locator(ui.NAV_LINKS)
    hrefs = [
        re.sub(r"^https?://[^/]+", "", links.nth(i).get_attribute("href") or "") or "/" for i in range(links.count())
    ]
    assert hrefs == NAV_PATHS, f"sidebar nav: {links.all_inner_texts()}"
    assert set(CORE_PATHS) <= set(hrefs)
    assert page.locator("h1").first.inner_text().strip(), "the page has no title"
    if path == "/":  # give the hardware probe a moment, for a more useful screenshot (not asserted)
        try:
            page.get_by_text("Reading the hardware").wait_for(state="detached", timeout=30_000)
        except Exception:
            pass
    ui.screenshot(page, shots_dir, f"page-{name}")
    ui.assert_no_exception(page)


# -- Precision: shared links and widget -> URL -----------------------------------------------------


@pytest.mark.parametrize(
    "query,expected",
    [
        (
            {"precision": "bf16", "use_amp": "None", "cuda": "false", "gpu": "false"},
            {"rule": "'bf16'", "final": "bf16-mixed"},
        ),
        (
            {"precision": "16-mixed", "use_amp": "False", "cuda": "true", "gpu": "true"},
            {"rule": "'32'", "final": "32-true"},
        ),
    ],
    ids=["bf16-alias", "use_amp-false"],
)
def test_precision_link_restores_toggles(app_server, new_page, ui, shots_dir, query, expected):
    page = new_page()
    ui.open_page(page, app_server, "/Precision?" + "&".join(f"{k}={v}" for k, v in query.items()))
    ui.assert_no_exception(page)
    assert combobox_value(page, "Requested precision") == query["precision"]
    assert combobox_value(page, "use_amp") == query["use_amp"]
    assert page.get_by_role("checkbox", name="CUDA available").is_checked() == (query["cuda"] == "true")
    assert page.get_by_role("checkbox", name="Use GPU").is_checked() == (query["gpu"] == "true")
    assert metric_value(page, "Project rule gives") == expected["rule"]
    assert metric_value(page, "Lightning trains in") == expected["final"]
    ui.screenshot(page, shots_dir, f"precision-link-{query['precision']}")


def test_precision_widgets_write_the_url(app_server, new_page, ui):
    page = new_page()
    ui.open_page(page, app_server, "/Precision")
    assert combobox_value(page, "Requested precision") == "16-mixed"
    assert "precision" not in ui.url_params(page)  # defaults stay out of the URL

    choose(page, "Requested precision", "bf16-mixed")
    ui.wait_until(
        lambda: ui.url_params(page).get("precision") == ["bf16-mixed"],
        ui.PAGE_S,
        message="precision=bf16-mixed in the URL",
    )
    ui.wait_until(
        lambda: metric_value(page, "Lightning trains in") == "bf16-mixed",
        ui.PAGE_S,
        message="the resolved precision to follow",
    )

    click_checkbox(page, "Use GPU")  # default on
    ui.wait_until(lambda: ui.url_params(page).get("gpu") == ["false"], ui.PAGE_S, message="gpu=false in the URL")
    choose(page, "use_amp", "False")
    ui.wait_until(
        lambda: ui.url_params(page).get("use_amp") == ["False"], ui.PAGE_S, message="use_amp=False in the URL"
    )
    ui.wait_until(
        lambda: metric_value(page, "Lightning trains in") == "32-true", ui.PAGE_S, message="use_amp=False to force fp32"
    )
    ui.assert_no_exception(page)

    # The URL is the shareable state: another user opening it sees the same view.
    other = new_page()
    ui.open_page(other, app_server, page.evaluate("() => location.pathname + location.search"))
    assert combobox_value(other, "Requested precision") == "bf16-mixed"
    assert combobox_value(other, "use_amp") == "False"
    assert not other.get_by_role("checkbox", name="Use GPU").is_checked()
    assert metric_value(other, "Lightning trains in") == "32-true"


def test_precision_link_with_unknown_value(app_server, new_page, ui):
    page = new_page()
    ui.open_page(page, app_server, "/Precision?precision=fp8-bogus&use_amp=maybe")
    ui.assert_no_exception(page)
    assert page.locator("[data-testid='stAlert']").filter(has_text="Ignored the link's precision value").count() == 1
    assert combobox_value(page, "Requested precision") == "16-mixed"
    assert combobox_value(page, "use_amp") == "None"


# -- Train: a short run, live ------------------------------------------------------------------------


def test_train_short_run_draws_live_and_completes(app_server, new_page, ui, shots_dir):
    steps = 800  # about 8 s here: 150 steps can finish between two 1 s redraws
    page = new_page()
    run_id = start_run(page, ui, app_server, steps)
    ui.wait_until(lambda: ui.loss_scale_points(page) >= 1, ui.RUN_S, message="the loss-scale chart's first point")
    titles = ui.chart_titles(page)
    assert titles and titles[0].startswith("Loss scale (log2)"), titles

    # Watch it while it trains: both traces must grow between redraws, then the state reads completed.
    scale_seen, loss_seen = [], []
    deadline = time.monotonic() + ui.RUN_S
    while time.monotonic() < deadline:
        scale_seen.append(ui.loss_scale_reach(page))
        loss_seen.append(ui.loss_points(page))
        if "completed" in progress_text(page):
            break
        time.sleep(0.25)
    text = progress_text(page)
    assert "completed" in text, f"progress text: {text!r}; status: {ui.read_status(app_server.runs_dir, run_id)}"
    ui.assert_no_exception(page)
    assert ui.read_status(app_server.runs_dir, run_id).get("state") == "completed"

    in_progress = sorted({n for n in loss_seen if 0 < n < steps})
    assert in_progress, f"never saw the run part-way (loss trace lengths seen: {sorted(set(loss_seen))})"
    ui.wait_until(lambda: ui.loss_points(page) == steps, ui.PAGE_S, message=f"the loss chart to hold all {steps} steps")
    # The scale line is drawn from change points, so its point count can stay put; the step it reaches moves.
    nonzero = [x for x in scale_seen if x]
    assert any(b > a for a, b in zip(nonzero, nonzero[1:])), f"the loss-scale line never reached further: {nonzero}"
    assert f"step {steps} of {steps}" in progress_text(page)
    ui.wait_until(lambda: stop_button(page).count() == 0, ui.PAGE_S,
                  message="Stop to go away once the run has finished")  # fmt: skip
    ui.screenshot(page, shots_dir, "train-completed")


# -- Train: Stop, and a second user watching live on the Runs page -------------------------------------


def test_long_run_watched_live_elsewhere_then_stopped(app_server, new_page, ui, shots_dir):
    trainer = new_page()
    run_id = start_run(trainer, ui, app_server, 100_000)
    ui.wait_until(
        lambda: "running" in progress_text(trainer) and ui.loss_points(trainer) > 0,
        ui.RUN_S,
        message="the long run to be training",
    )

    # A second user opens the run's link on the Runs page and sees it live.
    viewer = new_page()
    ui.open_page(viewer, app_server, f"/Runs?run={run_id}")
    ui.assert_no_exception(viewer)
    assert combobox_value(viewer, "Open a run").startswith(run_id)
    first = ui.wait_until(lambda: ui.loss_points(viewer), ui.PAGE_S, message="the viewer's loss chart")
    ui.wait_until(
        lambda: ui.loss_points(viewer) > first, ui.PAGE_S, message=f"the viewer's chart to grow past {first} points"
    )
    mine = ui.loss_points(trainer)
    ui.wait_until(lambda: ui.loss_points(trainer) > mine, ui.PAGE_S, message="the trainer's chart to keep growing")
    assert ui.read_status(app_server.runs_dir, run_id).get("state") == "running"
    ui.screenshot(viewer, shots_dir, "runs-live")

    stop_button(trainer).click()
    ui.wait_until(lambda: "stopped" in progress_text(trainer), 30, message="the Train page to say stopped")
    assert wait_final_state(ui, app_server, run_id, 30) == "stopped"
    ui.assert_no_exception(trainer)
    ui.screenshot(trainer, shots_dir, "train-stopped")

    # The viewer's live view notices the end and redraws the record as stopped.
    badge = viewer.get_by_text(re.compile(r"^stopped · \d+ steps"))
    ui.wait_until(lambda: badge.count() > 0, 30, message="the viewer to see the run stopped")
    ui.assert_no_exception(viewer)

    # A fresh Runs page lists it as stopped.
    listing = new_page()
    ui.open_page(listing, app_server, "/Runs")
    ui.assert_no_exception(listing)
    table = listing.locator("[data-testid='stDataFrame'] table").first
    row = ui.wait_until(lambda: next((r for r in table.inner_text().splitlines() if run_id in r), None), ui.PAGE_S,
                        message=f"{run_id} in the runs table")  # fmt: skip
    assert "stopped" in row, row
    assert combobox_value(listing, "Open a run") == f"{run_id} · 16-mixed"  # newest first


# -- Runs: replay and downloads of a finished record ---------------------------------------------------


def test_runs_page_replays_and_exports_a_record(app_server, new_page, ui, shots_dir):
    steps = 500
    run_id = synthetic_record(app_server.runs_dir, steps)
    page = new_page()
    ui.open_page(page, app_server, f"/Runs?run={run_id}")
    ui.assert_no_exception(page)
    assert combobox_value(page, "Open a run") == f"{run_id} · 16-mixed"

    ui.wait_until(lambda: ui.loss_points(page) == steps, ui.PAGE_S, message=f"the loss chart with {steps} points")
    run = load_run(app_server.runs_dir / run_id)
    expected_scale_points = len(change_points(run.metrics.step, run.metrics.loss_scale)[0])
    assert ui.loss_scale_points(page) == expected_scale_points
    assert ui.chart_titles(page)[:1] == ["Loss scale (log2)"]
    ui.screenshot(page, shots_dir, "runs-replay")

    lines = download(page, ui, app_server, f"/Runs?run={run_id}", "Metrics CSV").splitlines()
    assert lines[0] == ",".join(METRIC_COLUMNS)
    assert len(lines) == steps + 1

    record = json.loads(download(page, ui, app_server, f"/Runs?run={run_id}", "Record JSON"))
    assert record["id"] == run_id and len(record["metrics"]) == steps

    html = download(page, ui, app_server, f"/Runs?run={run_id}", "Loss-scale chart HTML")
    assert "<html" in html.lower() and "plotly" in html.lower()
    ui.assert_no_exception(page)


def test_bad_run_links_are_ignored(app_server, new_page, ui):
    synthetic_record(app_server.runs_dir, 20)  # the Runs page needs at least one run to get that far
    page = new_page()
    ui.open_page(page, app_server, "/Runs?run=no-such-run")
    ui.assert_no_exception(page)
    assert page.locator("[data-testid='stAlert']").filter(has_text="not in this runs directory").count() == 1

    ui.open_page(page, app_server, "/Train?run=..%2F..%2Fetc")
    ui.assert_no_exception(page)
    assert page.locator("[data-testid='stAlert']").filter(has_text="not a valid run id").count() == 1


def test_two_downloads_in_a_row(app_server, new_page, ui):
    run_id = synthetic_record(app_server.runs_dir, 50)
    page = new_page()
    ui.open_page(page, app_server, f"/Runs?run={run_id}")
    for button in ("Metrics CSV", "Record JSON"):  # as a user clicks them: one after the other
        with page.expect_download(timeout=15_000) as dl:
            page.get_by_role("button", name=button).click()
        assert open(dl.value.path(), encoding="utf-8").read()
