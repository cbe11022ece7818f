"""amp_core.analysis.formats against torch itself: real casts and torch.finfo, no mocks."""

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from amp_core.analysis.formats import formats, number_line_figure, round_to_formats, round_to_tf32, to_format

FMT = {f.name: f for f in formats()}
NAMES = list(FMT)
E4M3, E5M2 = FMT["fp8 e4m3fn"], FMT["fp8 e5m2"]


def cast(value: float, name: str) -> float:
    return to_format(torch.tensor(value, dtype=torch.float64), FMT[name]).to(torch.float64).item()


def by_format(value, field: str) -> dict:
    return {r["format"]: r[field] for r in round_to_formats(value)}


def test_the_formats_the_issue_names():
    assert NAMES == ["fp32", "tf32", "fp16", "bf16", "fp8 e4m3fn", "fp8 e5m2"]
    assert [f.name for f in formats() if f.emulated] == ["tf32"]


@pytest.mark.parametrize("f", [f for f in formats() if not f.emulated], ids=lambda f: f.name)
def test_properties_are_torch_finfo(f):
    fi = torch.finfo(f.storage)
    assert (f.bits, f.max, f.smallest_normal, f.tiny, f.eps) == (fi.bits, fi.max, fi.smallest_normal, fi.tiny, fi.eps)


@pytest.mark.parametrize("name", NAMES)
def test_exponent_and_mantissa_bits_agree_with_the_range(name):
    f = FMT[name]
    e, m = f.exponent_bits, f.mantissa_bits
    assert f.bits == 1 + e + m and f.eps == 2.0**-m
    assert math.log2(f.smallest_normal) == 2 - 2 ** (e - 1)  # bias 2**(e-1) - 1, e4m3fn included
    assert f.smallest_subnormal == f.smallest_normal * f.eps
    if f.overflow == "inf":  # the top exponent is reserved for inf and NaN
        assert f.max == (2 - f.eps) * 2.0 ** (2 ** (e - 1) - 1)
    else:  # e4m3fn: no inf, the top exponent holds numbers, only its all-ones mantissa is NaN
        assert f.max == (2 - 2 * f.eps) * 2.0 ** (2 ** (e - 1))


@pytest.mark.parametrize("name", NAMES)
def test_smallest_subnormal_is_real_and_half_of_it_rounds_to_even_zero(name):
    s = FMT[name].smallest_subnormal
    assert s > 0 and cast(s, name) == s
    assert cast(s / 2, name) == 0.0  # a tie between 0 and s: to even, which is 0
    assert math.copysign(1.0, cast(-s / 2, name)) == -1.0  # and -s/2 gives -0.0
    assert cast(s / 2 * (1 + 2**-8), name) == s  # just past the tie rounds up
    assert cast(1.5 * s, name) == 2 * s  # a tie between s (odd) and 2s (even)
    assert round_to_formats(s)[NAMES.index(name)]["verdict"] == "exact"


def test_known_values():
    fp16, bf16, tf32 = FMT["fp16"], FMT["bf16"], FMT["tf32"]
    assert (fp16.max, fp16.eps, fp16.smallest_subnormal, fp16.smallest_normal) == (65504.0, 2**-10, 2**-24, 2**-14)
    assert (fp16.exponent_bits, fp16.mantissa_bits) == (5, 10)
    assert (bf16.exponent_bits, bf16.mantissa_bits, bf16.smallest_normal) == (8, 7, 2**-126)
    assert (tf32.bits, tf32.exponent_bits, tf32.mantissa_bits) == (19, 8, 10)
    assert (tf32.max, tf32.smallest_normal, tf32.smallest_subnormal) == ((2 - 2**-10) * 2.0**127, 2**-126, 2**-136)
    assert (E4M3.max, E4M3.smallest_subnormal, E5M2.max, E5M2.smallest_subnormal) == (448.0, 2**-9, 57344.0, 2**-16)
    assert {f.name: f.overflow for f in formats()} == {
        "fp32": "inf",
        "tf32": "inf",
        "fp16": "inf",
        "bf16": "inf",
        "fp8 e4m3fn": "saturates",
        "fp8 e5m2": "inf",
    }


def test_float8_e4m3fn_saturates_and_e5m2_goes_to_inf():
    x = torch.tensor([1e10, math.inf, -math.inf, 464.0, 465.0, math.nan], dtype=torch.float64)
    e4 = x.to(torch.float8_e4m3fn).to(torch.float64).tolist()
    assert e4[:5] == [448.0, 448.0, -448.0, 448.0, 448.0] and math.isnan(e4[5])
    assert x[:3].to(torch.float8_e5m2).to(torch.float64).tolist() == [math.inf, math.inf, -math.inf]
    # 464 is the tie between 448 and the would-be 480 (even 448 wins); past it, e4m3fn clamps: an overflow
    assert (by_format(464.0, "verdict")["fp8 e4m3fn"], by_format(465.0, "verdict")["fp8 e4m3fn"]) == (
        "rounded",
        "overflow",
    )
    assert (by_format(65519.0, "verdict")["fp16"], by_format(65520.0, "verdict")["fp16"]) == ("rounded", "overflow")


def tf32_reference(x: float) -> float:
    """A float32 value rounded to 11 significant bits, half to even, by math.frexp: tf32 computed another way."""
    if x == 0 or not math.isfinite(x):
        return x
    quantum = 2.0 ** (max(math.frexp(x)[1], -125) - 11)  # below 2**-126 the quantum is fixed: subnormals
    r = round(x / quantum) * quantum  # Python's round() is half to even
    return r if abs(r) <= FMT["tf32"].max else math.copysign(math.inf, x)


def tf32(x: float) -> float:
    return round_to_tf32(torch.tensor(x, dtype=torch.float32)).item()


def f32(x: float) -> float:
    return torch.tensor(x, dtype=torch.float32).item()


@pytest.mark.parametrize(
    "x",
    [
        1.0,
        1 + 2**-11,
        1 + 3 * 2**-11,
        1 + 2**-11 + 2**-23,
        -(1 + 2**-11 + 2**-23),
        0.1,
        -0.1,
        1 / 3,
        math.pi,
        65519.0,
        3e38,
        3.4e38,
        2.0**-136,
        2.0**-137,
        3 * 2.0**-137,
        1e-40,
        1.17e-38,
        0.0,
        -0.0,
        math.inf,
        -math.inf,
    ],
)
def test_tf32_matches_a_frexp_reference(x):
    x = f32(x)
    assert tf32(x) == tf32_reference(x)
    assert math.copysign(1, tf32(x)) == math.copysign(1, x)


def test_tf32_ties_go_to_even():
    assert tf32(1 + 2**-11) == 1.0 and tf32(1 + 3 * 2**-11) == 1 + 2**-9
    assert tf32(f32(3.4e38)) == 3.3995005992199223e38 and tf32(3.401e38) == FMT["tf32"].max
    assert tf32(FMT["fp32"].max) == math.inf  # past tf32's max + half an ulp: inf, as IEEE rounding gives
    assert math.isnan(tf32(math.nan))


@settings(deadline=None, max_examples=300)
@given(st.floats(width=32, allow_nan=False))
def test_tf32_matches_the_reference_everywhere(x):
    assert tf32(x) == tf32_reference(x)


def test_tf32_on_random_bit_patterns():
    bits = torch.from_numpy(np.random.default_rng(0).integers(-(2**31), 2**31, 20000, dtype=np.int64).astype(np.int32))
    x = bits.view(torch.float32)
    got = round_to_tf32(x)
    finite = torch.isfinite(x)
    assert torch.isnan(got[torch.isnan(x)]).all()
    assert got[finite].tolist() == [tf32_reference(v) for v in x[finite].tolist()]
    held = (bits & -(1 << 13)).view(torch.float32)  # already tf32: the low 13 mantissa bits are zero
    keep = ~torch.isnan(held)
    assert torch.equal(round_to_tf32(held)[keep].view(torch.int32), held[keep].view(torch.int32))  # bit for bit


def test_float64_input_is_rounded_through_float32():
    x = 1 + 2**-11 + 2**-40  # just past the midpoint of fp16's 1 and 1 + 2**-10
    assert float(np.float16(x)) == 1 + 2**-10  # NumPy rounds float64 to half once
    assert by_format(x, "result")["fp16"] == 1.0  # torch: float32 first (1 + 2**-11, a tie), then to even


V = {"fp32": "exact", "tf32": "exact", "fp16": "exact", "bf16": "exact", "fp8 e4m3fn": "exact", "fp8 e5m2": "exact"}


@pytest.mark.parametrize(
    "value, verdicts, results",
    [
        (1.0, V, dict.fromkeys(NAMES, 1.0)),
        (
            65504.0,
            V | {"bf16": "rounded", "fp8 e4m3fn": "overflow", "fp8 e5m2": "overflow"},
            {"fp16": 65504.0, "bf16": 65536.0, "fp8 e4m3fn": 448.0, "fp8 e5m2": math.inf},
        ),
        (
            70000.0,
            V
            | {
                "tf32": "rounded",
                "fp16": "overflow",
                "bf16": "rounded",
                "fp8 e4m3fn": "overflow",
                "fp8 e5m2": "overflow",
            },
            {"tf32": 70016.0, "fp16": math.inf, "bf16": 70144.0},
        ),
        (
            1e-8,
            {
                "fp32": "rounded",
                "tf32": "rounded",
                "fp16": "underflow",
                "bf16": "rounded",
                "fp8 e4m3fn": "underflow",
                "fp8 e5m2": "underflow",
            },
            {"fp16": 0.0},
        ),  # 1e-8 < 2**-25, half of fp16's smallest subnormal
        (
            1e-6,
            {
                "fp32": "rounded",
                "tf32": "rounded",
                "fp16": "subnormal",
                "bf16": "rounded",
                "fp8 e4m3fn": "underflow",
                "fp8 e5m2": "underflow",
            },
            {"fp16": 17 * 2**-24},
        ),
        (
            2.0**-24,
            V | {"fp8 e4m3fn": "underflow", "fp8 e5m2": "underflow"},
            {"fp16": 2**-24},
        ),  # subnormal in fp16, yet exact
        (math.inf, V | {"fp8 e4m3fn": "overflow"}, {"fp16": math.inf, "fp8 e4m3fn": 448.0}),
        (1e300, dict.fromkeys(NAMES, "overflow"), {"fp32": math.inf, "fp8 e4m3fn": 448.0}),
        (10**400, dict.fromkeys(NAMES, "overflow"), {"fp32": math.inf, "fp8 e4m3fn": 448.0}),  # beyond float64 too
    ],
)
def test_round_to_formats(value, verdicts, results):
    assert by_format(value, "verdict") == verdicts
    got = by_format(value, "result")
    assert {k: got[k] for k in results} == results
    errors = by_format(value, "relative_error")
    assert all(errors[k] == 0.0 for k, v in verdicts.items() if v == "exact")
    assert all(errors[k] == 1.0 for k, v in verdicts.items() if v == "underflow")


def test_round_to_formats_bits_and_relative_error():
    row = round_to_formats(1e-6)[NAMES.index("fp16")]
    assert row["bits"] == "0 00000 0000010001"  # 17 * 2**-24
    assert row["relative_error"] == pytest.approx(abs(17 * 2**-24 - 1e-6) / 1e-6, rel=1e-12)
    assert round_to_formats(-2.0)[NAMES.index("fp8 e5m2")]["bits"] == "1 10000 00"
    assert round_to_formats(1.0)[NAMES.index("tf32")]["bits"] == "0 01111111 0000000000"


def test_nan_in_nan_out():
    for row in round_to_formats(math.nan):
        assert row["verdict"] == "nan" and math.isnan(row["result"]) and math.isnan(row["relative_error"])


@pytest.mark.parametrize("value", [70000.0, 1e-6, 1e-8, 0.1, math.inf, 1e300, 2.0**-24])
def test_negative_values_mirror_positive_ones(value):
    pos, neg = round_to_formats(value), round_to_formats(-value)
    assert [r["verdict"] for r in neg] == [r["verdict"] for r in pos]
    assert [r["result"] for r in neg] == [-r["result"] for r in pos]
    assert [r["bits"][0] for r in neg] == ["1"] * len(NAMES)


@pytest.mark.parametrize("value", ["0.1", None, True, 1 + 2j, [1.0], torch.tensor(1.0)])
def test_non_numbers_are_refused(value):
    with pytest.raises(ValueError, match="real number"):
        round_to_formats(value)


@pytest.mark.parametrize("value", [np.float32(0.1), np.float16(3.0), 7, -(10**400)])
def test_any_real_number_is_accepted(value):
    assert len(round_to_formats(value)) == len(NAMES)


def sign(draw):
    return draw(st.sampled_from([1.0, -1.0]))


@pytest.mark.parametrize("name", NAMES)
@settings(deadline=None, max_examples=150)
@given(data=st.data())
def test_relative_error_is_at_most_half_eps_in_the_normal_range(name, data):
    f = FMT[name]
    x = sign(data.draw) * data.draw(st.floats(min_value=f.smallest_normal, max_value=f.max, width=32))
    row = round_to_formats(x)[NAMES.index(name)]
    assert row["verdict"] in ("exact", "rounded")
    assert row["relative_error"] <= f.eps / 2


@pytest.mark.parametrize("name", NAMES)
@settings(deadline=None, max_examples=150)
@given(data=st.data())
def test_float64_values_pay_for_the_float32_detour(name, data):
    f = FMT[name]
    x = sign(data.draw) * data.draw(st.floats(min_value=f.smallest_normal, max_value=f.max))
    row = round_to_formats(x)[NAMES.index(name)]
    assert row["result"] == round_to_formats(f32(x))[NAMES.index(name)]["result"]
    assert row["relative_error"] <= f.eps / 2 + 2**-24 * (1 + f.eps / 2)  # two roundings, each to nearest


def test_number_line_figure():
    fig = number_line_figure(1e-8, 2.0**16)
    bars, markers = fig.data[: len(NAMES)], fig.data[len(NAMES) :]
    assert [b.type for b in bars] == ["bar"] * len(NAMES) and [m.type for m in markers] == ["scatter"] * 2
    for bar, f in zip(bars, formats()):
        assert list(bar.y) == [f.name, f.name]
        base = np.asarray(bar.base, dtype=np.float64)  # Plotly keeps `base` (numbers or dates) as objects
        np.testing.assert_array_equal(base, np.log2([f.smallest_subnormal, f.smallest_normal]))
        np.testing.assert_allclose(base + bar.x, np.log2([f.smallest_normal, f.max]), rtol=1e-12)
    gradient, scaled = markers
    assert set(gradient.x) == {math.log2(1e-8)} and set(scaled.x) == {math.log2(1e-8 * 2**16)}
    assert dict(zip(gradient.y, gradient.marker.symbol)) == {
        "fp32": "circle",
        "tf32": "circle",
        "fp16": "x",
        "bf16": "circle",
        "fp8 e4m3fn": "x",
        "fp8 e5m2": "x",
    }
    assert dict(zip(scaled.y, scaled.marker.symbol))["fp16"] == "circle"
    notes = [a.text for a in fig.layout.annotations]
    assert "fp16 (underflow)" in notes[0] and "fp16 (underflow)" not in notes[1]
    assert '"bdata"' in fig.to_json()  # NumPy arrays travel as typed arrays


def test_number_line_figure_without_markers_or_with_unplottable_ones():
    assert len(number_line_figure().data) == len(NAMES) and not number_line_figure().layout.annotations
    assert len(number_line_figure(1e-3).data) == len(NAMES) + 1
    fig = number_line_figure(0.0, 2.0**16)
    assert len(fig.data) == len(NAMES) and all("no place" in a.text for a in fig.layout.annotations)
    assert len(number_line_figure(math.nan, 2.0).data) == len(NAMES)
    fig = number_line_figure(-1e300, 2.0**126)  # the scaled value overflows float64 itself
    assert len(fig.data) == len(NAMES) + 1 and "no place" in fig.layout.annotations[1].text


def test_importable_without_streamlit():
    code = "import sys, amp_core.analysis.formats as f; f.round_to_formats(1.0); print('streamlit' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False"]
