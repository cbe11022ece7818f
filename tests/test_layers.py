"""The layers hold: what the Streamlit server imports never pulls in torch, Lightning or W&B, and the run record
(amp_core/record/) stands on nothing above it.

Each page is rendered by Streamlit's AppTest in a fresh interpreter (sys.modules there is the server's), with a
temporary runs folder; then every amp_core module that page loaded is imported alone in another fresh interpreter,
so a module that pulls torch in is named even when an earlier import had already loaded it.
"""

import ast
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "pytorch_lightning", "lightning_fabric", "lightning", "wandb")
PAGES = ["app.py", *(f"pages/{p.name}" for p in sorted((ROOT / "pages").glob("*.py")))]
# Known exceptions, each a strict xfail: the day one stops, these tests say so and its entry goes. (The Formats
# page left this list when amp_core.serve.formats_service moved its torch into a child process.)
TORCH_IN_SERVER: dict[str, str] = {}
RENDER_TIMEOUT_S = 600  # a page that takes a child's answer (Precision, Inside the step) waits for it; shared machine

# Runs in a fresh interpreter: render one page, report what it loaded, then close the launcher as app_env does.
RENDER = """
import json, sys
from streamlit.testing.v1 import AppTest
script, runs_dir, heavy = sys.argv[1], sys.argv[2], tuple(sys.argv[3].split(","))
at = AppTest.from_file(script, default_timeout={timeout}).run()
loaded = sorted(sys.modules)
report = {{
    "exceptions": [f"{{e.proto.type}}: {{e.proto.message}}" for e in at.exception],
    "heavy": sorted({{m.split(".")[0] for m in loaded}} & set(heavy)),
    "amp_core": [m for m in loaded if m == "amp_core" or m.startswith("amp_core.")],
}}
import streamlit as st
from amp_core.serve.launcher import close_launchers
from tests.support.processes import kill_recorded_processes
st.cache_resource.clear()
close_launchers(stop_runs=True)
kill_recorded_processes(runs_dir)
print("REPORT " + json.dumps(report))
"""


def fresh_python(args: list[str], env_extra: dict[str, str] | None = None, timeout: float = 120):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "WANDB_MODE": "offline", **(env_extra or {})}
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """rendered(script) -> what rendering it loaded; each page once, in its own interpreter, one runs folder for
    all (so the Precision table a child computes for one page is read from disk by the next)."""
    runs = tmp_path_factory.mktemp("layers") / "runs"
    runs.mkdir()
    reports: dict[str, dict] = {}

    def render(script: str) -> dict:
        if script not in reports:
            out = fresh_python(
                ["-c", RENDER.format(timeout=RENDER_TIMEOUT_S), str(ROOT / script), str(runs), ",".join(HEAVY)],
                {"AMP_RUNS_DIR": str(runs)},
                timeout=RENDER_TIMEOUT_S + 60,
            )
            lines = [line for line in out.stdout.splitlines() if line.startswith("REPORT ")]
            assert out.returncode == 0 and lines, f"{script} did not render:\n{out.stderr[-3000:]}"
            reports[script] = json.loads(lines[-1].removeprefix("REPORT "))
        return reports[script]

    return render


@pytest.fixture(scope="module")
def imports_alone():
    """imports_alone(modules) -> {module: heavy packages importing it alone pulled in}, each module once."""
    seen: dict[str, list[str]] = {}
    probe = (
        "import importlib, sys; importlib.import_module(sys.argv[1]);"
        "print(sorted({m.split('.')[0] for m in sys.modules}))"
    )

    def one(module: str) -> list[str]:
        out = fresh_python(["-c", probe, module])
        assert out.returncode == 0, f"importing {module} alone failed:\n{out.stderr[-2000:]}"
        return sorted(set(ast.literal_eval(out.stdout.strip().splitlines()[-1])) & set(HEAVY))

    def check(modules: list[str]) -> dict[str, list[str]]:
        todo = [m for m in modules if m not in seen]
        with ThreadPoolExecutor(max_workers=2) as pool:  # the machine has two cores
            seen.update(zip(todo, pool.map(one, todo)))
        return {m: seen[m] for m in modules}

    return check


def known(script: str):
    reason = TORCH_IN_SERVER.get(script)
    return pytest.param(script, marks=pytest.mark.xfail(strict=True, reason=reason)) if reason else script


@pytest.mark.parametrize("script", [known(s) for s in PAGES])
def test_page_renders_without_torch_lightning_or_wandb(rendered, script):
    report = rendered(script)
    assert report["exceptions"] == [], f"{script} shows an exception"
    assert "amp_core" in report["amp_core"], f"{script} loaded no amp_core at all: the check would be empty"
    assert report["heavy"] == [], f"rendering {script} imported {report['heavy']} in the server"


@pytest.mark.parametrize("script", [known(s) for s in PAGES])
def test_every_amp_core_module_a_page_loads_is_light_alone(rendered, imports_alone, script):
    modules = rendered(script)["amp_core"]
    heavy = {m: pulled for m, pulled in imports_alone(modules).items() if pulled}
    assert heavy == {}, f"these modules, which {script} loads in the server, pull in heavy packages: {heavy}"


# -- the record layer, read statically ------------------------------------------------------------------------------

RECORD = ROOT / "amp_core" / "record"
ABOVE_THE_RECORD = ("amp_core.training", "amp_core.inside", "amp_core.serve", "amp_core.analysis")


def top_level_imports(source: str, package: str) -> list[str]:
    """Every module the import statements that run at import time name (relative ones resolved against `package`):
    the module's body, with its if/try blocks and class bodies, not its functions (a function's lazy import, such
    as publishing a recording with torch, runs only where that function is called)."""
    names = []
    pending = list(ast.parse(source).body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            module = ".".join(part for part in (base, node.module or "") if part)
            # `from amp_core import training` names the subpackage, not a name inside amp_core
            names += [module] + [f"{module}.{alias.name}" for alias in node.names]
        pending += list(ast.iter_child_nodes(node))
    return sorted(names)


def forbidden(name: str) -> bool:
    return name.split(".")[0] in HEAVY or any(name == f or name.startswith(f + ".") for f in ABOVE_THE_RECORD)


def test_the_import_reader_sees_what_the_record_must_not_import():
    source = (
        "import os\nimport torch.nn as nn\nfrom ..training import cli\nfrom amp_core import serve\n"
        "def later():\n    from lightning_fabric.utilities import rank_zero\n"
        "from .files import now_iso\nfrom amp_core.charts import x\n"
        "try:\n    import wandb\nexcept ImportError:\n    pass\n"
        "class Later:\n    import pytorch_lightning as pl\n    def method(self):\n        import lightning\n"
    )
    names = top_level_imports(source, "amp_core.record")
    assert {"amp_core.training.cli", "amp_core.serve", "amp_core.record.files.now_iso"} <= set(names)
    flagged = sorted({n for n in names if forbidden(n)})
    assert flagged == [
        "amp_core.serve",
        "amp_core.training",
        "amp_core.training.cli",
        "pytorch_lightning",
        "torch.nn",
        "wandb",
    ]


@pytest.mark.parametrize("path", sorted(RECORD.glob("*.py")), ids=lambda p: p.name)
def test_the_record_imports_nothing_above_it(path):
    names = top_level_imports(path.read_text(), "amp_core.record")  # __init__.py's package is the same
    assert [n for n in names if forbidden(n)] == []


@pytest.mark.parametrize("path", sorted(RECORD.glob("*.py")), ids=lambda p: p.name)
def test_the_record_stands_on_the_standard_library_and_numpy(path):
    names = top_level_imports(path.read_text(), "amp_core.record")
    roots = {n for n in names if n.split(".")[0] not in sys.stdlib_module_names | {"numpy", "__future__"}}
    assert {n for n in roots if not (n == "amp_core.record" or n.startswith("amp_core.record."))} == set()
