"""Every page through Streamlit's AppTest, against run records the real engine wrote."""

import sys
import time
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from amp_core.record import change_points, list_runs, load_run
from amp_core.serve.launcher import get_launcher
from amp_core.training.cli import RunConfig, run

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 120


def page(name: str) -> AppTest:
    return AppTest.from_file(str(ROOT / name), default_timeout=TIMEOUT)


@pytest.fixture(scope="module")
def recorded_fp16(tmp_path_factory):
    """A real fp16 run with backoffs and growth, written by the engine on CPU."""
    d = tmp_path_factory.mktemp("recorded")
    writer = run(
        RunConfig(
            precision="16-mixed", max_steps=40, init_scale=2.0**40, growth_interval=5, wandb="disabled", runs_dir=str(d)
        )
    )
    return d, writer.id


def test_home_shows_hardware_without_lightning(app_env):
    at = page("app.py").run()
    assert not at.exception
    assert "Automatic mixed precision" in at.markdown[0].value
    launcher = get_launcher(app_env)
    deadline = time.monotonic() + 90
    while launcher.hardware is None and time.monotonic() < deadline:
        time.sleep(0.2)
    at.run()
    text = " ".join(m.value for m in at.markdown)
    assert "CPU only" in text or "GPU 0" in text


def test_home_does_not_import_lightning():
    import subprocess
    import sys

    code = (
        "import sys, runpy; from streamlit.testing.v1 import AppTest;"
        f"at = AppTest.from_file({str(ROOT / 'app.py')!r}, default_timeout=60).run();"
        "assert not at.exception, at.exception;"
        "print('pytorch_lightning' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["False", "False"]


def metric_values(at: AppTest) -> list[str]:
    return [m.value for m in at.metric]


def test_precision_defaults_on_cpu(app_env):
    at = page("pages/1_Precision.py").run()
    assert not at.exception
    rule, final, autocast, scaler = metric_values(at)
    assert rule == "'16-mixed'"
    assert final == "bf16-mixed"  # Lightning's CPU fallback of fp16
    assert autocast == "bfloat16" and scaler == "no"
    assert any("AMP with fp16 is not supported on CPU" in w.value for w in at.warning)


@pytest.mark.parametrize(
    "precision, use_amp, cuda, gpu, expected",
    [
        ("16-mixed", "True", True, True, ["'16'", "16-mixed", "float16", "yes"]),
        ("bf16", "None", False, False, ["'bf16'", "bf16-mixed", "bfloat16", "no"]),
        ("64", "None", False, True, ["'64'", "64-true", "none", "no"]),
        ("bf16-mixed", "False", True, True, ["'32'", "32-true", "none", "no"]),
    ],
)
def test_precision_toggles(app_env, precision, use_amp, cuda, gpu, expected):
    at = page("pages/1_Precision.py").run()
    at.selectbox(key="precision").select(precision)
    at.selectbox(key="use_amp").select(use_amp)
    at.checkbox(key="cuda").set_value(cuda)
    at.checkbox(key="gpu").set_value(gpu)
    at.run()
    assert not at.exception
    assert metric_values(at) == expected
    if cuda and gpu:  # no CUDA here: Lightning was asked with CUDA simulated, and the page says so
        assert any("simulated" in i.value for i in at.info)


def test_precision_from_link_and_hostile_link(app_env):
    at = page("pages/1_Precision.py")
    at.query_params["precision"] = "bf16"
    at.query_params["use_amp"] = "None"
    at.run()
    assert metric_values(at)[1] == "bf16-mixed"

    at = page("pages/1_Precision.py")
    at.query_params["precision"] = "<script>alert(1)</script>"
    at.run()
    assert not at.exception
    assert any("Ignored" in w.value for w in at.warning)
    assert metric_values(at)[0] == "'16-mixed'"


def test_precision_truth_table(app_env):
    at = page("pages/1_Precision.py").run()
    assert list(at.table[0].value["step"])[:2] == ["requested", "use_amp"]  # the decision, step by step
    table = at.dataframe[0].value
    assert len(table) == 12  # 3 use_amp x 2 cuda x 2 gpu for the selected precision
    at.toggle[0].set_value(True).run()
    full = at.dataframe[0].value
    assert len(full) > 12 and len(full) % 12 == 0
    assert set(full["final"]) >= {"bf16-mixed", "16-mixed", "32-true"}


def test_precision_page_says_so_when_lightning_cannot_be_asked(app_env, tmp_path, monkeypatch):
    from amp_core.serve.precision_table import forget, load_table

    kept = tmp_path / "kept"
    load_table(kept)  # the table on disk, to restore memory for the tests after this one without a child
    failing = tmp_path / "python"
    failing.write_text("#!/bin/sh\necho 'ModuleNotFoundError: No module named lightning_fabric' >&2\nexit 1\n")
    failing.chmod(0o755)
    with monkeypatch.context() as patched:
        patched.setattr(sys, "executable", str(failing))
        forget()
        at = page("pages/1_Precision.py").run()
    load_table(kept)
    assert not at.exception
    assert [e.value for e in at.error] == [
        "Lightning could not be asked about precision: ModuleNotFoundError: No module named lightning_fabric. "
        "Reload the page to try again."
    ]
    assert not at.metric and not at.selectbox  # the page stopped at the error


def test_runs_page_lists_and_replays_an_engine_run(app_env, recorded_fp16, monkeypatch, figures):
    d, run_id = recorded_fp16
    monkeypatch.setenv("AMP_RUNS_DIR", str(d))
    at = page("pages/3_Runs.py").run()
    assert not at.exception
    table = at.dataframe[0].value
    assert run_id in list(table["id"])
    row = table[table["id"] == run_id].iloc[0]
    record = load_run(d / run_id)
    assert row["state"] == "completed" and row["steps"] == 40 and row["skipped"] == record.skipped_steps > 0

    scale_fig = figures(at)[0]
    line, markers = scale_fig.data[0], scale_fig.data[1]
    m = record.metrics
    cx, cy = change_points(m.step, m.loss_scale)
    assert line.line.shape == "hv"
    np.testing.assert_array_equal(np.asarray(line.x), cx)
    np.testing.assert_array_equal(np.asarray(line.y), cy)
    assert len(markers.x) == record.skipped_steps
    assert scale_fig.layout.yaxis.type == "log"
    assert len(figures(at)[1].data[0].x) == 40  # the loss, every step


def test_runs_page_survives_damage_and_bad_links(app_env, recorded_fp16, monkeypatch):
    d, run_id = recorded_fp16
    broken = d / "20990101-000000-broken-000000"
    broken.mkdir(exist_ok=True)
    (broken / "status.json").write_text("{not json")
    (broken / "metrics.jsonl").write_text('{"step": 0, "loss": 1.0}\n{"step": 1, "lo')
    (d / "not-a-run").mkdir(exist_ok=True)
    monkeypatch.setenv("AMP_RUNS_DIR", str(d))
    at = page("pages/3_Runs.py")
    at.query_params["run"] = "../../etc"
    at.run()
    assert not at.exception
    assert any("not in this runs directory" in w.value for w in at.warning)
    ids = list(at.dataframe[0].value["id"])
    assert broken.name in ids and run_id in ids and "not-a-run" not in ids
    at.selectbox(key="run").select(broken.name).run()
    assert not at.exception
    assert any("damaged" in w.value for w in at.warning)


def test_train_start_run_records_and_completes(app_env, figures):
    at = page("pages/2_Train.py").run()
    assert not at.exception
    assert any("No run yet" in i.value for i in at.info)
    steps = next(n for n in at.number_input if n.label == "Steps")
    steps.set_value(25)
    next(r for r in at.radio if r.label == "W&B").set_value("disabled")
    next(b for b in at.button if b.label == "Start run").click()
    at.run()
    assert not at.exception
    runs = list_runs(app_env)
    assert len(runs) == 1 and runs[0].config["max_steps"] == 25
    run_id = runs[0].id
    deadline = time.monotonic() + 120
    while load_run(app_env / run_id).state not in ("completed", "failed") and time.monotonic() < deadline:
        time.sleep(0.3)
    assert load_run(app_env / run_id).state == "completed"
    at.run()  # run_every does not tick in AppTest: rerun by hand
    assert any("completed" in p.proto.text for p in at.get("progress"))
    assert len(figures(at)[0].data[0].x) >= 1


def test_train_bad_inject_steps_is_a_message(app_env):
    at = page("pages/2_Train.py").run()
    next(t for t in at.text_input if t.label == "Inject overflow at steps").input("10, x")
    next(b for b in at.button if b.label == "Start run").click()
    at.run()
    assert not at.exception
    assert any("whole step numbers" in e.value for e in at.error)
    assert list_runs(app_env) == []


def test_train_inject_needs_fp16_is_a_message(app_env):
    at = page("pages/2_Train.py").run()
    next(s for s in at.selectbox if s.label == "Precision").select("bf16-mixed")
    next(t for t in at.text_input if t.label == "Inject overflow at steps").input("10")
    next(b for b in at.button if b.label == "Start run").click()
    at.run()
    assert not at.exception
    assert any("needs a GradScaler" in e.value for e in at.error)
    assert list_runs(app_env) == []


def test_live_view_says_when_it_slows_down(app_env, monkeypatch, figures):
    import os

    from amp_core.record import RunWriter
    from amp_core.serve import live

    writer = RunWriter.create(app_env, {"precision": "16-mixed", "max_steps": 1000}, label="16-mixed")
    writer.set_status("running", pid=os.getpid())  # alive: this test process
    writer.append_metrics(
        [
            {"step": s, "loss": 1.0, "loss_scale": 1024.0, "skipped": False, "grad_norm": 0.5, "time": float(s)}
            for s in range(30)
        ]
    )
    monkeypatch.setattr(live, "machine_load", lambda: 1.0)
    at = page("pages/3_Runs.py").run()
    assert not at.exception
    assert any("running" in p.proto.text and "step 30 of 1000" in p.proto.text for p in at.get("progress"))
    assert not [c for c in at.caption if "Live view redrawn" in c.value]
    assert figures(at)[1].data[0].x[-1] == 29

    monkeypatch.setattr(live, "machine_load", lambda: 3.0)  # pressure stall: tasks wait for a core 2/3 of the time
    at.run()
    assert not at.exception
    assert [c.value for c in at.caption if "Live view redrawn" in c.value] == [
        "Live view redrawn every 3.0 s: this machine's CPUs are oversubscribed."
    ]
    writer.close()


# -- issue 9: what a user hit --------------------------------------------------------------------


def url_value(at: AppTest, name: str):
    """A query parameter as the page left it (AppTest keeps what a test set as a string, what a page set as a list)."""
    value = at.query_params.get(name)
    return value[-1] if isinstance(value, list) else value


@pytest.fixture(scope="module")
def recorded_several(tmp_path_factory):
    """Three real runs, oldest first: fp16 with backoffs, bf16, and a 16-true run that diverges and fails."""
    d = tmp_path_factory.mktemp("several")
    ids = [
        run(
            RunConfig(
                precision="16-mixed",
                max_steps=20,
                init_scale=2.0**40,
                growth_interval=5,
                histogram_every=10,
                wandb="disabled",
                runs_dir=str(d),
            )
        ).id,
        run(RunConfig(precision="bf16-mixed", max_steps=20, histogram_every=10, wandb="disabled", runs_dir=str(d))).id,
    ]
    with pytest.raises(FloatingPointError):
        run(RunConfig(precision="16-true", max_steps=40, histogram_every=10, wandb="disabled", runs_dir=str(d)))
    ids.append(next(r.id for r in list_runs(d) if r.precision == "16-true"))
    return d, ids


def test_runs_link_opens_the_run_it_names(app_env, recorded_several, monkeypatch):
    d, ids = recorded_several
    monkeypatch.setenv("AMP_RUNS_DIR", str(d))
    for run_id in ids:
        at = page("pages/3_Runs.py")
        at.query_params["run"] = run_id
        at.run()
        assert not at.exception
        assert at.selectbox(key="run").value == run_id
        assert url_value(at, "run") == run_id


def test_runs_select_puts_the_id_in_the_url(app_env, recorded_several, monkeypatch):
    d, ids = recorded_several
    monkeypatch.setenv("AMP_RUNS_DIR", str(d))
    at = page("pages/3_Runs.py").run()
    assert at.selectbox(key="run").value == ids[-1]  # newest first
    at.selectbox(key="run").select(ids[0]).run()
    assert not at.exception
    assert url_value(at, "run") == ids[0]  # the id, not the select's label
    assert at.selectbox(key="run").value == ids[0]


def test_runs_unknown_link_opens_the_newest_with_a_notice(app_env, recorded_several, monkeypatch):
    d, ids = recorded_several
    monkeypatch.setenv("AMP_RUNS_DIR", str(d))
    at = page("pages/3_Runs.py")
    at.query_params["run"] = "20990101-000000-nothing-000000"
    at.run()
    assert not at.exception
    assert any("not in this runs directory" in w.value for w in at.warning)
    assert at.selectbox(key="run").value == ids[-1]
    assert "run" not in at.query_params


def test_runs_diverged_16_true_says_why_and_shows_no_empty_histogram(app_env, recorded_several, monkeypatch):
    d, ids = recorded_several
    monkeypatch.setenv("AMP_RUNS_DIR", str(d))
    at = page("pages/3_Runs.py")
    at.query_params["run"] = ids[2]
    at.run()
    assert not at.exception
    assert any("16-true is the likely reason" in e.value for e in at.error)
    assert any("Nothing finite to show" in i.value for i in at.info)
    assert not [m for m in at.metric if m.label == "Would underflow fp16 unscaled"]


def test_runs_scaler_expectation_and_short_legends(app_env, recorded_several, monkeypatch, figures):
    d, ids = recorded_several
    monkeypatch.setenv("AMP_RUNS_DIR", str(d))
    at = page("pages/3_Runs.py")
    at.query_params["run"] = ids[0]
    at.run()
    assert any("the scale can grow ×2 after every 5 clean steps" in c.value.lower() for c in at.caption)
    scale_fig = figures(at)[0]
    assert scale_fig.data[0].name == f"16-mixed {ids[0].rsplit('-', 1)[1]} scale"
    assert scale_fig.layout.legend.y > 1  # above the plot, clear of the x-axis title


def test_train_refuses_a_precision_whose_package_is_missing(app_env):
    import importlib.util

    if importlib.util.find_spec("transformer_engine") is not None:
        pytest.skip("transformer_engine is installed here")
    at = page("pages/2_Train.py").run()
    next(s for s in at.selectbox if s.label == "Precision").select("transformer-engine")
    at.run()
    assert not at.exception
    assert [e.value for e in at.error] == [
        "Cannot start this run: precision transformer-engine needs the `transformer_engine` package, which is not installed here: "
        "NVIDIA Transformer Engine (pip install transformer-engine[pytorch]; CUDA GPUs only)."
    ]
    start = next(b for b in at.button if b.label == "Start run")
    assert start.disabled
    assert list_runs(app_env) == []


def test_train_warns_before_a_16_true_run(app_env):
    at = page("pages/2_Train.py").run()
    assert not at.warning
    next(s for s in at.selectbox if s.label == "Precision").select("16-true")
    at.run()
    assert not at.exception
    assert any("commonly diverges" in w.value for w in at.warning)
    assert not next(b for b in at.button if b.label == "Start run").disabled


def test_train_drops_a_bad_run_link(app_env):
    at = page("pages/2_Train.py")
    at.query_params["run"] = "20990101-000000-nothing-000000"
    at.run()
    assert not at.exception
    assert any("does not exist here" in w.value for w in at.warning)
    assert "run" not in at.query_params
    assert any("No run yet" in i.value for i in at.info)


@pytest.mark.parametrize("name, value", [("cuda", "yes"), ("gpu", "0")])
def test_precision_bad_checkbox_link_gets_a_notice(app_env, name, value):
    at = page("pages/1_Precision.py")
    at.query_params[name] = value
    at.run()
    assert not at.exception
    assert any(f"Ignored the link's {name} value" in w.value for w in at.warning)
    assert name not in at.query_params


def test_precision_says_what_the_rule_does_to_bf16(app_env):
    at = page("pages/1_Precision.py").run()
    assert any("a **bf16** request" in c.value for c in at.caption)
    at.selectbox(key="precision").select("bf16-mixed")
    at.selectbox(key="use_amp").select("True")
    at.checkbox(key="cuda").set_value(True)
    at.checkbox(key="gpu").set_value(True)
    at.run()
    assert not at.exception
    assert metric_values(at)[0] == "'16'"
    assert any("turned this bf16 request" in w.value for w in at.warning)
