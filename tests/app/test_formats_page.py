"""The Formats page through Streamlit's AppTest: real torch casts behind every table and the chart."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from amp_core.analysis.formats import formats
from amp_core.serve import formats_service

ROOT = Path(__file__).resolve().parents[2]
NAMES = [f.name for f in formats()]


@pytest.fixture(scope="module", autouse=True)
def no_child_left():
    """The page's child (one for the module's tests) is stopped after them."""
    yield
    formats_service.shutdown()


def page() -> AppTest:
    return AppTest.from_file(str(ROOT / "pages/5_Formats.py"), default_timeout=60)


def verdicts(at: AppTest) -> dict:
    table = at.dataframe[0].value
    return dict(zip(table["format"], table["verdict"]))


def test_defaults(app_env):
    at = page().run()
    assert not at.exception and not at.warning
    assert at.title[0].value == "Number formats"
    props = at.table[0].value
    assert len(props) == len(NAMES) and list(props["format"]) == NAMES
    assert list(props.loc[props["format"] == "fp16", ["largest", "smallest subnormal"]].iloc[0]) == [
        "65504",
        "5.96046e-08",
    ]
    assert verdicts(at) == dict.fromkeys(NAMES, "rounded")  # 0.1 is exact nowhere
    text = " ".join(m.value for m in at.markdown)
    assert "$2^{-24}$" in text and "5.96e-08" in text


def test_value_70000_overflows_fp16(app_env):
    at = page().run()
    at.number_input(key="value").set_value(70000.0).run()
    assert not at.exception
    assert verdicts(at) == {
        "fp32": "exact",
        "tf32": "rounded",
        "fp16": "overflow",
        "bf16": "rounded",
        "fp8 e4m3fn": "overflow",
        "fp8 e5m2": "overflow",
    }
    results = dict(zip(at.dataframe[0].value["format"], at.dataframe[0].value["result"]))
    assert results["fp16"] == math.inf and results["bf16"] == 70144.0


def test_link_restores_the_inputs(app_env, figures):
    at = page()
    at.query_params["value"] = "1e-6"
    at.query_params["gradient"] = "1e-9"
    at.query_params["scale_log2"] = "20"
    at.run()
    assert not at.exception and not at.warning
    assert at.number_input(key="value").value == 1e-6
    assert verdicts(at)["fp16"] == "subnormal"
    gradient, scaled = figures(at)[0].data[len(NAMES) :]
    assert set(gradient.x) == {math.log2(1e-9)} and set(scaled.x) == {math.log2(1e-9 * 2**20)}


def test_hostile_link_is_ignored_with_a_notice(app_env):
    at = page()
    at.query_params["value"] = "<script>alert(1)</script>"
    at.query_params["gradient"] = "nan"
    at.query_params["scale_log2"] = "16.5"
    at.run()
    assert not at.exception
    assert len(at.warning) == 3 and all("Ignored" in w.value for w in at.warning)
    assert at.number_input(key="value").value == 0.1 and at.number_input(key="scale_log2").value == 16
    shown = [m.value for m in at.markdown] + [w.value for w in at.warning] + [c.value for c in at.caption]
    assert not any("<script>" in s for s in shown)
    at.run()  # the link's values are gone: no second notice, no error
    assert not at.exception and not at.warning


def test_number_line_has_a_bar_per_format_and_two_markers(app_env, figures):
    at = page().run()
    fig = figures(at)[0]
    bars, markers = fig.data[: len(NAMES)], fig.data[len(NAMES) :]
    assert [b.type for b in bars] == ["bar"] * len(NAMES) and [b.y[0] for b in bars] == NAMES
    assert [m.type for m in markers] == ["scatter", "scatter"]
    fp16 = next(f for f in formats() if f.name == "fp16")
    np.testing.assert_array_equal(
        np.asarray(bars[2].base, dtype=float), np.log2([fp16.smallest_subnormal, fp16.smallest_normal])
    )
    gradient, scaled = markers  # the defaults: 1e-8, scale 2**16
    assert set(gradient.x) == {math.log2(1e-8)} and set(scaled.x) == {math.log2(1e-8 * 2**16)}
    assert dict(zip(gradient.y, gradient.marker.symbol))["fp16"] == "x"  # underflows
    assert dict(zip(scaled.y, scaled.marker.symbol))["fp16"] == "circle"  # the loss scale rescues it
    assert fig.layout.xaxis.ticktext[0].startswith("2<sup>")


@pytest.mark.parametrize("junk", ["1e400", "inf", "-1e999", "nan", "127", "x"])
def test_out_of_range_scale_link_is_a_notice_not_a_crash(app_env, junk):
    """Found by the random-interaction test: `?scale_log2=1e400` raised OverflowError inside Streamlit's bound int widget."""
    at = page()
    at.query_params["scale_log2"] = junk
    at.run()
    assert not at.exception
    assert [w.value for w in at.warning] == ["Ignored the link's `scale_log2`: it is not a number this page accepts."]
    assert at.number_input(key="scale_log2").value == 16


def test_scale_change_goes_into_the_link(app_env):
    at = page()
    at.run()
    at.number_input(key="scale_log2").set_value(20).run()
    assert not at.exception and at.query_params["scale_log2"] in ("20", ["20"])
    at.number_input(key="scale_log2").set_value(16).run()
    assert "scale_log2" not in at.query_params


def test_a_child_that_cannot_measure_is_one_line_error_on_the_page(app_env, monkeypatch):
    failing = formats_service.FormatsService(
        command=(sys.executable, "-c", "raise SystemExit('ImportError: no torch in this child')")
    )
    monkeypatch.setattr(formats_service, "_SERVICE", failing)
    try:
        at = page().run()
    finally:
        failing.close()
    assert not at.exception
    assert [e.value for e in at.error] == [
        "The formats could not be measured: torch's child process exited (code 1): "
        "ImportError: no torch in this child. Reload the page to try again."
    ]
    assert not at.table and not at.dataframe  # the page stopped at the error


# In a fresh interpreter, as the server is: render, change the value, report what was loaded.
FRESH_RENDER = """
import json, sys
from streamlit.testing.v1 import AppTest
at = AppTest.from_file(sys.argv[1], default_timeout=300).run()
first = [e.value for e in at.exception]
at.number_input(key="value").set_value(70000.0).run()
table = at.dataframe[0].value
from amp_core.serve import formats_service
child = formats_service.service().pid
formats_service.shutdown()
print("REPORT " + json.dumps({
    "exceptions": first + [e.value for e in at.exception],
    "errors": [e.value for e in at.error],
    "torch": sorted(m for m in sys.modules if m == "torch" or m.startswith("torch.")),
    "fp16": dict(zip(table["format"], table["verdict"]))["fp16"],
    "child": child,
}))
"""


def test_the_page_in_a_fresh_server_loads_no_torch(app_env):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", "AMP_RUNS_DIR": str(app_env)}
    out = subprocess.run(
        [sys.executable, "-c", FRESH_RENDER, str(ROOT / "pages/5_Formats.py")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )
    lines = [line for line in out.stdout.splitlines() if line.startswith("REPORT ")]
    assert out.returncode == 0 and lines, out.stderr[-3000:]
    report = json.loads(lines[-1].removeprefix("REPORT "))
    assert report["exceptions"] == [] and report["errors"] == []
    assert report["torch"] == []
    assert report["fp16"] == "overflow"  # torch did measure it: in the child
    assert isinstance(report["child"], int) and not Path(f"/proc/{report['child']}").exists()
