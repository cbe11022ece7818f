"""Shipped recordings and the skip ledger on the Runs and Compare pages (AppTest, real engine runs on CPU).

The recording here is a CPU run published into a temporary recordings folder: it stands in for the GPU
recordings of demo_runs/ and is never shipped as one.
"""

import shutil
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from amp_core.analysis import compare
from amp_core.record import load_run
from amp_core.record.recordings import RECORDINGS_DIR_ENV, publish
from amp_core.record.skips import skipped_rows
from amp_core.training.cli import RunConfig, run

ROOT = Path(__file__).resolve().parents[2]
SMALL = dict(accelerator="cpu", hidden=32, depth=2, batch_size=16, wandb="disabled")
MACHINE = {"host": None, "cuda": None, "driver": None}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A local fp16 run whose scale backs off on its own, and recordings: an fp16 run and a compare group."""
    base = tmp_path_factory.mktemp("rec-pages")
    local, staging, recordings = base / "runs", base / "staging", base / "demo_runs"
    fp16 = dict(SMALL, precision="16-mixed", max_steps=30, init_scale=2.0**40, growth_interval=5, histogram_every=10)
    local_id = run(RunConfig(**fp16, runs_dir=str(local))).id
    staged = run(RunConfig(**fp16, runs_dir=str(staging))).path
    recorded = publish(staged, recordings, "python -m amp_core.train --precision 16-mixed", "fp16 backoffs", MACHINE)
    configs = compare.plan(
        ["32-true", "bf16-mixed"],
        on_cuda=False,
        max_steps=compare.min_comparison_steps(),
        runs_dir=str(staging),
        **{k: v for k, v in SMALL.items() if k != "wandb"},
    )
    for c in configs:
        publish(run(c).path, recordings, "python -m amp_core.compare", "compare", MACHINE)
    shutil.rmtree(staging, ignore_errors=True)
    return local, recordings, local_id, recorded.name, configs[0].compare_group


@pytest.fixture
def pages_env(app_env, folders, monkeypatch):
    local, recordings, *_ = folders
    monkeypatch.setenv("AMP_RUNS_DIR", str(local))
    monkeypatch.setenv(RECORDINGS_DIR_ENV, str(recordings))
    return folders


def test_runs_page_lists_a_recording_apart_with_its_provenance(pages_env):
    local, recordings, local_id, rec_id, _ = pages_env
    at = AppTest.from_file(str(ROOT / "pages/3_Runs.py"), default_timeout=120)
    at.query_params["run"] = rec_id
    at.run()
    assert not at.exception
    table = at.dataframe[0].value
    marks = dict(zip(table["id"], table["recording"]))
    assert marks[rec_id] == "🎞" and marks[local_id] == ""
    assert at.selectbox(key="run").value == rec_id
    info = " ".join(el.value for el in at.info)
    assert "Recording" in info and "fp16 backoffs" in info and "python -m amp_core.train" in info


def test_skipped_steps_tab_and_marker_hover_name_the_parameter(pages_env, figures):
    local, _, local_id, _, _ = pages_env
    record = load_run(local / local_id)
    rows = skipped_rows(record)
    assert rows and all(r["param"] and r["nonfinite"] in ("inf", "NaN", "inf and NaN") for r in rows)
    at = AppTest.from_file(str(ROOT / "pages/3_Runs.py"), default_timeout=120)
    at.query_params["run"] = local_id
    at.run()
    assert not at.exception
    tab = next(t for t in at.tabs if t.label == "Skipped steps")
    shown = tab.dataframe[0].value
    assert list(shown["step"]) == [r["step"] for r in rows] and list(shown["param"]) == [r["param"] for r in rows]
    markers = next(t for t in figures(at)[0].data if t.name and "skipped" in t.name)
    notes = list(np.asarray(markers.customdata))
    assert len(notes) == len(rows) and all(
        r["param"] in n and f"step {r['step']} skipped" in n for r, n in zip(rows, notes)
    )


def test_compare_page_offers_a_recorded_group(pages_env):
    *_, group = pages_env
    at = AppTest.from_file(str(ROOT / "pages/4_Compare.py"), default_timeout=120)
    at.query_params["group"] = group
    at.run()
    assert not at.exception
    select = at.selectbox(key="group")
    assert select.value == group
    assert f"🎞 {group} (recording)" in select.options  # marked apart from local comparisons
    table = at.dataframe[0].value
    assert list(table["variant"]) == ["32-true", "bf16-mixed"]
