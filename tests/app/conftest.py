"""What the AppTest modules share: a clean runs dir per test, and Plotly figures read back from a page."""

import base64
import json

import numpy as np
import plotly.graph_objects as go
import pytest
from streamlit.testing.v1 import AppTest

from tests.support.app import app_runs_dir
from tests.support.interaction import report_lines


@pytest.fixture
def app_env(runs_dir):
    """A clean runs dir per test; the process-wide launcher and cached resources go with it."""
    with app_runs_dir(runs_dir) as d:
        yield d


def pytest_terminal_summary(terminalreporter):
    """How many random interaction sequences ran, per page (tests/app/test_random_interaction.py)."""
    lines = report_lines()
    if lines:
        terminalreporter.section("random interaction")
        for line in lines:
            terminalreporter.write_line(line)


def _decode(value):
    """Plotly sends NumPy arrays as base64 typed arrays ({'dtype', 'bdata'}): turn them back."""
    if isinstance(value, dict):
        if "bdata" in value and "dtype" in value:
            return np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


@pytest.fixture
def figures():
    """figures(at): the page's Plotly charts (AppTest returns them as UnknownElement) as Figures."""

    def read(at: AppTest) -> list[go.Figure]:
        return [go.Figure(_decode(json.loads(el.proto.spec))) for el in at.get("plotly_chart")]

    return read
