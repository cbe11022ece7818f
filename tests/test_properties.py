"""Hardening: bad input, property-based. At least 1,000 generated inputs for each target:

- the resolver: resolve_precision gives a PrecisionResolution or InvalidPrecisionError listing the allowed values;
- the run configuration: RunConfig(**fields).validate() gives a valid config or a one-line ConfigError, and makes nothing;
- the CLI: config_from_args(argv) gives a valid config or a one-line ConfigError/UsageError; a sample of the
  invalid argvs through `python -m amp_core.train`: exit 2, one stderr line, no traceback, no folder;
- run ids: run_path(runs_dir, anything) is a folder directly inside runs_dir or a RunRecordError.

Any other exception fails the test (hypothesis then shrinks it to the smallest input). Each test prints how many
inputs it tried (`pytest -s`), and checks that it tried at least 1,000.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from amp_core.precision import (
    InvalidPrecisionError,
    PrecisionResolution,
    lightning_precision_values,
    requested_precision_values,
    resolve_precision,
)
from amp_core.record import RunRecordError, RunWriter, run_path
from amp_core.training import cli as train
from amp_core.training.cli import ConfigError, RunConfig, UsageError, config_from_args

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = 1000
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

# ---------------------------------------------------------------- hostile values

HUGE = [10**400, -(10**400), 2**63, -(2**63) - 1, 2**64, 2**1024]
# An int of over 4300 digits has no repr() (so no str() in an f-string either); built lazily, since
# hypothesis itself shows the values a strategy samples from.
HUGER = st.sampled_from([5000, -5000, 4301]).map(lambda n: 10**n if n > 0 else -(10**-n))
SPECIAL_FLOATS = [math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.7976931348623157e308, -1e-300]
ODD_TEXT = [
    "",
    " ",
    "\n",
    "\t",
    "\x00",
    "\x00abc",
    "abc\n",
    "\r\n",
    "\u2028",
    "\x1c",
    "\u200b",
    "\ufeff",
    "16-mixed\n",
    " 16-mixed",
    "16-MIXED",
    "ｂｆ16",
    "١٦",
    "²",
    "𝟏𝟔",
    "16\u200b",
    "é",
    "日本語",
    "🙂",
    "../",
    "../../etc/passwd",
    "/etc/passwd",
    "C:\\Windows",
    "a/b",
    "..",
    ".",
    "~",
    "$HOME",
    "%s%n",
    "<script>alert(1)</script>",
    "'; DROP TABLE runs; --",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "1e400",
    "-1e400",
    "0x10",
    "1_000",
    "0b11",
    "-0",
    "+5",
    " 7 ",
    "9" * 400,
    "9" * 5000,
    "1" * 100_000,
    "raise@10",
    "oom@٣",
    "raise@²",
    "nan@-1",
    "nan@99999999999999999999",
    "true",
    "None",
    "null",
    "[]",
    "{}",
]


def scalars() -> st.SearchStrategy:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.sampled_from(HUGE),
        HUGER,
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from(SPECIAL_FLOATS),
        st.text(max_size=40),
        st.sampled_from(ODD_TEXT),
        st.binary(max_size=20),
        st.complex_numbers(allow_nan=True, allow_infinity=True),
    )


WEIRD = st.recursive(
    scalars(),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.text(max_size=6), inner, max_size=3),
        st.frozensets(st.integers(), max_size=3),
    ),
    max_leaves=8,
)
ODD_STRINGS = st.one_of(
    st.sampled_from(ODD_TEXT), st.text(), st.text(alphabet=st.characters(codec="utf-8"), max_size=30)
)


def one_line(message: str) -> bool:
    return bool(message.strip()) and len(message.splitlines()) == 1


def report(name: str, counts: Counter) -> None:
    """The figure for the issue note (visible with pytest -s)."""
    detail = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if k != "tried")
    print(f"\n[hypothesis] {name}: {counts['tried']} generated inputs tried ({detail})")
    assert counts["tried"] >= EXAMPLES, counts


# ---------------------------------------------------------------- the resolver


def test_resolver_answers_or_lists_the_allowed_values():
    counts = Counter()
    valid_out = set(lightning_precision_values(include_aliases=False))

    @SETTINGS
    @given(
        requested=st.one_of(st.sampled_from(requested_precision_values()), ODD_STRINGS, WEIRD),
        use_amp=st.one_of(st.none(), st.booleans(), WEIRD),
        cuda=st.one_of(st.booleans(), WEIRD),
        gpu=st.one_of(st.booleans(), WEIRD),
    )
    def check(requested, use_amp, cuda, gpu):
        counts["tried"] += 1
        try:
            r = resolve_precision(requested, use_amp, cuda, gpu)
        except InvalidPrecisionError as e:
            counts["rejected"] += 1
            assert isinstance(e, ValueError)
            message = str(e)
            assert "Allowed precision values" in message and "'16-mixed'" in message and "'bf16-mixed'" in message, (
                message[:300]
            )
            return
        counts["resolved"] += 1
        assert isinstance(r, PrecisionResolution)
        assert r.lightning_precision in valid_out
        assert r.use_amp in (None, True, False) and r.cuda_available in (True, False) and r.use_gpu in (True, False)
        assert r.accelerator in ("cuda", "cpu")
        assert r.final_precision is None or r.final_precision in valid_out
        assert (r.final_precision is None) == (r.error is not None)
        str(r), r.as_dict(), r.steps()  # what the page and the CLI print

    check()
    report("resolve_precision", counts)
    assert counts["resolved"] >= 50 and counts["rejected"] >= 50  # both outcomes were exercised


# ---------------------------------------------------------------- the run configuration

INT_RANGES = {
    "max_steps": (1, 1_000_000),
    "batch_size": (1, 65536),
    "seed": (0, 2**32 - 1),
    "growth_interval": (1, 10**9),
    "hidden": (1, 65536),
    "depth": (1, 64),
    "histogram_every": (0, 10**9),
    "devices": (1, 1024),
    "num_nodes": (1, 1024),
}
FLOAT_RANGES = {  # (lo, hi), lo excluded
    "lr": (0.0, 10.0),
    "init_scale": (0.0, 2.0**126),
    "growth_factor": (1.0, 1e6),
    "backoff_factor": (0.0, 1.0),  # 1 excluded too
}
CHOICES = {
    "accelerator": train.ACCELERATORS,
    "wandb": train.WANDB_MODES,
    "matmul_precision": train.MATMUL_PRECISIONS,
    "strategy": getattr(train, "STRATEGIES", ("auto",)),
}
RUN_CONFIG_FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}


def field_kind(name: str) -> str:
    return str(RUN_CONFIG_FIELDS[name].type)


def numbers(lo, hi) -> st.SearchStrategy:
    return st.one_of(
        st.integers(min_value=int(lo) - 2, max_value=int(min(hi, 2**40)) + 2),
        st.sampled_from([lo, hi, hi + 1, lo - 1, int(hi), float(hi) * 1.0000001]),
        st.floats(min_value=float(lo) - 1, max_value=float(min(hi, 1e12)) + 1),
        st.integers(),
        st.floats(),
        st.sampled_from(HUGE + SPECIAL_FLOATS),
        HUGER,
        st.sampled_from(["200", "1", "nan"]),  # numbers as strings are not numbers
        WEIRD,
    )


def value_strategy(name: str) -> st.SearchStrategy:
    if name in INT_RANGES:
        return numbers(*INT_RANGES[name])
    if name in FLOAT_RANGES:
        return numbers(*FLOAT_RANGES[name])
    if name in CHOICES:
        return st.one_of(st.sampled_from(CHOICES[name]), ODD_STRINGS, WEIRD)
    if name == "precision":
        return st.one_of(st.sampled_from(requested_precision_values()), ODD_STRINGS, WEIRD)
    if name == "inject_overflow":
        return st.one_of(
            st.lists(st.integers(min_value=-3, max_value=300), max_size=5).map(tuple),
            st.lists(st.integers(), max_size=3),
            st.frozensets(st.integers(min_value=0, max_value=50), max_size=3),
            st.lists(WEIRD, max_size=3),
            WEIRD,
        )
    if name == "fault":
        return st.one_of(st.just(""), st.from_regex(r"(raise|oom|nan)@[0-9]{1,12}", fullmatch=True), ODD_STRINGS, WEIRD)
    if name == "compare_group":
        return st.one_of(
            st.just(""), st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,70}\n?", fullmatch=True), ODD_STRINGS, WEIRD
        )
    if name == "runs_dir":
        return st.one_of(
            st.just(""), st.sampled_from(["made-by-validate", "sub/dir", "\x00", "a\x00b"]), ODD_STRINGS, WEIRD
        )
    if field_kind(name) == "bool":
        return st.one_of(st.booleans(), st.sampled_from([0, 1, "true", "False", None]), WEIRD)
    return st.one_of(ODD_STRINGS, WEIRD)  # a field added later: at least hostile values


def valid_value(name: str) -> st.SearchStrategy:
    """Values that are fine for a field on their own (the dataclass default is one)."""
    default = st.just(RUN_CONFIG_FIELDS[name].default)
    if name in INT_RANGES:
        lo, hi = INT_RANGES[name]
        return st.one_of(default, st.integers(lo, min(hi, 500)), st.integers(lo, hi))
    if name in FLOAT_RANGES:
        lo, hi = FLOAT_RANGES[name]
        return st.one_of(default, st.floats(lo, hi, exclude_min=True, exclude_max=name == "backoff_factor"))
    if name in CHOICES:
        return st.sampled_from(CHOICES[name])
    if name == "precision":
        return st.sampled_from(requested_precision_values())
    if name == "fault":
        return st.one_of(default, st.from_regex(r"(raise|oom|nan)@[0-9]{1,6}", fullmatch=True))
    if name == "compare_group":
        return st.one_of(default, st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True))
    if field_kind(name) == "bool":
        return st.booleans()
    return default


@st.composite
def config_fields(draw) -> dict:
    """Some fields set to fine values, then up to three of them to anything at all."""
    names = list(RUN_CONFIG_FIELDS)
    fields = draw(st.fixed_dictionaries({}, optional={name: valid_value(name) for name in names}))
    for name in draw(st.lists(st.sampled_from(names), max_size=3, unique=True)):
        fields[name] = draw(st.one_of(value_strategy(name), HUGER))  # HUGER often: every message must survive it
    return fields


def assert_valid(c: RunConfig) -> None:
    """Every field of a config that validate() accepted: the right type and in range."""
    for name in RUN_CONFIG_FIELDS:
        value, kind = getattr(c, name), field_kind(name)
        if kind == "int":
            assert type(value) is int, (name, value)
        elif kind == "float":
            assert type(value) is float and math.isfinite(value), (name, value)
        elif kind == "bool":
            assert type(value) is bool, (name, value)
        elif kind == "str":
            assert type(value) is str, (name, value)
    for name, (lo, hi) in INT_RANGES.items():
        if name in RUN_CONFIG_FIELDS:
            assert lo <= getattr(c, name) <= hi, name
    for name, (lo, hi) in FLOAT_RANGES.items():
        assert lo < getattr(c, name) <= hi, name
    assert c.backoff_factor < 1
    for name, allowed in CHOICES.items():
        if name in RUN_CONFIG_FIELDS:
            assert getattr(c, name) in allowed, name
    assert c.precision in lightning_precision_values(include_aliases=False)
    steps = c.inject_overflow
    assert (
        type(steps) is tuple
        and all(type(x) is int and 0 <= x < c.max_steps for x in steps)
        and list(steps) == sorted(set(steps))
    )
    assert not steps or c.precision == "16-mixed"
    assert c.fault == "" or re.fullmatch(r"(raise|oom|nan)@[0-9]+", c.fault), c.fault
    if c.fault:
        int(c.fault.split("@")[1])  # what run() does with it
    assert c.compare_group == "" or re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", c.compare_group), c.compare_group
    assert "\x00" not in c.runs_dir


def test_run_config_validates_or_says_why_in_one_line(tmp_path, monkeypatch):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("AMP_RUNS_DIR", str(tmp_path / "runs"))
    counts = Counter()

    @SETTINGS
    @given(fields=config_fields())
    def check(fields):
        counts["tried"] += 1
        try:
            c = RunConfig(**fields).validate()
        except ConfigError as e:
            counts["ConfigError"] += 1
            assert one_line(str(e)), repr(str(e))[:300]
            return
        counts["valid"] += 1
        assert_valid(c)
        assert c.validate() is c  # validating again changes nothing
        assert_valid(c)

    check()
    report("RunConfig.validate", counts)
    assert counts["valid"] >= 50 and counts["ConfigError"] >= 50
    assert not (tmp_path / "runs").exists()
    assert set(os.listdir(work)) <= {".hypothesis"}, os.listdir(
        work
    )  # validate made nothing (hypothesis may keep its database here)


# ---------------------------------------------------------------- the CLI

_ACTIONS = [a for a in train.parser()._actions if a.option_strings and "-h" not in a.option_strings]
VALUE_FLAGS = [a.option_strings[0] for a in _ACTIONS if a.nargs is None]
SWITCHES = [a.option_strings[0] for a in _ACTIONS if a.nargs == 0]
CLI_VALUES = {
    "--precision": st.sampled_from([str(v) for v in requested_precision_values()]),
    "--accelerator": st.sampled_from(["auto", "cpu", "gpu", "tpu"]),
    "--wandb": st.sampled_from(["offline", "online", "disabled", "sometimes"]),
    "--fault": st.sampled_from(["raise@10", "oom@0", "nan@5", "raise@١٠", "boom@1"]),
    "--inject-overflow": st.sampled_from(["", "1,2", "5, x", "-1", "1,,2", "999999"]),
}


def is_help(token: str) -> bool:
    """-h and --help (or an abbreviation of it) print the usage and exit 0 by design: not bad input."""
    flag = token.split("=", 1)[0]
    return token.startswith("-h") or (len(flag) >= 4 and "--help".startswith(flag))


def cli_value(flag: str) -> st.SearchStrategy:
    plausible = CLI_VALUES.get(flag, st.one_of(st.integers(-5, 300).map(str), st.floats(allow_nan=True).map(str)))
    return st.one_of(plausible, ODD_STRINGS, st.sampled_from(["-5", "--precision", "-x", "--"]))


@st.composite
def argv_groups(draw) -> list[str]:
    kind = draw(
        st.sampled_from(
            [
                "flag=value",
                "flag value",
                "flag value",
                "switch",
                "switch=value",
                "missing value",
                "unknown",
                "positional",
            ]
        )
    )
    if kind.startswith("flag"):
        flag = draw(st.sampled_from(VALUE_FLAGS))
        value = draw(cli_value(flag))
        return [f"{flag}={value}"] if kind == "flag=value" else [flag, value]
    if kind == "switch":
        return [draw(st.sampled_from(SWITCHES))]
    if kind == "switch=value":
        return [f"{draw(st.sampled_from(SWITCHES))}={draw(ODD_STRINGS)}"]
    if kind == "missing value":
        return [draw(st.sampled_from(VALUE_FLAGS))]
    if kind == "unknown":
        return [draw(st.sampled_from(["--", "-", "---"])) + draw(st.text(min_size=0, max_size=12))] + draw(
            st.lists(ODD_STRINGS, max_size=1)
        )
    return [draw(ODD_STRINGS)]


ARGV = (
    st.lists(argv_groups(), max_size=6)
    .map(lambda groups: [t for g in groups for t in g])
    .filter(lambda argv: not any(is_help(t) for t in argv))
)


def _subprocess_safe(argv: list[str]) -> bool:
    try:
        return all("\x00" not in t and os.fsencode(t) is not None for t in argv)
    except UnicodeError:  # a lone surrogate a real argv cannot hold
        return False


def test_cli_arguments_give_a_config_or_one_line(tmp_path, monkeypatch):
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    runs = tmp_path / "runs"
    monkeypatch.setenv("AMP_RUNS_DIR", str(runs))
    counts = Counter()
    invalid: dict[str, list[str]] = {}  # a few invalid argvs per kind of message, for the subprocess sample

    @SETTINGS
    @given(argv=ARGV)
    def check(argv):
        counts["tried"] += 1
        try:
            c = config_from_args(argv)
        except (ConfigError, UsageError) as e:
            counts[type(e).__name__] += 1
            assert one_line(str(e)), repr(str(e))[:300]
            words = str(e).split()
            key = f"{type(e).__name__}: {' '.join(words[:2] if isinstance(e, UsageError) else words[:1])}"
            if _subprocess_safe(argv) and len(invalid.setdefault(key, [])) < 3:
                invalid[key].append(argv)
            return
        counts["valid"] += 1
        assert isinstance(c, RunConfig)
        assert_valid(c)

    started = time.perf_counter()
    check()
    report("config_from_args (CLI, in-process)", counts)
    print(f"[hypothesis] in-process part: {time.perf_counter() - started:.1f} s")
    assert counts["valid"] >= 20 and counts["ConfigError"] >= 50 and counts["UsageError"] >= 50
    assert not runs.exists() and set(os.listdir(work)) <= {".hypothesis"}

    # A sample of 30 invalid argvs, spread over the kinds of error, through the real CLI. An argv that parses
    # fails in validate(), after the process has imported Lightning to check the precision (seconds each on
    # this machine): at most 5 of those; the others fail while parsing.
    def spread(keys: list[str], n: int) -> list[list[str]]:
        return [invalid[k][i] for i in range(3) for k in keys if i < len(invalid[k])][:n]

    while_parsing = sorted(k for k in invalid if k.startswith("UsageError") or k.split(": ", 1)[1].startswith("--"))
    in_validate = sorted(set(invalid) - set(while_parsing))
    late = spread(in_validate, 5)
    sample = spread(while_parsing, 30 - len(late)) + late
    keys = while_parsing + in_validate
    env = {**os.environ, "PYTHONPATH": str(REPO), "AMP_RUNS_DIR": str(runs), "OMP_NUM_THREADS": "1"}

    def cli(argv):
        out = subprocess.run(
            [sys.executable, "-m", "amp_core.train", *argv], cwd=work, env=env, capture_output=True, timeout=300
        )
        return argv, out.returncode, out.stdout.decode(errors="replace"), out.stderr.decode(errors="replace")

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=2) as pool:  # a 2-core machine
        results = list(pool.map(cli, sample))
    print(f"[hypothesis] subprocess part: {time.perf_counter() - started:.1f} s")
    for argv, rc, out, err in results:
        lines = [line for line in err.splitlines() if line.strip()]
        assert (
            rc == 2
            and len(lines) == 1
            and lines[0].startswith("amp_core.train: error: ")
            and "Traceback" not in err
            and out == ""
        ), (argv, rc, err[-2000:])
    assert not runs.exists() and set(os.listdir(work)) <= {".hypothesis"}
    print(
        f"[hypothesis] python -m amp_core.train: {len(results)} invalid argvs as subprocesses, {len(keys)} kinds of error: all exit 2 with one line"
    )
    assert len(results) >= 20


# ---------------------------------------------------------------- run ids


def test_run_path_stays_inside_or_refuses(tmp_path):
    runs = tmp_path / "runs"
    ok = RunWriter.create(runs, {}, label="ok")
    outside = tmp_path / "outside"
    outside.mkdir()
    (runs / "link-out").symlink_to(outside, target_is_directory=True)
    (runs / "link-in").symlink_to(ok.path, target_is_directory=True)  # stays inside: harmless
    (runs / "link-deep").symlink_to(ok.path / "sub", target_is_directory=True)  # inside, but not a direct child
    (runs / "link-up").symlink_to("..")
    (runs / "loop").symlink_to(runs / "loop")
    (runs / "loop-a").symlink_to(runs / "loop-b")
    (runs / "loop-b").symlink_to(runs / "loop-a")
    (runs / "dangling").symlink_to(tmp_path / "nothing")
    root = runs.resolve()
    named = [
        ok.id,
        "link-out",
        "link-in",
        "link-deep",
        "link-up",
        "loop",
        "loop-a",
        "dangling",
        "not-yet-there",
        "x" * 128,
        "x" * 129,
    ]
    counts = Counter()

    @SETTINGS
    @given(
        run_id=st.one_of(
            st.sampled_from(
                named
                + ODD_TEXT
                + [str(outside), f"../{outside.name}", f"{ok.id}/..", f"{ok.id}/../../outside", "a/../b"]
            ),
            st.text(),
            st.text(alphabet=st.characters(codec="utf-8")),
            st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._/\\-]{0,140}\n?", fullmatch=True),
            st.text(alphabet="./\\-_aZ09\x00", max_size=12),
            WEIRD,
        )
    )
    def check(run_id):
        counts["tried"] += 1
        try:
            path = run_path(runs, run_id)
        except RunRecordError as e:
            counts["refused"] += 1
            assert one_line(str(e)), repr(str(e))[:300]
            return
        counts["accepted"] += 1
        assert isinstance(run_id, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", run_id), repr(run_id)
        assert path.is_absolute() and path.parent == root, (run_id, path)
        assert path == path.resolve()

    check()
    report("run_path", counts)
    assert counts["accepted"] >= 50 and counts["refused"] >= 50
    assert run_path(runs, "link-in") == ok.path.resolve()
    for bad in ("link-out", "link-deep", "link-up", "loop", "loop-a"):
        with pytest.raises(RunRecordError):
            run_path(runs, bad)
