"""Journeys: the paths a user takes through the app in a real browser, each checked by what the user then sees.

The recorded runs are real: short CLI runs (`python -m amp_core.train`) written into the shared
server's runs directory before the first journey. Every wait polls a condition with a generous
limit; nothing asserts a duration.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from amp_core.charts import short_label
from amp_core.record import METRIC_COLUMNS, list_runs

REPO = Path(__file__).resolve().parents[2]
STEPS = 30
INJECTED = (12, 20)
# (precision, extra CLI arguments): fp16 with backoffs, growth and injected overflows, then bf16 and fp32.
RECORDED = (
    (
        "16-mixed",
        ["--init-scale", str(2.0**24), "--growth-interval", "5", "--inject-overflow", ",".join(map(str, INJECTED))],
    ),
    ("bf16-mixed", []),
    ("32-true", []),
)
# st.dataframe draws on a canvas and keeps a hidden table of its cells for screen readers: read that.
GRID_ROWS_JS = """() => Array.from(document.querySelectorAll("[data-testid='stDataFrame'] table")).map(t =>
  Array.from(t.querySelectorAll('tr')).map(tr => Array.from(tr.querySelectorAll('td')).map(c => c.textContent.trim())))"""
TRACE_NAMES_JS = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).map(e => {
  const t = e.layout && e.layout.title;
  return {title: (typeof t === 'string' ? t : (t && t.text) || '').replace(/<[^>]*>/g, ''),
          names: (e.data || []).map(d => d.name || '')};
})"""

SKIP_HOVER_JS = """() => Array.from(document.querySelectorAll('.js-plotly-plot')).flatMap(e => {
  const t = e.layout && e.layout.title;
  const title = (typeof t === 'string' ? t : (t && t.text) || '').replace(/<[^>]*>/g, '');
  if (!title.startsWith('Loss scale')) return [];
  return (e.data || []).filter(d => (d.name || '').includes(' skipped (')).flatMap(d => Array.from(d.customdata || []).map(String));
})"""


@pytest.fixture
def ui(page_helpers):
    return page_helpers


@pytest.fixture(scope="module")
def recorded(app_server) -> dict[str, str]:
    """precision -> run id of three real 30-step CLI runs in the server's runs directory (run side by side)."""
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", PYTHONUNBUFFERED="1")
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "amp_core.train",
                "--precision",
                precision,
                "--max-steps",
                str(STEPS),
                "--histogram-every",
                "10",
                "--wandb",
                "disabled",
                "--runs-dir",
                str(app_server.runs_dir),
                *extra,
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for precision, extra in RECORDED
    ]
    for (precision, _), proc in zip(RECORDED, procs):
        out, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{precision} run failed:\n{out[-3000:]}"
    runs = {
        r.precision: r
        for r in list_runs(app_server.runs_dir)
        if r.config.get("max_steps") == STEPS and r.state == "completed"
    }
    assert set(runs) >= {p for p, _ in RECORDED}, sorted(runs)
    return {p: runs[p].id for p, _ in RECORDED}


def label(run_id: str, precision: str) -> str:
    return f"{run_id} · {precision}"


def combobox_value(page, name: str) -> str:
    return page.get_by_role("combobox", name=name).input_value()


def choose(page, name: str, option: str) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

    box = page.get_by_role("combobox", name=name)
    wanted = page.get_by_role("option", name=option, exact=True)
    box.click()
    try:
        wanted.wait_for(state="visible", timeout=5000)
    except PlaywrightTimeoutError:  # the select kept focus from the last choice: that click closed its menu
        box.click()
    wanted.click()


def charts(page) -> list[dict]:
    """Title and trace names of every Plotly chart on the page, in page order."""
    return page.evaluate(TRACE_NAMES_JS)


def trace_names(page, title: str) -> list[str]:
    return next((c["names"] for c in charts(page) if c["title"].startswith(title)), [])


def run_line(page) -> str:
    """The replayed run's line ("completed · 30 steps · 0 skipped · ..."), '' while absent."""
    found = page.locator("[data-testid='stMarkdownContainer']").filter(
        has_text=re.compile(r"^(completed|stopped|failed) · \d+ steps")
    )
    return found.first.inner_text() if found.count() else ""


def alerts(page, text: str):
    return page.locator("[data-testid='stAlert']").filter(has_text=text)


def shows_run(page, ui, run_id: str, precision: str, state: str = "completed", steps: int = STEPS) -> None:
    """The Runs page shows this run: the select, the URL, its state and steps, and its name in the charts."""
    ui.wait_until(
        lambda: combobox_value(page, "Open a run") == label(run_id, precision),
        ui.PAGE_S,
        message=f"the select to show {run_id}",
    )
    ui.wait_until(lambda: ui.url_params(page).get("run") == [run_id], ui.PAGE_S, message=f"?run={run_id} in the URL")
    ui.wait_until(
        lambda: run_line(page).startswith(f"{state} · {steps} steps"), ui.PAGE_S, message=f"'{state} · {steps} steps'"
    )
    ui.wait_until(lambda: trace_names(page, "Training loss") == [short_label(run_id)], ui.PAGE_S,
                  message=f"the loss chart to draw {short_label(run_id)} alone")  # fmt: skip
    assert ui.loss_points(page) == steps
    ui.assert_no_exception(page)


# -- Runs ------------------------------------------------------------------------------------------


def test_open_each_recorded_run_from_the_select(app_server, recorded, new_page, ui, shots_dir):
    page = new_page()
    ui.open_page(page, app_server, "/Runs")
    newest = list_runs(app_server.runs_dir)[0].precision  # open already: choosing it again changes nothing
    others = [p for p in recorded if p != newest]
    for precision in (*others, newest, others[0]):  # back to one already seen, too
        choose(page, "Open a run", label(recorded[precision], precision))
        ui.settle(page)
        shows_run(page, ui, recorded[precision], precision)
    ui.screenshot(page, shots_dir, "journey-runs-select")


def test_a_link_opens_the_run_it_names(app_server, recorded, new_page, ui):
    page = new_page()
    for precision, run_id in recorded.items():  # whichever is newest, each link opens its own run
        ui.open_page(page, app_server, f"/Runs?run={run_id}")
        shows_run(page, ui, run_id, precision)
    ui.open_page(page, app_server, "/Runs?run=20990101-000000-nothing-000000")
    ui.assert_no_exception(page)
    assert alerts(page, "not in this runs directory").count() == 1
    newest = list_runs(app_server.runs_dir)[0]
    assert combobox_value(page, "Open a run") == label(newest.id, newest.precision)
    assert "run" not in ui.url_params(page)


def test_overlay_two_runs(app_server, recorded, new_page, ui, shots_dir):
    page = new_page()
    a, b = recorded["16-mixed"], recorded["bf16-mixed"]
    ui.open_page(page, app_server, f"/Runs?run={a}")
    choose(page, "Overlay other runs", label(b, "bf16-mixed"))
    ui.settle(page)
    for title in ("Training loss", "Gradient norm"):
        ui.wait_until(
            lambda title=title: trace_names(page, title) == [short_label(a), short_label(b)],
            ui.PAGE_S,
            message=f"{title}: both runs",
        )
    assert ui.first_trace_points(page, "Training loss") == STEPS
    ui.assert_no_exception(page)
    ui.screenshot(page, shots_dir, "journey-runs-overlay")


def test_every_tab_on_runs(app_server, recorded, new_page, ui, shots_dir):
    page = new_page()
    run_id = recorded["16-mixed"]
    ui.open_page(page, app_server, f"/Runs?run={run_id}")
    main = page.locator("[data-testid='stMain']")

    page.get_by_role("tab", name="Gradients vs fp16").click()
    share = (
        main.locator("[data-testid='stMetric']")
        .filter(has_text="Would underflow fp16 unscaled")
        .locator("[data-testid='stMetricValue']")
    )
    assert re.fullmatch(r"\d+\.\d\d%", share.inner_text().strip())
    ui.wait_until(
        lambda: any(c["title"].startswith("Gradient values at step 20") for c in charts(page)),
        ui.PAGE_S,
        message="the histogram",
    )

    page.get_by_role("tab", name="Skipped steps").click()
    assert main.get_by_text(re.compile(r"the first, in backward order, whose gradient held inf or NaN")).is_visible()
    hovers = page.evaluate(SKIP_HOVER_JS)  # what the loss-scale chart's skipped markers say on hover
    assert hovers and all(
        re.match(r"step \d+ skipped: (inf|NaN|inf and NaN) in net\.\d+\.(weight|bias); scale ", h) for h in hovers
    ), hovers[:3]

    page.get_by_role("tab", name="Scaler what-if").click()
    assert main.get_by_text(re.compile(r"reproduces the recorded scale on \d+\.\d%")).is_visible()
    names = trace_names(page, "What-if")
    assert names[0] == "recorded" and any(n.startswith("torch GradScaler (estimate") for n in names), names

    page.get_by_role("tab", name="Advice").click()
    skipped = alerts(page, "steps were skipped while the scale backed off from the demo's 2^24")
    ui.wait_until(
        lambda: skipped.count() == 1 and skipped.first.is_visible(),
        ui.PAGE_S,
        message="the advice on the demo's initial scale",
    )
    assert "chosen above what this model needs so that backoffs show" in skipped.first.inner_text()
    ui.assert_no_exception(page)
    ui.screenshot(page, shots_dir, "journey-runs-advice")


def _download(page, ui, server, run_id: str, button: str, folder: Path) -> str:
    """Open the run afresh (each rerun issues new file ids), click `button`, save the file; its text."""
    ui.open_page(page, server, f"/Runs?run={run_id}")
    with page.expect_download() as dl:
        page.get_by_role("button", name=button).click()
    target = folder / dl.value.suggested_filename
    dl.value.save_as(target)
    return target.read_text(encoding="utf-8")


def test_every_download(app_server, recorded, new_page, ui, tmp_path):
    page = new_page()
    run_id = recorded["16-mixed"]
    csv = _download(page, ui, app_server, run_id, "Metrics CSV", tmp_path).splitlines()
    assert csv[0] == ",".join(METRIC_COLUMNS) and len(csv) == STEPS + 1
    assert [int(line.split(",")[0]) for line in csv[1:]] == list(range(STEPS))
    record = json.loads(_download(page, ui, app_server, run_id, "Record JSON", tmp_path))
    assert record["id"] == run_id and len(record["metrics"]) == STEPS
    html = _download(page, ui, app_server, run_id, "Loss-scale chart HTML", tmp_path)
    assert "<html" in html.lower() and "plotly" in html.lower()
    assert f"injected ({len(INJECTED)})" in html  # the injected-step markers' trace
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f"{run_id}.csv", f"{run_id}.json", f"{run_id}-loss-scale.html"]
    )
    ui.assert_no_exception(page)


# -- Train -----------------------------------------------------------------------------------------


def test_train_start_stop_then_the_run_on_runs(app_server, new_page, ui, shots_dir):
    page = new_page()
    ui.open_page(page, app_server, "/Train")
    page.get_by_role("spinbutton", name="Steps", exact=True).fill("100000")
    page.get_by_role("button", name="Start run").click()
    run_id = ui.wait_until(lambda: ui.url_params(page).get("run"), ui.PAGE_S, message="?run=<id> on Train")[0]
    ui.wait_until(lambda: ui.loss_points(page) > 0, ui.RUN_S, message="the run's first points")
    page.locator("[data-testid='stMain']").get_by_role("button", name="Stop", exact=True).click()
    ui.wait_until(
        lambda: ui.read_status(app_server.runs_dir, run_id).get("state") == "stopped", 60, message="the run to stop"
    )
    steps = ui.wait_until(lambda: re.search(r"stopped · step (\d+)", " ".join(page.locator("[data-testid='stProgress']").all_inner_texts())),
                          60, message="Train to say stopped").group(1)  # fmt: skip

    with page.context.expect_page() as opened:  # Streamlit opens markdown links in a new tab; Train stays open
        page.get_by_role("link", name="Open this run on the Runs page").click()
    runs = opened.value
    runs.set_default_timeout(ui.PAGE_S * 1000)
    runs._amp_events = []
    ui.settle(runs)
    assert runs.evaluate("() => location.pathname").endswith("/Runs")
    shows_run(runs, ui, run_id, "16-mixed", state="stopped", steps=int(steps))
    ui.screenshot(runs, shots_dir, "journey-train-stopped-on-runs")


def test_a_precision_refused_before_start(app_server, new_page, ui):
    import importlib.util

    if importlib.util.find_spec("transformer_engine") is not None:
        pytest.skip("transformer_engine is installed here: nothing to refuse")
    before = [r.id for r in list_runs(app_server.runs_dir)]
    page = new_page()
    ui.open_page(page, app_server, "/Train")
    choose(page, "Precision", "transformer-engine")
    ui.settle(page)
    refusal = alerts(page, "Cannot start this run: precision transformer-engine needs the transformer_engine package")
    ui.wait_until(lambda: refusal.count() == 1, ui.PAGE_S, message="the refusal")
    start = page.get_by_role("button", name="Start run")
    assert start.is_disabled()
    start.click(force=True)  # a click on the disabled button starts nothing either
    page.wait_for_timeout(1000)
    ui.settle(page)
    assert [r.id for r in list_runs(app_server.runs_dir)] == before  # no run recorded, not even a queued one
    choose(page, "Precision", "16-true")  # a precision that can start, with a warning
    ui.settle(page)
    ui.wait_until(lambda: alerts(page, "commonly diverges").count() == 1, ui.PAGE_S, message="the 16-true warning")
    assert not page.get_by_role("button", name="Start run").is_disabled()
    ui.assert_no_exception(page)


# -- Precision and Formats -------------------------------------------------------------------------


def test_precision_link_round_trip(app_server, new_page, ui, shots_dir):
    page = new_page()
    ui.open_page(page, app_server, "/Precision")
    choose(page, "Requested precision", "bf16-mixed")
    choose(page, "use_amp", "True")
    page.locator("[data-testid='stCheckbox']").filter(has_text="CUDA available").locator("label").click()
    want = {"precision": ["bf16-mixed"], "use_amp": ["True"], "cuda": ["true"]}
    ui.wait_until(
        lambda: {k: v for k, v in ui.url_params(page).items() if k in want} == want,
        ui.PAGE_S,
        message=f"{want} in the URL",
    )

    page.reload()
    ui.settle(page)
    assert combobox_value(page, "Requested precision") == "bf16-mixed"
    assert combobox_value(page, "use_amp") == "True"
    assert page.get_by_role("checkbox", name="CUDA available").is_checked()
    assert page.get_by_role("checkbox", name="Use GPU").is_checked()
    rule = (
        page.locator("[data-testid='stMetric']")
        .filter(has_text="Project rule gives")
        .locator("[data-testid='stMetricValue']")
    )
    assert rule.inner_text().strip() == "'16'"
    assert alerts(page, "The rule turned this bf16 request ('bf16-mixed') into '16'").count() == 1
    ui.assert_no_exception(page)
    ui.screenshot(page, shots_dir, "journey-precision-round-trip")

    ui.open_page(page, app_server, "/Precision?cuda=yes&gpu=0")
    assert (
        alerts(page, "Ignored the link's cuda value").count() == 1
        and alerts(page, "Ignored the link's gpu value").count() == 1
    )
    assert not page.get_by_role("checkbox", name="CUDA available").is_checked()
    assert page.get_by_role("checkbox", name="Use GPU").is_checked()
    assert not {"cuda", "gpu"} & set(ui.url_params(page))


def test_formats_inputs(app_server, new_page, ui, shots_dir):
    page = new_page()
    ui.open_page(page, app_server, "/Formats")

    def row(fmt: str) -> list[str]:
        """The cells of `fmt`'s row in the rounding table (from the grid's hidden accessible copy of its cells)."""
        grids = page.evaluate(GRID_ROWS_JS)  # the page's one dataframe (the formats' properties are a static table)
        return next((r for r in (grids[0] if grids else []) if r and r[0] == fmt), [])

    value = page.get_by_role("spinbutton", name="Value", exact=True)
    value.fill("70000")
    value.press("Enter")
    ui.wait_until(lambda: ui.url_params(page).get("value") == ["70000"], ui.PAGE_S, message="value=70000 in the URL")
    ui.wait_until(
        lambda: row("fp16")[1:2] == ["Infinity"] and "overflow" in row("fp16"),
        ui.PAGE_S,
        message="fp16 to overflow 70000",
    )
    assert row("bf16")[1] == "70144" and "rounded" in row("bf16"), row("bf16")  # bf16 holds it, to 8 significant bits
    assert row("fp32")[1] == "70000" and "exact" in row("fp32"), row("fp32")

    gradient = page.get_by_role("spinbutton", name="Gradient value", exact=True)
    gradient.fill("1e-10")
    gradient.press("Enter")
    ui.wait_until(
        lambda: ui.url_params(page).get("gradient") == ["1e-10"], ui.PAGE_S, message="gradient=1e-10 in the URL"
    )
    ui.assert_no_exception(page)
    ui.screenshot(page, shots_dir, "journey-formats")
