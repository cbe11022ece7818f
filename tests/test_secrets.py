"""Hardening: secrets stay secret, nothing a user supplies is unpickled, the server is locked down.

- A W&B API key in the environment is never written into a run record, W&B's own offline files and
  logs, the worker logs, or any page the app renders.
- No pickle (or torch.load, joblib.load, np.load with allow_pickle, yaml.load, ...) in the app or the
  engine; run records are JSON only.
- .streamlit/config.toml: 127.0.0.1 only, XSRF protection on, usage stats off, file watcher off.
"""

from __future__ import annotations

import base64
import json
import os
import re
import tomllib
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from amp_core.record import list_runs
from tests.support.app import app_runs_dir
from tests.support.cli import run_cli
from tests.support.processes import wait_final

REPO = Path(__file__).resolve().parents[1]
FAKE_KEY = "0123456789abcdef0123456789abcdef01234567"  # the shape of a W&B API key (40 hex digits); fake
LEAKS = [FAKE_KEY.encode(), base64.b64encode(FAKE_KEY.encode()), FAKE_KEY.encode("utf-16-le")]
TIMEOUT = 240


def files_holding_the_key(*roots: Path) -> list[str]:
    hits = []
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_file() and not p.is_symlink():
                data = p.read_bytes()
                if any(leak in data for leak in LEAKS):
                    hits.append(str(p))
    return hits


def check_json_only(run_dir: Path) -> list[str]:
    """Every file of a run record outside wandb/ is JSON (.json) or JSON lines (.jsonl); returns their names."""
    names = []
    for p in sorted(run_dir.rglob("*")):
        rel = p.relative_to(run_dir)
        if rel.parts[0] == "wandb" or p.is_dir():
            continue
        text = p.read_text(encoding="utf-8")
        if p.suffix == ".json":
            json.loads(text)
        elif p.suffix == ".jsonl":
            assert text == "" or text.endswith("\n"), rel
            for line in text.splitlines():
                json.loads(line)
        else:
            pytest.fail(f"{rel} in a run record is neither JSON nor JSON lines")
        names.append(str(rel))
    return names


# ---------------------------------------------------------------- the API key, from the CLI


def test_api_key_is_never_written_by_a_cli_run(tmp_path):
    home, wandb_dir, runs = tmp_path / "home", tmp_path / "wandb-dir", tmp_path / "runs"
    home.mkdir(), wandb_dir.mkdir()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "WANDB_API_KEY": FAKE_KEY,
        "WANDB_MODE": "offline",
        "HOME": str(home),
        "WANDB_DIR": str(wandb_dir),
        "AMP_RUNS_DIR": str(runs),
        "OMP_NUM_THREADS": "1",
        "WANDB_BASE_URL": "http://127.0.0.1:9",  # should anything try the network, it reaches nothing
    }
    out = run_cli(
        "amp_core.train", "--wandb offline --max-steps 20 --hidden 32 --batch-size 16".split(), env, text=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (record,) = list_runs(runs)
    assert record.state == "completed" and len(record.metrics) == 20
    offline = list((record.path / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and any(offline[0].glob("*.wandb")), (
        "W&B did not write its offline run: nothing was checked"
    )
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) >= 8, written
    assert files_holding_the_key(tmp_path) == []  # the run folder, W&B's files in it, W&B's logs under HOME
    assert not any(leak in out.stdout + out.stderr for leak in LEAKS)
    assert set(check_json_only(record.path)) >= {"config.json", "status.json", "metrics.jsonl"}
    assert FAKE_KEY not in json.dumps(record.config) + json.dumps(record.status)


# ---------------------------------------------------------------- the API key, through the app


@pytest.fixture
def app_env(runs_dir, tmp_path, monkeypatch):
    """The key in the server's environment (workers inherit it); HOME, so W&B's logs land where we look."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    with app_runs_dir(runs_dir) as d:
        yield d


def _walk(node):
    yield node
    for child in getattr(node, "children", {}).values():
        yield from _walk(child)


def rendered_text(at: AppTest) -> str:
    """Everything a page sent to the browser: every element's message (markdown, JSON, tables, charts, widgets)."""
    parts = [str(node.proto) for node in _walk(at._tree) if getattr(node, "proto", None) is not None]
    parts += [str(e.value) for e in at.exception]
    return "\n".join(parts)


def page_files() -> list[str]:
    return ["app.py", *sorted(str(p.relative_to(REPO)) for p in (REPO / "pages").glob("*.py"))]


def test_api_key_is_never_shown_or_written_by_the_app(app_env, tmp_path):
    at = AppTest.from_file(str(REPO / "pages/2_Train.py"), default_timeout=TIMEOUT).run()
    assert not at.exception
    next(n for n in at.number_input if n.label == "Steps").set_value(25)
    assert next(r for r in at.radio if r.label == "W&B").value == "offline"
    next(b for b in at.button if b.label == "Start run").click()
    at.run()
    assert not at.exception
    (run,) = list_runs(app_env)
    run = wait_final(run.path, TIMEOUT)
    assert run.state == "completed" and len(run.metrics) == 25
    assert any((run.path / "wandb").glob("offline-run-*/*.wandb")), (
        "W&B did not write its offline run: nothing was checked"
    )
    at.run()
    texts = {"pages/2_Train.py (with the run)": rendered_text(at)}

    for name in page_files():
        page = AppTest.from_file(str(REPO / name), default_timeout=TIMEOUT)
        if name.endswith("3_Runs.py"):
            page.query_params["run"] = run.id
        page.run()
        assert not page.exception, (name, [e.value for e in page.exception])
        texts[name] = rendered_text(page)
    assert run.id in texts[next(n for n in texts if n.endswith("3_Runs.py"))]  # the Runs page did show the run's record
    assert all(len(t) > 200 for t in texts.values()), {k: len(t) for k, t in texts.items()}
    leaked = [name for name, text in texts.items() if FAKE_KEY in text or LEAKS[1].decode() in text]
    assert leaked == []

    # what the launcher's worker wrote: the run folder (W&B's files in it), the worker logs, W&B's logs under HOME
    assert any((app_env / ".workers").glob("*.log"))
    assert files_holding_the_key(app_env, tmp_path / "home") == []
    check_json_only(run.path)


# ---------------------------------------------------------------- nothing is unpickled

FORBIDDEN = {
    "pickle and friends": re.compile(r"\b(c?[Pp]ickle|cloudpickle|dill|shelve|marshal)\b"),
    "torch.load": re.compile(r"\btorch\s*\.\s*load\b|\bfrom\s+torch\s+import\s+[^\n]*\bload\b|torch\.hub\.load"),
    "joblib.load": re.compile(r"\bjoblib\b"),
    "np.load with allow_pickle": re.compile(r"\ballow_pickle\b"),
    "yaml.load": re.compile(r"\byaml\s*\.\s*(load|load_all|unsafe_load|full_load)\s*\(|\bUnsafeLoader\b"),
    "pandas.read_pickle": re.compile(r"\bread_pickle\b"),
}


def forbidden_uses(source: str) -> list[str]:
    return [
        f"line {source.count(chr(10), 0, m.start()) + 1}: {what}: {m.group(0)!r}"
        for what, rx in FORBIDDEN.items()
        for m in rx.finditer(source)
    ]


def test_the_scanner_finds_what_it_looks_for():
    bad = "import pickle\nx = torch.load(f)\nimport joblib\nnp.load(f, allow_pickle=True)\nyaml.load(s)\nimport cloudpickle\npd.read_pickle(p)\n"
    found = forbidden_uses(bad)
    assert len(found) >= 7, found
    assert forbidden_uses("json.loads(s)\nyaml.safe_load(s)\nnp.load(f)\ntorch.save(x, f)\n") == []


def test_no_pickle_or_torch_load_anywhere_in_the_app_or_engine():
    files = [
        *sorted((REPO / "amp_core").rglob("*.py")),
        *sorted((REPO / "pages").glob("*.py")),
        REPO / "app.py",
        REPO / "ui_common.py",
    ]
    assert len(files) >= 10
    found = {str(f.relative_to(REPO)): hits for f in files if (hits := forbidden_uses(f.read_text(encoding="utf-8")))}
    assert found == {}


# ---------------------------------------------------------------- the server's settings


def test_streamlit_config_is_locked_down():
    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "127.0.0.1"
    assert config["server"]["enableXsrfProtection"] is True
    assert config["server"]["fileWatcherType"] == "none"
    assert config["browser"]["gatherUsageStats"] is False
    assert config["server"].get("enableCORS", True) is True  # not switched off either
