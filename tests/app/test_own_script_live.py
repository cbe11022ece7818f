"""The README's own-script run watched live in the app: the script trains in its own process, and the Runs
page (AppTest, the real page) shows it while it runs, then as completed."""

import os
import subprocess
import sys
import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

from amp_core.record import list_runs, request_stop
from tests.support.readme import readme_script

ROOT = Path(__file__).resolve().parents[2]


def runs_page(runs_dir: Path) -> AppTest:
    at = AppTest.from_file(str(ROOT / "pages/3_Runs.py"), default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_the_readme_script_appears_live_on_the_runs_page(app_env, tmp_path, figures):
    script = tmp_path / "my_script.py"
    script.write_text(readme_script().replace("max_steps=300", "max_steps=3000"))  # long enough to be seen running
    env = {
        **os.environ,
        "AMP_RUNS_DIR": str(app_env),
        "WANDB_MODE": "offline",
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not (list_runs(app_env) and len(list_runs(app_env)[0].metrics) >= 20):
            assert proc.poll() is None, proc.stderr.read()[-2000:]
            time.sleep(0.2)
        (run,) = list_runs(app_env)
        at = runs_page(app_env)
        assert at.selectbox(key="run").value == run.id
        assert any(t.label == "Pause live updates" for t in at.toggle)  # the live view, not a replay
        drawn = max(figures(at)[0].data[0].x)  # the loss-scale line reaches the steps written so far
        assert drawn >= 19
        time.sleep(1.0)
        at.run()  # run_every does not tick in AppTest: the next redraw by hand
        assert not at.exception and max(figures(at)[0].data[0].x) >= drawn
        request_stop(app_env / run.id)  # what the app's Stop does: the script ends its fit at the next step
        assert proc.wait(timeout=120) == 0, proc.stderr.read()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    at = runs_page(app_env)
    (run,) = list_runs(app_env)
    assert run.state == "stopped" and "Pause live updates" not in [t.label for t in at.toggle]
    assert run.config["label"] == "my-script"
