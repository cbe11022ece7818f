"""Random interaction: on every page, random sequences of widget actions never show an exception.

Each page gets its own copy of a runs folder of real records (completed, failed, stopped, interrupted,
queued, damaged, multi-rank, a comparison: tests/support/records.py). Hypothesis draws a sequence: a
link to open the page with (query parameters, valid or not), then 1-6 actions on whatever the page
shows at that moment (tests/support/interaction.py); after every rerun no `st.exception` element may be
on the page. The browser's widget -> URL write for `bind="query-params"` widgets is mirrored (AppTest
does not do it), which is what catches a page that rejects its own widget's URL value.

Sequences: 300 by default, split over the pages by weight; AMP_RANDOM_SEQUENCES=N for more. Derandomized
and without an example database: CI runs the same sequences every time. The count per page is printed
in the terminal summary ("random interaction"). Runs a sequence starts (Train's Start, Compare's Run
comparison) are real: they train in the app's workers, are stopped when the sequence ends, and the
workers run under an address-space cap, so random model sizes cannot take the shared machine's memory.
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlencode

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from streamlit.testing.v1 import AppTest

from amp_core.precision import lightning_precision_values
from amp_core.record import ACTIVE_STATES, list_runs, load_run
from tests.support.app import existing_launcher
from tests.support.interaction import JUNK_LINK, REPORT, draw_link, exception_texts, random_session
from tests.support.processes import memory_capped_python
from tests.support.records import RecordSet, copy_record_set, make_record_set

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 120  # one script run; generous: the machine is shared
WORKER_MEMORY = 4 * 2**30
DEFAULT_SEQUENCES = 300
# Shrinking a failure replays sequences for minutes on a loaded machine; AMP_RANDOM_SHRINK=0 reports it as found.
PHASES = [p for p in Phase if p != Phase.shrink or os.environ.get("AMP_RANDOM_SHRINK", "1") != "0"]
# Every page there is (a new file in pages/ joins by itself), and its share of the sequences: the Runs
# page has the most state (records x tabs x what-if inputs); a page not named here gets NEW_PAGE_WEIGHT.
SCRIPTS = ["app.py", *(f"pages/{p.name}" for p in sorted((ROOT / "pages").glob("*.py")))]
WEIGHTS = {
    "pages/3_Runs.py": 36,
    "pages/1_Precision.py": 15,
    "pages/5_Formats.py": 15,
    "pages/2_Train.py": 13,
    "pages/4_Compare.py": 12,
    "app.py": 9,
    # each new setting there takes a map in a child process (torch imported, one step recorded): seconds each
    "pages/6_Inside_the_step.py": 4,
}
NEW_PAGE_WEIGHT = 10


def sequences_for(script: str) -> int:
    total = int(os.environ.get("AMP_RANDOM_SEQUENCES") or DEFAULT_SEQUENCES)
    weights = {s: WEIGHTS.get(s, NEW_PAGE_WEIGHT) for s in SCRIPTS}
    return max(1, math.ceil(total * weights[script] / sum(weights.values())))


def link_candidates(script: str, records: RecordSet) -> dict[str, list[str]]:
    """Query parameters a link to the page may carry: the values the page offers, and junk."""
    ids = sorted(records.ids.values())
    labels = [f"{i} · {load_run(records.path / i).precision}" for i in ids]  # what the Runs select shows
    flags = ["true", "false", "True", "yes", "0", "1"]
    numbers = [
        "0.1",
        "1e-8",
        "65504",
        "65520",
        "-0",
        "nan",
        "inf",
        "1e400",
        "5e-324",
        "16",
        "-24",
        "126",
        "127",
        "-25",
        "1.5",
    ]
    links = {
        "pages/1_Precision.py": {
            "precision": [*lightning_precision_values(), "fp16"],
            "use_amp": ["None", "True", "False", "true"],
            "cuda": flags,
            "gpu": flags,
        },
        "pages/2_Train.py": {"run": ids},
        "pages/3_Runs.py": {"run": ids + labels},
        "pages/4_Compare.py": {"group": [records.group]},
        "pages/5_Formats.py": {"value": numbers, "gradient": numbers, "scale_log2": numbers},
    }.get(script, {})
    return {name: values + JUNK_LINK for name, values in links.items()}


@pytest.fixture(scope="session")
def record_set(tmp_path_factory) -> RecordSet:
    return make_record_set(tmp_path_factory.mktemp("records"))


@pytest.fixture
def page_runs(app_env, record_set, tmp_path, monkeypatch) -> RecordSet:
    """This test's copy of the record set as the app's runs folder; what its sequences start, stopped."""
    records = copy_record_set(record_set, app_env)  # app_env: AMP_RUNS_DIR points here
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(sys, "executable", str(memory_capped_python(tmp_path, WORKER_MEMORY)))
    yield records
    stop_started_runs(records)  # app_env then closes the launcher and kills what is left


def stop_started_runs(records: RecordSet) -> None:
    """Stop (as a user presses Stop) every run a sequence started; the launcher kills one that lingers."""
    launcher = existing_launcher(records.path)
    if launcher is None:
        return
    for run in list_runs(records.path):
        if run.id not in records.ids.values() and run.state in ACTIVE_STATES:
            launcher.stop(run.id)


def run_sequences(script: str, records: RecordSet, count: dict) -> None:
    links = link_candidates(script, records)

    @settings(
        max_examples=sequences_for(script),
        deadline=None,
        derandomize=True,
        database=None,
        print_blob=False,
        report_multiple_bugs=False,
        phases=PHASES,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(data=st.data())
    def sequence(data) -> None:
        count["sequences"] += 1
        url = draw_link(data, links)
        at = AppTest.from_file(str(ROOT / script), default_timeout=TIMEOUT)
        at.query_params.update(url)
        log = [f"open {script}" + (f"?{urlencode(url)}" if url else "")]
        try:
            at.run()
            assert not exception_texts(at), " -> ".join(log) + "\n" + "\n".join(exception_texts(at))
            steps = data.draw(st.integers(min_value=1, max_value=6), label="actions")
            random_session(data, at, ROOT / script, steps, log)
        finally:
            count["actions"] += len(log) - 1
            stop_started_runs(records)

    sequence()


@pytest.mark.parametrize("script", SCRIPTS)
def test_random_interaction_shows_no_exception(script, page_runs):
    count = {"sequences": 0, "actions": 0}
    started = time.monotonic()
    outcome = "failed"
    try:
        run_sequences(script, page_runs, count)
        outcome = "no exception"
    finally:
        started_runs = Counter(r.state for r in list_runs(page_runs.path) if r.id not in page_runs.ids.values())
        REPORT[script] = {
            **count,
            "seconds": time.monotonic() - started,
            "outcome": outcome,
            "runs started": dict(started_runs),
        }
    assert count["sequences"] >= sequences_for(script)
