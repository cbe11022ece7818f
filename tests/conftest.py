import os

# Tests never touch the network: W&B stays offline, and runs go to a temporary folder.
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_DISABLE_GIT", "true")

import pytest  # noqa: E402


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    d = tmp_path / "runs"
    monkeypatch.setenv("AMP_RUNS_DIR", str(d))
    monkeypatch.setenv(
        "AMP_RECORDINGS_DIR", str(tmp_path / "demo_runs")
    )  # pages list no shipped recordings unless a test makes some
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    return d
