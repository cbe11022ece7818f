"""amp_core.record.columns and load_run's cache: the fast and the incremental parse read what a plain
line-by-line parse reads, whatever the file holds; what is handed out cannot be changed by its taker."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from amp_core.record import METRIC_COLUMNS, METRICS_FILE, RunFollower, RunWriter, load_run, parse_metrics
from amp_core.record.columns import MetricsTail, RunMetrics


def reference_parse(data: bytes) -> tuple[list[dict], int, int]:
    """The plain parse: each complete non-blank line through json.loads on its own."""
    end = data.rfind(b"\n") + 1
    rows, damaged = [], 0
    for line in data[:end].splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            damaged += 1
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
            rows.append(row)
        else:
            damaged += 1
    return rows, end, damaged


def reference_number(v) -> float:
    if v is None or isinstance(v, str):
        return np.nan
    try:
        return float(v)
    except (TypeError, ValueError, OverflowError):
        return np.nan


def assert_columns(metrics: RunMetrics, rows: list[dict]) -> None:
    assert len(metrics) == len(rows)
    for c in METRIC_COLUMNS:
        expected = np.array([reference_number(r.get(c)) for r in rows], dtype=np.float64)
        np.testing.assert_array_equal(metrics.columns[c], expected, err_msg=c)


VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**400), 10**400), st.floats(allow_nan=False), st.text(max_size=3),
    st.lists(st.integers(), max_size=2),
)  # fmt: skip
GOOD = st.fixed_dictionaries({"step": st.integers(0, 10**6)}, optional={c: VALUES for c in METRIC_COLUMNS[1:]}).map(
    lambda d: json.dumps(d).encode()
)
JUNK = st.sampled_from([b"", b"   ", b"not json", b"[1, 2]", b'{"step": "x"}', b"1, 2", b'{"step": 1, "a": [', b"]}",
                        b'{"step": 1}, {"step": 2}', b"\xff\xfe", b"[" * 5000, b'  {"step": 3}', b'{"step": 4}  ',
                        b'{"step": NaN, "loss": Infinity}', b'{"step": 5, "loss": 1e999}', b'{"step": true}'])  # fmt: skip
LINES = st.lists(st.one_of(GOOD, GOOD, JUNK), max_size=40)


@settings(max_examples=150, deadline=None)
@given(LINES, st.binary(max_size=12))
def test_parse_reads_what_a_line_by_line_parse_reads(lines, tail):
    data = b"\n".join(lines) + (b"\n" if lines else b"") + tail.replace(b"\n", b"")
    assert parse_metrics(data) == reference_parse(data)
    rows, _, _ = reference_parse(data)
    assert_columns(RunMetrics.from_rows(parse_metrics(data)[0]), rows)


@settings(max_examples=60, deadline=None)
@given(LINES, st.lists(st.integers(0, 10_000), max_size=6))
def test_incremental_reads_equal_one_whole_read(tmp_path_factory, lines, cuts):
    """Bytes appended in arbitrary pieces (cutting lines in half) and read after each piece."""
    data = b"".join(line + b"\n" for line in lines)
    path = tmp_path_factory.mktemp("tail") / METRICS_FILE
    path.write_bytes(b"")
    tail = MetricsTail(path)
    taken = []
    for cut in sorted({min(c, len(data)) for c in cuts}) + [len(data)]:
        with open(path, "ab") as f:
            f.write(data[path.stat().st_size : cut])
        tail.read()
        taken.append(tail.metrics)
        rows, consumed, damaged = reference_parse(data[:cut])
        assert_columns(tail.metrics, rows)
        assert tail.offset == consumed and tail.damaged == damaged
        assert tail.partial == (cut > consumed)
    for earlier in taken:  # what was handed out before later reads is unchanged and read-only
        assert all(not a.flags.writeable for a in earlier.columns.values()) or len(earlier) == 0
    rows, _, _ = reference_parse(data)
    assert_columns(taken[-1], rows)


def test_a_rewritten_file_is_read_again_from_its_start(tmp_path):
    path = tmp_path / METRICS_FILE
    path.write_text("".join(json.dumps({"step": i, "loss": 1.0}) + "\n" for i in range(5)))
    tail = MetricsTail(path)
    tail.read()
    first = tail.metrics
    path.write_text("".join(json.dumps({"step": i, "loss": 2.0}) + "\n" for i in range(7)))  # same inode, longer
    tail.read()
    assert list(tail.metrics.step) == list(range(7)) and (tail.metrics.loss == 2.0).all()
    assert tail.generation == 1 and (first.loss == 1.0).all() and len(first) == 5


def test_the_follower_hands_out_columns_nobody_can_change(tmp_path):
    w = RunWriter.create(tmp_path, {})
    w.append_metrics([{"step": i, "loss": 1.0} for i in range(3)])
    f = RunFollower(w.path)
    f.poll()
    before = f.metrics
    with pytest.raises(ValueError):
        before.loss[0] = 5.0
    w.append_metrics([{"step": i, "loss": 3.0} for i in range(3, 2000)])  # grows past the buffer
    f.poll()
    assert len(before) == 3 and list(before.loss) == [1.0] * 3 and len(f.metrics) == 2000
    w.close()


def test_load_run_gives_each_caller_its_own_run(tmp_path):
    w = RunWriter.create(tmp_path, {"precision": "16-mixed", "nested": {"a": [1]}})
    w.set_status("completed")
    w.append_metrics([{"step": i, "loss": 1.0} for i in range(4)])
    a, b = load_run(w.path), load_run(w.path)
    assert a is not b and a.config == b.config
    a.config["nested"]["a"].append(2)
    a.status["state"] = "changed"
    a.problems.append("mine")
    a.metrics.columns["loss"] = np.zeros(4)
    with pytest.raises(ValueError):
        b.metrics.loss[0] = 9.0
    c = load_run(w.path)
    assert c.config["nested"] == {"a": [1]} and c.state == "completed" and c.problems == []
    assert list(c.metrics.loss) == [1.0] * 4
    w.close()


def test_load_run_from_many_threads_while_the_run_grows(tmp_path):
    w = RunWriter.create(tmp_path, {"precision": "16-mixed"})
    w.set_status("running")
    errors, done = [], threading.Event()

    def reader():
        try:
            while not done.is_set():
                r = load_run(w.path)
                n = len(r.metrics)
                assert {len(col) for col in r.metrics.columns.values()} == {n}
                assert list(r.metrics.step) == list(range(n))  # never a torn or repeated read
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=reader) for _ in range(6)]
    for t in threads:
        t.start()
    for start in range(0, 3000, 100):
        w.append_metrics([{"step": i, "loss": 1.0} for i in range(start, start + 100)])
    done.set()
    for t in threads:
        t.join(30)
    w.close()
    assert not errors, errors[:3]
    assert len(load_run(w.path).metrics) == 3000
