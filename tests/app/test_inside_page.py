"""The Inside-the-step page through AppTest: the map arrives from a child process and is kept on disk."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from amp_core.inside.autocast_map import NEAR_OVERFLOW_LOG2, module_table, summarize

ROOT = Path(__file__).resolve().parents[2]
PAGE = str(ROOT / "pages/6_Inside_the_step.py")
TIMEOUT = 300


@pytest.fixture(scope="module")
def kept_maps(tmp_path_factory):
    """A runs dir whose page visit took the fp16 map in a child process (once for the module)."""
    return tmp_path_factory.mktemp("inside-runs")


@pytest.fixture
def page(app_env, kept_maps, monkeypatch):
    monkeypatch.setenv("AMP_RUNS_DIR", str(kept_maps))
    return AppTest.from_file(PAGE, default_timeout=TIMEOUT)


def kept(kept_maps, precision):
    (path,) = (kept_maps / ".autocast_maps").glob(f"mlp-{precision}-cpu-*.json")
    return json.loads(path.read_text())


def test_the_page_shows_the_map_the_child_process_took(page, kept_maps):
    at = page.run()
    assert not at.exception and not at.error
    m = kept(kept_maps, "16-mixed")  # written by the child process the page started
    s = summarize(m)
    metrics = {x.label: x.value for x in at.metric}
    assert metrics["FLOPs in 16 bits"] == f"{s['share_flops_16bit']:.1%}"
    assert metrics["Forward ops"] == str(s["ops"]["forward"]) and metrics["Backward ops"] == str(s["ops"]["backward"])
    assert any("Taken on **cpu**" in i.value for i in at.info)
    table = at.dataframe[0].value
    expected = [r for r in module_table(m) if r["phase"] in ("forward", "backward")]
    assert len(table) == len(expected)
    room = table["16-bit headroom (log2)"]
    assert list(table["near overflow"]) == [bool(x == x and x < NEAR_OVERFLOW_LOG2) for x in room]
    underflow = at.dataframe[1].value
    assert list(underflow["measured"]) == ["at loss scale 1 (no scaling)", "at the run's loss scale"]
    assert at.get("plotly_chart")


def test_filters_narrow_the_module_table(page):
    at = page.run()
    at.text_input(key="module_filter").set_value("net.2")
    at.multiselect(key="phases").set_value(["backward"])
    at.run()
    table = at.dataframe[0].value
    assert len(table) and set(table["module"]) == {"net.2"} and set(table["phase"]) == {"backward"}
    at.text_input(key="module_filter").set_value("no such module")
    at.run()
    assert not at.exception and len(at.dataframe[0].value) == 0


def test_each_precision_gets_its_own_map(page, kept_maps):
    at = page.run()
    at.selectbox(key="precision").select("bf16-mixed")
    at.run()
    assert not at.exception and not at.error
    m = kept(kept_maps, "bf16-mixed")
    assert m["autocast_dtype"] == "bfloat16"
    assert list(at.dataframe[1].value["dtype"]) == ["bfloat16"]  # no loss scale: measured once
    assert len(list((kept_maps / ".autocast_maps").glob("mlp-*-cpu-*.json"))) == 2


def test_the_server_does_not_import_torch(kept_maps):
    code = (
        "import sys; from streamlit.testing.v1 import AppTest;"
        f"at = AppTest.from_file({PAGE!r}, default_timeout={TIMEOUT}).run();"
        "assert not at.exception, at.exception; assert not at.error, at.error;"
        "print('pytorch_lightning' in sys.modules, 'torch' in sys.modules)"
    )
    env = {**__import__("os").environ, "AMP_RUNS_DIR": str(kept_maps)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=TIMEOUT, env=env
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["False", "False"]


def test_a_model_too_large_to_map_gets_a_warning_and_no_child_process(page, kept_maps):
    at = page.run()
    before = set((kept_maps / ".autocast_maps").glob("*.json"))
    next(n for n in at.number_input if n.label == "Hidden width").set_value(65536).run()
    assert not at.exception
    assert any("No map for this" in w.value and "choose a smaller model" in w.value for w in at.warning)
    assert set((kept_maps / ".autocast_maps").glob("*.json")) == before
