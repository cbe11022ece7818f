"""The workload select on the Train and Compare pages (AppTest), with real runs in the worker:
gpt, and the model file in tests/user_models (not a built-in one)."""

from pathlib import Path

import pytest
from streamlit import config as st_config
from streamlit.testing.v1 import AppTest

from amp_core.record import list_runs
from tests.support.processes import wait_final

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "tests" / "user_models"
TIMEOUT = 120


def page(name: str) -> AppTest:
    return AppTest.from_file(str(ROOT / name), default_timeout=TIMEOUT)


def widget(items, label):
    return next(w for w in items if w.label == label)


def start_train(at: AppTest, steps: int = 10) -> None:
    widget(at.number_input, "Steps").set_value(steps)
    widget(at.radio, "W&B").set_value("disabled")
    widget(at.button, "Start run").click()
    at.run()
    assert not at.exception


def test_train_page_runs_the_gpt_workload(app_env):
    at = page("pages/2_Train.py").run()
    at.selectbox(key="train_workload").select("gpt").run()
    assert not at.exception
    labels = {n.label for n in at.number_input}
    assert {"Layers", "Heads", "Width", "Context length"} <= labels and "Hidden width" not in labels
    assert widget(at.number_input, "Batch size").value == 16  # the workload's own default
    widget(at.number_input, "Width").set_value(32)
    widget(at.number_input, "Context length").set_value(16)
    start_train(at)
    (r,) = list_runs(app_env)
    r = wait_final(r.path)
    assert r.state == "completed", r.status
    assert r.config["workload"] == "gpt" and r.config["workload_settings"] == {
        "layers": 2,
        "heads": 4,
        "width": 32,
        "context": 16,
    }
    assert r.config["corpus"]["sha256"] and len(r.metrics) == 10


def test_train_page_runs_your_own_model_and_shows_a_bad_one_as_a_failed_run(app_env):
    at = page("pages/2_Train.py").run()
    at.selectbox(key="train_workload").select("user").run()
    model = widget(at.text_input, "Model (pkg.module:attr)")
    assert not model.disabled  # served on 127.0.0.1 (.streamlit/config.toml)
    model.input("tiny_net:TinyRegressor")
    widget(at.text_input, "Folder put on sys.path (optional)").input(str(MODELS))
    start_train(at)
    (r,) = list_runs(app_env)
    r = wait_final(r.path)
    assert r.state == "completed", r.status
    assert r.config["model_class"] == "tiny_net.TinyRegressor" and len(r.metrics) == 10

    widget(at.text_input, "Model (pkg.module:attr)").input("tiny_net:ManualRegressor")
    start_train(at)
    bad = wait_final(next(x for x in list_runs(app_env) if x.id != r.id).path)
    assert (
        bad.state == "failed"
        and "manual optimization" in bad.status["error"]
        and len(bad.status["error"].splitlines()) == 1
    )


@pytest.mark.parametrize("address, allowed_by_env", [("0.0.0.0", ""), ("0.0.0.0", "1")])
def test_your_own_model_is_off_on_a_network_address_unless_allowed(app_env, monkeypatch, address, allowed_by_env):
    before = st_config.get_option("server.address")
    monkeypatch.setenv("AMP_ALLOW_USER_MODELS", allowed_by_env)
    st_config.set_option("server.address", address)
    try:
        at = page("pages/2_Train.py").run()
        at.selectbox(key="train_workload").select("user").run()
    finally:
        st_config.set_option("server.address", before)
    assert not at.exception
    assert widget(at.text_input, "Model (pkg.module:attr)").disabled is (allowed_by_env != "1")
    assert any("AMP_ALLOW_USER_MODELS=1" in c.value for c in at.caption)


def test_compare_page_runs_your_own_model(app_env):
    at = page("pages/4_Compare.py").run()
    at.selectbox(key="compare_workload").select("user").run()
    at.multiselect[0].set_value(["32-true", "bf16-mixed"])
    widget(at.number_input, "Steps").set_value(17)
    widget(at.text_input, "Model (pkg.module:attr)").input("tiny_net:TinyRegressor")
    widget(at.text_input, "Folder put on sys.path (optional)").input(str(MODELS))
    widget(at.button, "Run comparison").click()
    at.run()
    assert not at.exception
    runs = list_runs(app_env)
    assert sorted(r.config["precision"] for r in runs) == ["32-true", "bf16-mixed"]
    for r in runs:
        r = wait_final(r.path)
        assert (
            r.state == "completed"
            and r.config["workload"] == "user"
            and r.config["model_class"] == "tiny_net.TinyRegressor"
        )
