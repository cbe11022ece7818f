"""The Precision page's answers, asked of Lightning once, in a child process, and kept.

The server must not import torch or Lightning (every page has to stay fast, and a worker is where they live), yet
the Precision page shows what Lightning itself decides. The decisions depend only on the inputs and the installed
torch and Lightning, so one child process computes all of them (every value Lightning accepts × use_amp ×
cuda_available × use_gpu, and Lightning's list of precision strings) and prints JSON:

    python -m amp_core.precision --table --json --with-values

The table is kept on disk under the runs folder (``.precision_tables/``, keyed by the torch and pytorch-lightning
versions read from package metadata, and by the source of amp_core/precision.py, whose rule the rows contain) and in
memory, so only the first render after an upgrade waits for the child. Sessions are threads: one lock makes them
share that one child instead of each starting its own.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from amp_core.precision import InvalidPrecisionError, PrecisionResolution

__all__ = ["PrecisionTable", "PrecisionTableError", "cache_key", "forget", "is_loaded", "load_table"]

CHILD_TIMEOUT_S = 300.0  # the whole table took about 22 s on a loaded 2-core machine
CACHE_FOLDER = ".precision_tables"
_PRECISION_SOURCE = Path(__file__).resolve().parents[1] / "precision.py"
_REPO_ROOT = Path(__file__).resolve().parents[2]

_LOCK = threading.Lock()
_TABLES: dict[str, PrecisionTable] = {}  # by cache_key()


class PrecisionTableError(RuntimeError):
    """The child process could not produce the table; the message is one line for the page."""


def _key(requested, use_amp, cuda_available, use_gpu) -> tuple:
    # typed: '16' and 16 are different requests (Lightning warns differently about them)
    return (type(requested).__name__, requested, use_amp, cuda_available, use_gpu)


@dataclasses.dataclass(frozen=True)
class PrecisionTable:
    """Every resolution, read back from the child's JSON; answers what amp_core.precision's functions answer."""

    values: tuple[str, ...]  # lightning_precision_values(): Lightning's strings, aliases included
    rows: tuple[PrecisionResolution, ...]  # truth_table()'s rows, in its order
    _index: dict = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(
            self, "_index", {_key(r.requested, r.use_amp, r.cuda_available, r.use_gpu): r for r in self.rows}
        )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PrecisionTable:
        return cls(tuple(data["values"]), tuple(PrecisionResolution.from_dict(row) for row in data["rows"]))

    def to_json(self) -> str:
        return json.dumps({"values": self.values, "rows": [r.as_dict() for r in self.rows]}, indent=1)

    def resolve(self, requested, use_amp=None, cuda_available=False, use_gpu=False) -> PrecisionResolution:
        """resolve_precision's answer for these inputs (normalised the way it normalises them)."""
        use_amp = None if use_amp is None else bool(use_amp)
        try:
            return self._index[_key(requested, use_amp, bool(cuda_available), bool(use_gpu))]
        except (KeyError, TypeError):
            raise InvalidPrecisionError(
                f"Precision {requested!r} is invalid. Allowed precision values: {self.values}"
            ) from None

    def truth_table(self, requested_values=None) -> list[PrecisionResolution]:
        """truth_table()'s rows: all of them, or those of the given requested values (in the table's order)."""
        if requested_values is None:
            return list(self.rows)
        wanted = {(type(v).__name__, v) for v in requested_values}
        return [r for r in self.rows if (type(r.requested).__name__, r.requested) in wanted]


def cache_key() -> str:
    """What the table depends on, read without importing torch or Lightning."""
    versions = "-".join(f"{name}{importlib.metadata.version(name)}" for name in ("torch", "pytorch-lightning"))
    source = hashlib.sha256(_PRECISION_SOURCE.read_bytes()).hexdigest()[:10]
    return f"{versions}-{source}".replace("+", "_")


def _read(path: Path) -> PrecisionTable | None:
    try:
        return PrecisionTable.from_json(json.loads(path.read_text()))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a damaged file is asked again, and replaced


def _write(path: Path, text: str) -> None:
    """Atomically: a reader (another server process, too) sees the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the folder's other files are not
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _from_child(timeout: float) -> tuple[PrecisionTable, str]:
    cmd = [sys.executable, "-m", "amp_core.precision", "--table", "--json", "--with-values"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=_REPO_ROOT)
    except subprocess.TimeoutExpired:
        raise PrecisionTableError(f"Lightning's child process did not answer within {timeout:.0f} s") from None
    except OSError as e:
        raise PrecisionTableError(f"Lightning's child process could not start: {e}") from None
    if out.returncode != 0:
        lines = (out.stderr or "").strip().splitlines()
        raise PrecisionTableError(
            lines[-1] if lines else f"Lightning's child process exited with code {out.returncode}"
        )
    try:
        return PrecisionTable.from_json(json.loads(out.stdout)), out.stdout
    except (ValueError, KeyError, TypeError) as e:
        raise PrecisionTableError(f"Lightning's child process printed no table ({type(e).__name__}: {e})") from None


def is_loaded(cache_dir: str | os.PathLike) -> bool:
    """True when load_table answers at once (from memory or disk), so a page can say when it will wait."""
    key = cache_key()
    return key in _TABLES or (Path(cache_dir) / f"{key}.json").is_file()


def load_table(cache_dir: str | os.PathLike, timeout: float = CHILD_TIMEOUT_S) -> PrecisionTable:
    """The table for the installed torch and Lightning: from memory, else from `cache_dir`, else from one child
    process. Whatever answered, `cache_dir` holds it afterwards. Raises PrecisionTableError (nothing kept) when the
    child fails."""
    key = cache_key()
    path = Path(cache_dir) / f"{key}.json"
    with _LOCK:  # held while the child runs: sessions arriving meanwhile wait for its answer
        # memory first, whatever the folder: the key names everything the table depends on
        table, text = _TABLES.get(key), None
        if table is None:
            table = _read(path)
        if table is None:
            table, text = _from_child(timeout)
        if text is not None or not path.is_file():
            _write(path, text if text is not None else table.to_json())
        _TABLES[key] = table
        return table


def forget() -> None:
    """Drop the tables kept in memory (the files stay): the next load_table reads its folder or asks a child."""
    with _LOCK:
        _TABLES.clear()
