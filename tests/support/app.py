"""A runs folder for the app under test, and the clean-up that goes with it: Streamlit's cached
resources, the process-wide launchers, and any training process they could not stop in time."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import streamlit as st

from amp_core.serve import worker
from tests.support.processes import kill_recorded_processes


def existing_launcher(runs_dir: Path) -> worker.Launcher | None:
    """The launcher the app made for `runs_dir`, or None if it made none (get_launcher would make one)."""
    return worker._launchers.get(Path(runs_dir).resolve())


def close_launchers() -> None:
    """Close every launcher this process made (stopping their runs) and forget them, so that the next
    test gets a fresh one for its own runs folder."""
    # serve.worker keeps one launcher per runs folder for the server's life and has no public way to
    # list or drop them: this module is the one place the tests reach into it.
    for key, launcher in list(worker._launchers.items()):
        launcher.close(stop_runs=True)
        worker._launchers.pop(key, None)


@contextmanager
def app_runs_dir(runs_dir: Path) -> Iterator[Path]:
    """`runs_dir` made; on the way out, the app's caches and launchers gone and what they started killed."""
    runs_dir.mkdir(parents=True, exist_ok=True)
    try:
        yield runs_dir
    finally:
        st.cache_resource.clear()
        close_launchers()
        kill_recorded_processes(runs_dir)  # whatever a closed launcher could not stop in time
