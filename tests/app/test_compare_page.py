"""The Compare page through Streamlit's AppTest, against comparisons the real engine recorded."""

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from amp_core.analysis import compare, compare_figures
from amp_core.record import FINAL_STATES, list_runs, load_run
from amp_core.training.cli import RunConfig, run
from tests.support.processes import wait_final

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 120
PAGE = "pages/4_Compare.py"


def page() -> AppTest:
    return AppTest.from_file(str(ROOT / PAGE), default_timeout=TIMEOUT)


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Two comparisons written by the engine in this process: three precisions, and an older pair."""
    d = tmp_path_factory.mktemp("compared")
    groups = {}
    for name, variants, hidden in (("pair", ["bf16-mixed"], 16), ("three", ["16-mixed", "bf16-mixed"], 32)):
        configs = compare.plan(
            variants, on_cuda=False, max_steps=20, hidden=hidden, depth=1, batch_size=16, runs_dir=str(d)
        )
        for config in configs:
            run(config)
        groups[name] = configs[0].compare_group
    return d, groups


def test_page_without_comparisons(app_env):
    at = page().run()
    assert not at.exception
    assert any("No comparison yet" in i.value for i in at.info)
    assert at.multiselect[0].value == ["32-true", "16-mixed", "bf16-mixed"]  # no CUDA here: no TF32 by default


def test_selecting_a_comparison_shows_its_table_and_charts(app_env, recorded, monkeypatch, figures):
    d, groups = recorded
    monkeypatch.setenv("AMP_RUNS_DIR", str(d))
    at = page().run()
    assert not at.exception
    assert at.selectbox(key="group").value == groups["three"]  # the newest first
    at.selectbox(key="group").select(groups["pair"]).run()
    assert list(at.dataframe[0].value["variant"]) == ["32-true", "bf16-mixed"]
    at.selectbox(key="group").select(groups["three"]).run()
    assert not at.exception

    summary = compare.summarize_group(compare.group_runs(d, groups["three"]))
    variants = ["32-true", "16-mixed", "bf16-mixed"]
    table = at.dataframe[0].value
    assert list(table["variant"]) == variants and set(table["state"]) == {"completed"}
    for column in (
        "median_step_ms",
        "memory_mib",
        "speedup",
        "memory_ratio",
        "final_loss",
        "loss_diff",
        "skipped_steps",
    ):
        np.testing.assert_allclose(table[column].to_numpy(dtype=float), [r[column] for r in summary["rows"]])
    assert list(table["verdict"]) == [r["verdict"] for r in summary["rows"]]

    by_title = {f.layout.title.text.split(" (")[0]: f for f in figures(at)}
    step, tflops, memory, ratio, loss = (
        by_title[t]
        for t in ("Median step time", "Achieved matmul throughput", "Memory", "Against 32-true", "Training loss")
    )
    unit, factor = compare.flops_unit(summary["rows"])
    assert unit != "TFLOP/s" and tflops.layout.yaxis.title.text == unit  # a tiny model on a CPU: not "0.000001" TFLOP/s
    np.testing.assert_allclose(table["flops"].to_numpy(dtype=float), [r["tflops"] * factor for r in summary["rows"]])
    for fig, key, scale in ((step, "median_step_ms", 1), (tflops, "tflops", factor), (memory, "memory_mib", 1)):
        assert [t.type for t in fig.data] == ["bar"]
        assert list(fig.data[0].x) == variants
        np.testing.assert_allclose(np.asarray(fig.data[0].y), [r[key] * scale for r in summary["rows"]])
    assert "RSS the run added" in memory.layout.title.text
    assert [t.name.split(" ")[0] for t in ratio.data] == ["speedup", "memory"]
    np.testing.assert_allclose(np.asarray(ratio.data[0].y), [r["speedup"] for r in summary["rows"]])
    assert [t.name for t in loss.data] == variants
    for trace, r in zip(loss.data, compare.group_runs(d, groups["three"])):
        np.testing.assert_array_equal(np.asarray(trace.y), r.metrics.loss)
    notes = " ".join(i.value for i in at.info)
    assert "no fp16 arithmetic units" in notes or "fp16 units" in notes
    assert "resident memory (RSS)" in notes and "Python, torch and Lightning themselves are left out" in notes
    assert (
        at.dataframe[0].value["memory_mib"].notna().all()
    )  # in-process runs: reused heap can hide some, so only present


def test_a_link_to_a_comparison_and_a_hostile_one(app_env, recorded, monkeypatch):
    d, groups = recorded
    monkeypatch.setenv("AMP_RUNS_DIR", str(d))
    at = page()
    at.query_params["group"] = groups["pair"]
    at.run()
    assert not at.exception and list(at.dataframe[0].value["variant"]) == ["32-true", "bf16-mixed"]

    at = page()
    at.query_params["group"] = "../../etc"
    at.run()
    assert not at.exception
    assert any("not in this runs directory" in w.value for w in at.warning)
    assert list(at.dataframe[0].value["variant"]) == ["32-true", "16-mixed", "bf16-mixed"]


def test_tf32_without_cuda_is_a_message(app_env):
    at = page().run()
    at.multiselect[0].select(compare.TF32)
    next(b for b in at.button if b.label == "Run comparison").click()
    at.run()
    assert not at.exception
    assert any("needs a CUDA GPU" in e.value for e in at.error)
    assert list_runs(app_env) == []


def test_run_comparison_queues_timed_runs_through_the_launcher(app_env, figures):
    at = page().run()
    for label, value in (
        ("Steps", compare.min_comparison_steps()),
        ("Batch size", 8),
        ("Hidden width", 8),
        ("Hidden layers", 1),
    ):
        next(n for n in at.number_input if n.label == label).set_value(value)
    at.multiselect[0].set_value(["32-true", "bf16-mixed"])
    next(b for b in at.button if b.label == "Run comparison").click()
    at.run()
    assert not at.exception
    runs = list_runs(app_env)
    assert sorted(r.precision for r in runs) == ["32-true", "bf16-mixed"]
    assert len({r.config["compare_group"] for r in runs}) == 1 and all(r.config["time_steps"] for r in runs)
    assert at.selectbox(key="group").value == runs[0].config["compare_group"]
    assert [wait_final(r.path).state for r in runs] == ["completed", "completed"]
    at.run()  # run_every does not tick in AppTest: rerun by hand
    assert not at.exception
    table = at.dataframe[0].value
    assert (
        list(table["variant"]) == ["32-true", "bf16-mixed"] and table["median_step_ms"].notna().all()
    )  # timed in the worker
    assert len(figures(at)) == 5


def in_app() -> AppTest:
    """The page as the app serves it (app.py the entry point), so its links can name the Runs page."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=TIMEOUT)
    at.switch_page(PAGE)
    return at


def test_each_run_links_to_itself_on_the_runs_page(app_env, recorded, monkeypatch):
    d, groups = recorded
    monkeypatch.setenv("AMP_RUNS_DIR", str(d))
    at = in_app().run()
    assert not at.exception
    links = at.get("page_link")
    runs = compare.group_runs(d, groups["three"])
    assert [(link.proto.page, link.proto.query_string) for link in links] == [("Runs", f"run={r.id}") for r in runs]
    assert [link.value for link in links] == [f"{compare.variant_of(r)} · {r.id}" for r in runs]


def test_too_few_steps_are_refused_naming_the_minimum(app_env):
    at = page().run()
    next(n for n in at.number_input if n.label == "Steps").set_value(1)
    next(b for b in at.button if b.label == "Run comparison").click()
    at.run()
    assert not at.exception
    (error,) = at.error
    assert (
        f"at least {compare.MIN_TIMED_STEPS} timed steps" in error.value
        and f"use {compare.min_comparison_steps()} steps or more" in error.value
    )
    assert list_runs(app_env) == []


def test_a_barely_timed_comparison_is_greyed_without_verdicts(app_env, figures):
    """A comparison recorded with too few steps (made with amp_core.train directly, or before the minimum): shown, not judged."""
    for precision in ("32-true", "bf16-mixed"):
        run(
            RunConfig(
                precision=precision,
                max_steps=3,
                hidden=8,
                depth=1,
                batch_size=8,
                time_steps=True,
                compare_group="few",
                wandb="disabled",
                histogram_every=0,
            )
        )
    at = page().run()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table["verdict"]) == ["baseline", compare.TOO_FEW_STEPS] and list(table["timed_steps"]) == [2, 2]
    assert any("Too few timed steps for a verdict" in w.value and "bf16-mixed" in w.value for w in at.warning)
    assert "bf16-mixed** too few steps" in " ".join(c.value for c in at.caption)
    step = next(f for f in figures(at) if f.layout.title.text.startswith("Median step time"))
    assert list(step.data[0].marker.color) == [compare_figures.GREY, compare_figures.GREY]


def test_a_damaged_run_does_not_hold_the_comparison_live(app_env, recorded, monkeypatch, figures, tmp_path):
    """Found by the random-interaction test: a record whose status is unreadable (state unknown) kept the page
    live forever, with a Stop button whose click raised (an empty toast)."""
    import shutil

    d, groups = recorded
    copy = tmp_path / "damaged"
    shutil.copytree(d, copy)
    victim = next(r for r in compare.group_runs(copy, groups["three"]) if r.precision == "bf16-mixed")
    (victim.path / "status.json").write_text("{not json")
    assert load_run(victim.path).state not in FINAL_STATES
    monkeypatch.setenv("AMP_RUNS_DIR", str(copy))
    at = page()
    at.query_params["group"] = groups["three"]
    at.run()
    assert not at.exception
    assert not [b for b in at.button if b.label == "Stop comparison"]
    assert not at.get("progress")
    assert len(figures(at)) >= 4  # the charts are drawn: the page is not waiting for a run that will never end
