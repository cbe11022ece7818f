"""What the AppTest modules share: a clean runs dir per test, and Plotly figures read back from a page."""

import base64
import json

import numpy as np
import plotly.graph_objects as go
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from amp_core.serve.launcher import close_launchers
from tests.support.interaction import report_lines
from tests.support.processes import kill_recorded_processes


@pytest.fixture
def app_env(runs_dir):
    """A clean runs dir per test; the process-wide launcher and cached resources go with it."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    yield runs_dir
    st.cache_resource.clear()
    close_launchers(stop_runs=True)
    kill_recorded_processes(runs_dir)  # whatever a closed launcher could not stop in time


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
