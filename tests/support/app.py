"""A runs folder for the app under test, and the clean-up that goes with it: Streamlit's cached
resources, the process-wide launchers, and any training process they could not stop in time."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import streamlit as st

from amp_core.serve.launcher import close_launchers
from tests.support.processes import kill_recorded_processes


@contextmanager
def app_runs_dir(runs_dir: Path) -> Iterator[Path]:
    """`runs_dir` made; on the way out, the app's caches and launchers gone and what they started killed."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    try:
        yield runs_dir
    finally:
        st.cache_resource.clear()
        close_launchers(stop_runs=True)
        kill_recorded_processes(runs_dir)  # whatever a closed launcher could not stop in time
