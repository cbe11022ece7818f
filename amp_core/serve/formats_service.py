"""The Formats page's numbers, computed by torch in one long-lived child process, so the server never imports torch.

amp_core.analysis.formats measures every property with torch (finfo, bit patterns, real casts); that stays where it
is. The server starts ONE child on first use (``python -m amp_core.serve.formats_service``, which imports it) and
talks to it in JSON lines over stdin/stdout: one request, one answer, under a lock, since the server's sessions are
threads sharing the child. JSON has no inf or NaN, so every non-finite float travels as ``{"nonfinite": "-inf"}``
(a NaN keeps its sign); finite floats travel as Python's repr, which reads back to the same bits (negative zero and
subnormals included).

The server keeps the formats' properties for the child's life and the last answers of round_to_formats and
number_line_figure in an LRU. A child that died is restarted once by the next call; if the new one fails too the
call raises FormatsServiceError with a one-line message. The child exits when its stdin closes (the server exited
or was killed: the kernel closes the pipe) or when its parent is gone.
"""

from __future__ import annotations

import atexit
import collections
import dataclasses
import json
import math
import os
import select
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import plotly.graph_objects as go

__all__ = ["FormatProperties", "FormatsService", "FormatsServiceError", "service", "shutdown"]

CHILD_COMMAND = (sys.executable, "-m", "amp_core.serve.formats_service")
ANSWER_TIMEOUT_S = 180.0  # the first answer waits for torch's import: seconds, more on a loaded machine
CACHE_SIZE = 512
PARENT_POLL_S = 1.0
_REPO_ROOT = Path(__file__).resolve().parents[2]


class FormatsServiceError(RuntimeError):
    """The child could not answer; the message is one line for the page."""


@dataclasses.dataclass(frozen=True)
class FormatProperties:
    """What amp_core.analysis.formats.Format reports, without its torch dtype."""

    name: str
    dtype_name: str
    bits: int
    exponent_bits: int
    mantissa_bits: int
    max: float
    smallest_normal: float
    smallest_subnormal: float
    eps: float
    overflow: str
    note: str


PROPERTY_FIELDS = tuple(f.name for f in dataclasses.fields(FormatProperties))


def encode(obj):
    """`obj` with every non-finite float replaced by {"nonfinite": ...}, so json.dumps(allow_nan=False) takes it."""
    if isinstance(obj, float) and not math.isfinite(obj):
        sign = "-" if math.copysign(1.0, obj) < 0 else ""
        return {"nonfinite": sign + ("nan" if math.isnan(obj) else "inf")}
    if isinstance(obj, dict):
        return {k: encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [encode(v) for v in obj]
    return obj


def decode(obj):
    """encode's inverse."""
    if isinstance(obj, dict):
        if obj.keys() == {"nonfinite"}:
            return float(obj["nonfinite"])
        return {k: decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [decode(v) for v in obj]
    return obj


def dumps_line(obj) -> bytes:
    return json.dumps(encode(obj), allow_nan=False, separators=(",", ":")).encode() + b"\n"


def _cache_key(value):
    """Floats by their bits: 0.0 == -0.0 (and hash alike), yet they round to different results. Anything but a
    number (or None) is not kept: the child answers it (with round_to_formats' own ValueError)."""
    if isinstance(value, float):
        return ("float", struct.pack("<d", value))
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return (type(value).__name__, value)
    return None


class _LRU:
    def __init__(self, size: int):
        self.size, self.items = size, collections.OrderedDict()

    def get(self, key):
        if key is not None and key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        return None

    def put(self, key, value) -> None:
        if key is None:
            return
        self.items[key] = value
        self.items.move_to_end(key)
        while len(self.items) > self.size:
            self.items.popitem(last=False)


class _ChildDied(Exception):
    """The child's pipe broke or closed: it is gone, and may be restarted."""


class FormatsService:
    """One child process and the answers it gave. Thread-safe; `command` runs the child (tests swap it)."""

    def __init__(self, command=CHILD_COMMAND, timeout: float = ANSWER_TIMEOUT_S, cache_size: int = CACHE_SIZE):
        self.command, self.timeout = tuple(command), timeout
        self.starts = 0  # how many children this service started
        self._lock = threading.Lock()
        self._child: subprocess.Popen | None = None
        self._stderr = None
        self._buffer = b""
        self._properties: tuple[tuple[FormatProperties, ...], dict[str, str]] | None = None
        self._rounded, self._figures = _LRU(cache_size), _LRU(cache_size)
        self._figure_objects, self._figure_lock = _LRU(cache_size), threading.Lock()

    # -- what the page asks ------------------------------------------------------------------------------------------

    def formats(self) -> tuple[FormatProperties, ...]:
        return self._properties_and_verdicts()[0]

    def verdicts(self) -> dict[str, str]:
        return dict(self._properties_and_verdicts()[1])

    def round_to_formats(self, value) -> list[dict]:
        """amp_core.analysis.formats.round_to_formats(value), from the child; ValueError as it raises it."""
        key = _cache_key(value)
        with self._lock:
            rows = self._rounded.get(key)
            if rows is None:
                rows = self._ask({"op": "round", "value": value})
                self._rounded.put(key, rows)
        return [dict(r) for r in rows]

    def number_line_figure_json(self, gradient=None, loss_scale=None) -> str:
        """amp_core.analysis.formats.number_line_figure(gradient, loss_scale).to_json(), from the child, without its template."""
        keys = (_cache_key(gradient), _cache_key(loss_scale))
        key = None if None in keys else keys
        with self._lock:
            text = self._figures.get(key)
            if text is None:
                text = self._ask({"op": "figure", "gradient": gradient, "loss_scale": loss_scale})
                self._figures.put(key, text)
        return text

    def number_line_figure(self, gradient=None, loss_scale=None) -> go.Figure:
        """number_line_figure_json's figure, built once and shared by every session that shows it: read it, never
        change it. (Building a Figure validates every property, about 80 ms; Streamlit reads a built one in a few.)"""
        text = self.number_line_figure_json(gradient, loss_scale)
        with self._figure_lock:
            figure = self._figure_objects.get(text)
        if figure is None:
            figure = go.Figure(json.loads(text))  # outside the lock: two sessions may both build it, both right
            with self._figure_lock:
                self._figure_objects.put(text, figure)
        return figure

    def is_running(self) -> bool:
        """True when a child is up and has answered (the next call does not wait for torch's import)."""
        child = self._child
        return child is not None and child.poll() is None and self._properties is not None

    @property
    def pid(self) -> int | None:
        return None if self._child is None else self._child.pid

    def close(self) -> None:
        """Close the child's stdin (it exits on EOF), wait a moment, kill it if it has not gone."""
        with self._lock:
            self._stop_child()

    # -- the child ---------------------------------------------------------------------------------------------------

    def _properties_and_verdicts(self):
        with self._lock:
            if self._properties is None or not self._alive():
                answer = self._ask({"op": "formats"})
                fmts = tuple(FormatProperties(**{k: f[k] for k in PROPERTY_FIELDS}) for f in answer["formats"])
                self._properties = (fmts, answer["verdicts"])
            return self._properties

    def _alive(self) -> bool:
        return self._child is not None and self._child.poll() is None

    def _ask(self, request: dict):
        """The child's answer to `request` (lock held). A dead child is restarted once for it."""
        for attempt in (1, 2):
            if not self._alive():
                self._start_child()
            try:
                return self._exchange(request)
            except _ChildDied as died:
                reason = str(died)
                self._stop_child()
                if attempt == 2:
                    raise FormatsServiceError(f"torch's child process {reason}") from None
        raise AssertionError("unreachable")

    def _start_child(self) -> None:
        self._stop_child()
        self._stderr = tempfile.TemporaryFile()
        try:
            self._child = subprocess.Popen(
                self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, cwd=_REPO_ROOT
            )
        except OSError as e:
            raise FormatsServiceError(f"torch's child process could not start: {e}") from None
        self.starts += 1
        self._buffer, self._properties = b"", None  # the properties are kept for one child's life

    def _stop_child(self) -> None:
        child, self._child, self._properties = self._child, None, None
        if child is not None:
            for stream in (child.stdin, child.stdout):
                try:
                    stream.close()
                except OSError:
                    pass
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None

    def _exchange(self, request: dict):
        try:
            line = dumps_line(request)
        except TypeError as e:  # not even JSON: no number the child could cast
            raise ValueError(f"expected a real number (int or float): {e}") from None
        try:
            self._child.stdin.write(line)
            self._child.stdin.flush()
        except (BrokenPipeError, OSError):
            raise _ChildDied(self._death_note("exited")) from None
        answer = decode(json.loads(self._read_line()))
        if "error" in answer:
            if answer.get("kind") == "ValueError":
                raise ValueError(answer["error"])
            raise FormatsServiceError(f"torch's child process failed: {answer['error']}")
        return answer["result"]

    def _read_line(self) -> bytes:
        """One line from the child, waiting at most self.timeout; a child that hangs is killed."""
        fd, deadline = self._child.stdout.fileno(), time.monotonic() + self.timeout
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self._stop_child_now()
                raise FormatsServiceError(f"torch's child process did not answer within {self.timeout:.0f} s")
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise _ChildDied(self._death_note("exited"))
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line

    def _stop_child_now(self) -> None:
        if self._child is not None:
            self._child.kill()
        self._stop_child()

    def _death_note(self, what: str) -> str:
        """'exited (code 1): <its last stderr line>', one line."""
        try:
            code = self._child.wait(timeout=5) if self._child is not None else None
        except subprocess.TimeoutExpired:  # it closed its stdout yet lives on: _stop_child kills it
            code = "still running"
        last = ""
        if self._stderr is not None:
            self._stderr.seek(0)
            lines = self._stderr.read().decode(errors="replace").strip().splitlines()
            last = lines[-1].strip() if lines else ""
        return f"{what} (code {code})" + (f": {last}" if last else "")


_SERVICE: FormatsService | None = None
_SERVICE_LOCK = threading.Lock()


def service() -> FormatsService:
    """The server's one FormatsService (its child starts on first use)."""
    global _SERVICE
    with _SERVICE_LOCK:
        if _SERVICE is None:
            _SERVICE = FormatsService()
        return _SERVICE


@atexit.register
def shutdown() -> None:
    """Stop the server's child and forget the service (the next service() starts afresh)."""
    global _SERVICE
    with _SERVICE_LOCK:
        old, _SERVICE = _SERVICE, None
    if old is not None:
        old.close()


# -- the child's side ------------------------------------------------------------------------------------------------


def _answer(request: dict, fm) -> object:
    op = request.get("op")
    if op == "formats":
        return {
            "formats": [{k: getattr(f, k) for k in PROPERTY_FIELDS} for f in fm.formats()],
            "verdicts": dict(fm.VERDICTS),
        }
    if op == "round":
        return fm.round_to_formats(request["value"])
    if op == "figure":
        figure = fm.number_line_figure(request["gradient"], request["loss_scale"])
        # No template: the server's own default (Streamlit's theme, once streamlit is imported) applies when it
        # rebuilds the figure, as it did when the page drew it in-process; and 9 kB less per figure.
        figure.layout.template = None
        return figure.to_json()
    raise KeyError(f"unknown op {op!r}")


def _exit_when_orphaned(parent: int) -> None:
    """Belt and braces to stdin's EOF: a copy of the pipe inherited by some other process would keep it open."""
    while os.getppid() == parent:
        time.sleep(PARENT_POLL_S)
    os._exit(0)


def main() -> None:
    protocol = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())  # a stray print must not break the protocol
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
    from amp_core.analysis import formats as fm

    for line in sys.stdin.buffer:  # ends when the server closes the pipe or dies
        try:
            answer = {"result": _answer(decode(json.loads(line)), fm)}
        except Exception as e:  # one request failed; the child serves the next
            # a ValueError is the caller's (round_to_formats refuses its value): its own message, as raised
            text = str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"
            answer = {"error": (text.splitlines() or [type(e).__name__])[0], "kind": type(e).__name__}
        protocol.write(dumps_line(answer))
        protocol.flush()


if __name__ == "__main__":
    main()
