"""amp_core.serve.formats_service: torch's formats measured in one child process, answering what
amp_core.analysis.formats answers in-process, bit for bit; one child for many threads; restarted once when killed;
a one-line error when it cannot start; no torch in a server rendering the Formats page."""

import json
import math
import os
import signal
import struct
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import plotly.graph_objects as go
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from amp_core.analysis import formats as fm
from amp_core.serve import formats_service
from amp_core.serve.formats_service import FormatsService, FormatsServiceError, decode, dumps_line
from tests.support.processes import wait_until

ROOT = Path(__file__).resolve().parents[1]
SPECIALS = [0.0, -0.0, math.inf, -math.inf, math.nan, -math.nan, 5e-324, -5e-324, 2.2250738585072014e-308]
SPECIALS += [sys.float_info.max, -sys.float_info.max, 65504.0, 65520.0, 448.0, 1e-8, 2.0**-24, 2.0**-25, 0.1]
FAILING_CHILD = (sys.executable, "-c", "raise SystemExit('ImportError: torch is broken here')")


@pytest.fixture(scope="module")
def svc():
    service = FormatsService()
    yield service
    service.close()


def same_float(a, b) -> bool:
    """Bit for bit, except a NaN's payload (only its sign is kept)."""
    if isinstance(a, float) and isinstance(b, float):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b) and math.copysign(1, a) == math.copysign(1, b)
        return struct.pack("<d", a) == struct.pack("<d", b)
    return type(a) is type(b) and a == b


def same_rows(got: list[dict], want: list[dict]) -> bool:
    return len(got) == len(want) and all(
        g.keys() == w.keys() and all(same_float(g[k], w[k]) for k in w) for g, w in zip(got, want)
    )


def child_pids(besides=()) -> list[int]:
    """The formats children this test process has now (read from /proc), but those in `besides`."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == os.getpid() and b"amp_core.serve.formats_service" in cmd and int(entry.name) not in besides:
            pids.append(int(entry.name))
    return sorted(pids)


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"  # exited, not yet reaped


@given(st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_round_to_formats_equals_in_process(svc, value):
    for special in SPECIALS:  # the specials every time (cached after the first), the drawn value once
        assert same_rows(svc.round_to_formats(special), fm.round_to_formats(special)), special
    got = svc.round_to_formats(value)
    assert same_rows(got, fm.round_to_formats(value)), value
    assert same_rows(svc.round_to_formats(value), got)  # from the LRU: the same


@given(st.integers(min_value=-(10**400), max_value=10**400))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_integers_too(svc, value):
    assert same_rows(svc.round_to_formats(value), fm.round_to_formats(value))


def test_zero_and_negative_zero_are_kept_apart(svc):
    assert [r["bits"][0] for r in svc.round_to_formats(0.0)] == ["0"] * len(fm.formats())
    assert [r["bits"][0] for r in svc.round_to_formats(-0.0)] == ["1"] * len(fm.formats())  # not 0.0's cache entry
    assert all(math.copysign(1, r["result"]) == -1 for r in svc.round_to_formats(-0.0))


@given(
    st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
    st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([2.0**16, 2.0**-24])),
)
@example(1e-8, 2.0**16)
@example(-0.0, math.inf)
@example(math.nan, None)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_number_line_figure_equals_in_process(svc, gradient, loss_scale):
    assert svc.number_line_figure_json(gradient, loss_scale) == in_process_json(gradient, loss_scale)


def in_process_json(gradient, loss_scale) -> str:
    """The in-process figure as the child sends it: without its template (which depends on what this process
    imported: streamlit registers its own default)."""
    figure = fm.number_line_figure(gradient, loss_scale)
    figure.layout.template = None
    return figure.to_json()


def test_the_shared_figure_is_the_in_process_figure(svc):
    for gradient, loss_scale in [(1e-8, 2.0**16), (1e-10, 2.0**-3), (math.inf, None), (None, None)]:
        figure = svc.number_line_figure(gradient, loss_scale)
        # what Figure(json) makes of the in-process figure (it drops the empty `title: {}` that title=None leaves)
        in_process = go.Figure(json.loads(in_process_json(gradient, loss_scale)))
        assert figure.to_json() == in_process.to_json()
        assert svc.number_line_figure(gradient, loss_scale) is figure  # built once, then shared


def test_properties_and_verdicts_equal_in_process(svc):
    got, want = svc.formats(), fm.formats()
    assert [f.name for f in got] == [f.name for f in want]
    for g, w in zip(got, want):
        for field in formats_service.PROPERTY_FIELDS:
            assert same_float(getattr(g, field), getattr(w, field)), (w.name, field)
    assert svc.verdicts() == fm.VERDICTS


def test_bad_value_is_the_same_value_error(svc):
    for bad in ("0.1", True, None, [1.0]):
        with pytest.raises(ValueError) as in_process:
            fm.round_to_formats(bad)
        with pytest.raises(ValueError) as served:
            svc.round_to_formats(bad)
        assert str(served.value) == str(in_process.value)
    assert same_rows(svc.round_to_formats(0.5), fm.round_to_formats(0.5))  # the child serves on


def test_non_finite_floats_travel_as_strict_json():
    line = dumps_line({"a": [math.inf, -math.inf, math.nan, -math.nan, -0.0, 5e-324]})
    assert b"Infinity" not in line and b"NaN" not in line
    a = decode(json.loads(line))["a"]
    assert a[:2] == [math.inf, -math.inf] and all(math.isnan(x) for x in a[2:4])
    assert [math.copysign(1, x) for x in a[2:]] == [1, -1, -1, 1] and a[5] == 5e-324


def test_one_child_for_many_concurrent_threads():
    before = child_pids()  # the module's service's
    service = FormatsService()
    values = [2.0**-k for k in range(40)] + [float(k) for k in range(40)]
    start = threading.Barrier(16)

    def session(value):
        start.wait()  # all at once, while the child is still loading torch
        return service.formats()[0].name, service.round_to_formats(value), child_pids(before)

    try:
        with ThreadPoolExecutor(max_workers=16) as pool:
            answers = list(pool.map(session, values[:16])) + list(pool.map(service.round_to_formats, values[16:]))
        assert service.starts == 1 and child_pids(before) == [service.pid]
        assert all(pids in ([], [service.pid]) for _, _, pids in answers[:16])
        assert all(name == "fp32" for name, _, _ in answers[:16])
        got = [rows for _, rows, _ in answers[:16]] + answers[16:]
        assert all(same_rows(rows, fm.round_to_formats(v)) for rows, v in zip(got, values))
    finally:
        service.close()
    assert child_pids(before) == []


def test_a_killed_child_is_restarted_by_the_next_call():
    before = child_pids()
    service = FormatsService()
    try:
        assert service.formats()[2].name == "fp16"
        first = service.pid
        os.kill(first, signal.SIGKILL)
        wait_until(lambda: gone(first), 30, "the killed child to exit")
        assert same_rows(service.round_to_formats(70000.0), fm.round_to_formats(70000.0))
        assert service.starts == 2 and service.pid != first and child_pids(before) == [service.pid]
        assert service.formats()[2].max == 65504.0  # the properties, asked of the new child
    finally:
        service.close()


def test_a_child_that_cannot_start_is_one_line_error():
    service = FormatsService(command=FAILING_CHILD)
    with pytest.raises(FormatsServiceError) as err:
        service.round_to_formats(1.0)
    message = str(err.value)
    assert "\n" not in message and "torch is broken here" in message and "exited (code 1)" in message
    assert service.starts == 2  # restarted once, then it gave up
    with pytest.raises(FormatsServiceError):  # the next call tries again (a new child), and fails the same way
        service.formats()
    assert service.starts == 4 and service.pid is None


def test_a_hanging_child_is_killed_after_the_timeout(tmp_path):
    pid_file = tmp_path / "pid"
    hang = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(120)"
    service = FormatsService(command=(sys.executable, "-c", hang), timeout=5)
    with pytest.raises(FormatsServiceError, match="did not answer within 5 s"):
        service.formats()
    assert service.pid is None and gone(int(pid_file.read_text()))


# A server stand-in: starts the child, reports its pid, then dies by SIGKILL (no atexit, no cleanup).
KILLED_SERVER = """
import os, signal
from amp_core.serve.formats_service import service
service().formats()
print(service().pid, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_no_orphan_when_the_server_is_killed():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", KILLED_SERVER], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300
    )
    assert out.returncode == -signal.SIGKILL, out.stderr[-2000:]
    child = int(out.stdout.split()[-1])
    try:
        wait_until(lambda: gone(child), 30, "the orphaned child to exit")
    finally:
        if not gone(child):
            os.kill(child, signal.SIGKILL)
