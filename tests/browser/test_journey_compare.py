"""Compare, as a user takes it in Chromium: run a small comparison from the page, read its table,
follow each run's link to the Runs page and find that very run there; ask for too few steps and be told
the minimum.

The server and the page helpers are tests/browser/conftest.py's. Nothing asserts a duration: waits
poll with generous limits, since the runs train for real in the app's worker.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from amp_core.analysis import compare

VARIANTS = ["32-true", "16-mixed", "bf16-mixed"]  # the page's default on a machine without CUDA
SIZE = {"Steps": compare.min_comparison_steps(), "Batch size": 16, "Hidden width": 32, "Hidden layers": 1}
VERDICTS = ("baseline", "pass", "fail")
# The rows of st.dataframe's accessible grid (the canvas itself has no text): header row, then data.
GRID_ROWS_JS = """() => Array.from(document.querySelectorAll("[data-testid='stDataFrame'] [role='row']")).map(r =>
  Array.from(r.querySelectorAll("[role='columnheader'], [role='gridcell']")).map(c => c.textContent.trim()))"""
PAGE_LINKS_JS = (
    """() => Array.from(document.querySelectorAll("[data-testid='stPageLink'] a")).map(a => a.getAttribute('href'))"""
)


@pytest.fixture
def ui(page_helpers):
    return page_helpers


def set_number(page, label: str, value: int) -> None:
    box = page.get_by_role("spinbutton", name=label, exact=True)
    box.fill(str(value))
    box.press("Tab")  # Streamlit takes a number input's value on blur


def groups(runs_dir: Path) -> dict[str, list[tuple[str, dict, dict]]]:
    """compare_group -> [(run id, config, status)] read straight from the run records."""
    out: dict[str, list[tuple[str, dict, dict]]] = {}
    for d in sorted(p for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []:
        try:
            config, status = json.loads((d / "config.json").read_text()), json.loads((d / "status.json").read_text())
        except (OSError, ValueError):
            continue
        if config.get("compare_group"):
            out.setdefault(config["compare_group"], []).append((d.name, config, status))
    return out


def grid(page) -> tuple[list[str], list[list[str]]]:
    rows = [r for r in page.evaluate(GRID_ROWS_JS) if r]
    return (rows[0], rows[1:]) if rows else ([], [])


def run_comparison_from_the_page(page, server, ui) -> tuple[str, list[tuple[str, dict, dict]]]:
    """Fill the form, start, wait for every run to end and the page to draw the result."""
    before = set(groups(server.runs_dir))
    ui.open_page(page, server, "/Compare")
    for label, value in SIZE.items():
        set_number(page, label, value)
    page.get_by_role("button", name="Run comparison").click()
    ui.settle(page)
    ui.assert_no_exception(page)
    group = ui.wait_until(
        lambda: next(iter(set(groups(server.runs_dir)) - before), None),
        ui.PAGE_S,
        message="the comparison's runs to be queued",
    )
    ui.wait_until(
        lambda: [s.get("state") for _, _, s in groups(server.runs_dir)[group]] == ["completed"] * len(VARIANTS),
        3 * ui.RUN_S,
        interval_s=1.0,
        message=f"the {len(VARIANTS)} runs of {group} to complete",
    )
    # The live table reruns the whole page once every run has ended: then the figures are drawn.
    ui.wait_until(
        lambda: any(t.startswith("Memory") for t in ui.chart_titles(page)),
        2 * ui.PAGE_S,
        message="the comparison's figures",
    )
    ui.settle(page)
    return group, groups(server.runs_dir)[group]


def test_a_comparison_from_the_page_then_each_run_it_links_to(app_server, new_page, ui, shots_dir):
    page = new_page()
    group, runs = run_comparison_from_the_page(page, app_server, ui)
    ui.assert_no_exception(page)
    assert ui.url_params(page).get("group") == [group]

    header, rows = grid(page)
    memory_col = next(i for i, h in enumerate(header) if h.startswith("memory MiB"))
    assert "RSS the run added" in header[memory_col]
    verdict_col, variant_col = header.index("verdict"), header.index("variant")
    by_variant = {r[variant_col]: r for r in rows}
    assert sorted(by_variant) == sorted(VARIANTS)
    recorded_memory = {s["run_memory_mib"] for _, _, s in runs}
    for variant, row in by_variant.items():
        assert row[verdict_col] in VERDICTS and (row[verdict_col] == "baseline") == (variant == compare.BASELINE)
        assert float(row[memory_col]) in recorded_memory  # the figure each run recorded for what it added
    text = page.locator("[data-testid='stMain']").inner_text()
    assert "Verdict per run: 16-mixed " in text and "too few steps" not in text
    ui.screenshot(page, shots_dir, "compare-journey-after")

    # Each link opens the Runs page on the run it names (not the newest one).
    ids = [
        rid for rid, _, _ in sorted(runs, key=lambda r: VARIANTS.index(r[1]["precision"]))
    ]  # the page lists the baseline first
    assert page.evaluate(PAGE_LINKS_JS) == [f"Runs?run={rid}" for rid in ids]
    for rid in ids:
        ui.open_page(page, app_server, f"/Compare?group={group}")
        ui.wait_until(lambda: page.evaluate(PAGE_LINKS_JS), ui.PAGE_S, message="the links to the runs")
        page.get_by_role("link", name=rid).click()
        ui.wait_until(
            lambda: page.evaluate("() => location.pathname").endswith("/Runs"), ui.PAGE_S, message="the Runs page"
        )
        ui.settle(page)
        ui.assert_no_exception(page)
        assert ui.url_params(page).get("run") == [rid]
        opened = page.get_by_role("combobox", name="Open a run").input_value()
        assert opened.startswith(rid), f"the link to {rid} opened {opened!r}"


def test_too_few_steps_are_refused_in_the_page(app_server, new_page, ui, shots_dir):
    page = new_page()
    before = groups(app_server.runs_dir)
    ui.open_page(page, app_server, "/Compare")
    set_number(page, "Steps", 1)
    set_number(page, "Hidden width", 8)
    page.get_by_role("button", name="Run comparison").click()
    ui.settle(page)
    ui.assert_no_exception(page)
    error = page.locator("[data-testid='stAlert']").filter(has_text="Cannot start this comparison").inner_text()
    assert (
        f"at least {compare.MIN_TIMED_STEPS} timed steps" in error
        and f"use {compare.min_comparison_steps()} steps or more" in error
    )
    assert groups(app_server.runs_dir) == before  # nothing was queued
    ui.screenshot(page, shots_dir, "compare-journey-too-few-steps")
