"""amp_core.serve.precision_table: the Precision page's answers from one child process, kept on disk and in memory."""

import json
import sys
import threading

import pytest

from amp_core.precision import (
    InvalidPrecisionError,
    PrecisionResolution,
    lightning_precision_values,
    resolve_precision,
    truth_table,
)
from amp_core.serve import precision_table
from amp_core.serve.precision_table import PrecisionTableError, cache_key, forget, is_loaded, load_table


def python_that(tmp_path, body: str):
    """A stand-in for sys.executable: a shell script that does `body` (then, if it does not exit, the real Python)."""
    script = tmp_path / "python"
    script.write_text(f'#!/bin/sh\n{body}\nexec {sys.executable} "$@"\n')
    script.chmod(0o755)
    return str(script)


@pytest.fixture(scope="module")
def asked(tmp_path_factory):
    """One table, asked of a child process in an empty folder."""
    forget()
    folder = tmp_path_factory.mktemp("tables")
    assert not is_loaded(folder)
    return folder, load_table(folder)


def test_the_childs_table_is_what_lightning_says_in_this_process(asked):
    _, table = asked
    assert table.values == lightning_precision_values()
    assert list(table.rows) == truth_table()  # every field, warnings and info lines included
    assert table.truth_table(["bf16"]) == truth_table(["bf16"])
    # '16' and 16 are different requests: Lightning's legacy-value warning differs
    assert table.resolve("16", True, True, True) == resolve_precision("16", True, True, True)
    assert table.resolve(16, None, False, False) == resolve_precision(16, None, False, False)
    assert table.resolve(16, None, False, False) != table.resolve("16", None, False, False)
    assert table.resolve("16-mixed", 1, 1, 0) == resolve_precision("16-mixed", 1, 1, 0)  # normalised alike


def test_a_value_lightning_rejects_is_refused_as_resolve_precision_refuses_it(asked):
    _, table = asked
    for bad in ("fp16", 16.5, ["16"]):
        with pytest.raises(InvalidPrecisionError, match="Allowed precision values"):
            table.resolve(bad)


def test_resolutions_survive_json():
    for row in truth_table(["16-mixed", 16, "transformer-engine"]):
        assert PrecisionResolution.from_dict(json.loads(json.dumps(row.as_dict()))) == row


def test_kept_on_disk_under_the_versions_and_read_back_without_a_child(asked, tmp_path, monkeypatch):
    folder, table = asked
    (path,) = folder.glob("*.json")
    assert path.name == f"{cache_key()}.json"
    assert "torch2" in path.name and "pytorch-lightning2" in path.name
    monkeypatch.setattr(sys, "executable", python_that(tmp_path, "echo 'a child was started' >&2; exit 3"))
    forget()
    assert is_loaded(folder) and load_table(folder) == table  # from disk: no child
    elsewhere = tmp_path / "elsewhere"
    assert load_table(elsewhere) == table  # from memory, and written there too
    assert json.loads((elsewhere / path.name).read_text()) == json.loads(path.read_text())


def test_a_failing_child_is_one_line_and_nothing_is_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(
        sys, "executable", python_that(tmp_path, "echo 'Traceback...' >&2; echo 'boom: no Lightning' >&2; exit 3")
    )
    forget()
    with pytest.raises(PrecisionTableError, match="^boom: no Lightning$"):
        load_table(tmp_path / "tables")
    assert not is_loaded(tmp_path / "tables")
    assert not (tmp_path / "tables").exists() or not list((tmp_path / "tables").iterdir())
    monkeypatch.setattr(sys, "executable", python_that(tmp_path, "echo 'not json'; exit 0"))
    with pytest.raises(PrecisionTableError, match="printed no table"):
        load_table(tmp_path / "tables")


def test_sessions_at_once_share_one_child_and_a_damaged_file_is_replaced(tmp_path, monkeypatch):
    starts = tmp_path / "starts"
    monkeypatch.setattr(sys, "executable", python_that(tmp_path, f"echo started >> {starts}"))
    folder = tmp_path / "tables"
    folder.mkdir()
    (folder / f"{cache_key()}.json").write_text('{"values": ["16-mixed"], "rows": [{"half": ')  # a torn write
    forget()
    tables, errors = [], []

    def session():
        try:
            tables.append(load_table(folder))
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=session) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=precision_table.CHILD_TIMEOUT_S + 30)
    assert errors == [] and len(tables) == 6
    assert starts.read_text().splitlines() == ["started"]  # one child for all six
    assert all(t is tables[0] for t in tables)
    assert list(tables[0].rows) == truth_table()
    assert [p.name for p in folder.iterdir()] == [f"{cache_key()}.json"]  # replaced whole, no temporary left
