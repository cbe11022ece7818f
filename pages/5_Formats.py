"""Formats: what fp32, tf32, fp16, bf16 and fp8 can hold, measured with torch, and where a gradient lands."""

import math
import sys

import pandas as pd
import streamlit as st

import ui_common  # first: it does the heavy imports once (see there)
from amp_core.serve import formats_service

st.set_page_config(page_title="Formats · AMP Explorer", page_icon="🔢", layout="wide")
st.title("Number formats")
st.caption(
    "Every number here is computed by torch (`torch.finfo`, bit patterns, real casts), none is typed in. "
    "tf32 has no torch dtype: it is emulated (float32 rounded to 10 mantissa bits, to nearest even). "
    "The inputs live in the URL: copy it to share this view."
)

# torch measures every number below, in one child process the server's sessions share (the server imports no torch)
SERVICE = formats_service.service()


def from_torch(ask, *args):
    """`ask(*args)` answered by the child; a spinner while torch loads in it, a one-line error if it cannot answer."""
    first = "" if SERVICE.is_running() else " (once per server: torch is loading)"
    try:
        with st.spinner(f"Measuring with torch in a child process{first}…"):
            return ask(*args)
    except formats_service.FormatsServiceError as err:
        st.error(f"The formats could not be measured: {err}. Reload the page to try again.")
        st.stop()


FMTS = from_torch(SERVICE.formats)
VERDICTS = from_torch(SERVICE.verdicts)
BIG = sys.float_info.max
LINK = {"value": (float, -BIG, BIG), "gradient": (float, -BIG, BIG), "scale_log2": (int, -24, 126)}
VERDICT_STYLE = {
    "exact": "background-color: rgba(0, 204, 150, 0.25)",
    "subnormal": "background-color: rgba(255, 215, 0, 0.35)",
    "underflow": "background-color: rgba(239, 85, 59, 0.35)",
    "overflow": "background-color: rgba(239, 85, 59, 0.35)",
}


def accepted(text: str, kind: type, lo: float, hi: float) -> bool:
    try:
        return lo <= kind(text) <= hi  # NaN fails both comparisons
    except (ValueError, OverflowError):
        return False


for name, (kind, lo, hi) in LINK.items():
    given = st.query_params.get(name)
    if given is not None and not accepted(given, kind, lo, hi):
        st.warning(f"Ignored the link's `{name}`: it is not a number this page accepts.")
        del st.query_params[name]

properties = pd.DataFrame(
    [
        {
            "format": f.name,
            "torch dtype": f.dtype_name,
            "bits": f.bits,
            "exponent bits": f.exponent_bits,
            "mantissa bits": f.mantissa_bits,
            "largest": f"{f.max:.6g}",
            "smallest normal": f"{f.smallest_normal:.6g}",
            "smallest subnormal": f"{f.smallest_subnormal:.6g}",
            "machine eps": f"{f.eps:.6g}",
            "log2 range": (
                f"{math.log2(f.smallest_subnormal):.0f} … {math.log2(f.smallest_normal):.0f} … {math.floor(100 * math.log2(f.max)) / 100}"
            ),
            "above largest": {"saturates": f"±{f.max:g}"}.get(f.overflow, f.overflow),
            "what for": f.note,
        }
        for f in FMTS
    ]
)
st.table(properties, hide_index=True)  # static: its cells wrap, so the notes read whole (a dataframe cuts them off)

st.subheader("Round a value")
value = st.number_input(
    "Value",
    value=0.1,
    format="%.9g",
    key="value",
    bind="query-params",
    help="Cast by torch from float64 to each format (through float32, as torch does).",
)
rows = pd.DataFrame(from_torch(SERVICE.round_to_formats, value))
st.dataframe(
    rows.style.map(lambda v: VERDICT_STYLE.get(v, ""), subset=["verdict"]).format(
        {"result": repr, "relative_error": "{:.3g}"}
    ),
    hide_index=True,
    width="stretch",
    column_config=ui_common.fitted_columns(
        rows.assign(result=rows["result"].map(repr)),
        {"relative_error": "relative error", "bits": "bits (sign exponent mantissa)"},
    ),
)
st.caption(" · ".join(f"**{v}**: {meaning}" for v, meaning in VERDICTS.items()))

st.subheader("Where a gradient lands")
c1, c2 = st.columns(2)
gradient = c1.number_input("Gradient value", value=1e-8, format="%.6g", key="gradient", bind="query-params")
# This one keeps its URL value itself instead of bind="query-params": Streamlit 1.67 seeds a bound int
# number_input from the link with int(value) before its range check, so `?scale_log2=1e400` (float inf)
# raised OverflowError inside Streamlit, and a page cannot drop the value first (a bound widget reads the
# URL the session started with). The link was checked above; a valid one sets the widget.
if (linked := st.query_params.get("scale_log2")) is not None:
    st.session_state["scale_log2"] = int(linked)
st.session_state.setdefault("scale_log2", 16)


def scale_to_url() -> None:
    if st.session_state["scale_log2"] == 16:
        st.query_params.pop("scale_log2", None)  # the default stays out of the link, as bound widgets do
    else:
        st.query_params["scale_log2"] = str(st.session_state["scale_log2"])


scale_log2 = c2.number_input(
    "Loss scale, log2",
    min_value=-24,
    max_value=126,
    step=1,
    key="scale_log2",
    on_change=scale_to_url,
    help="torch's GradScaler starts at 2^16.",
)
st.plotly_chart(from_torch(SERVICE.number_line_figure, gradient, 2.0**scale_log2), key="number-line")

by_name = {f.name: f for f in FMTS}
fp16, bf16 = by_name["fp16"], by_name["bf16"]
st.markdown(
    f"""
**Why fp16 needs loss scaling.** fp16's smallest subnormal is $2^{{{math.log2(fp16.smallest_subnormal):.0f}}}$
≈ {fp16.smallest_subnormal:.3g} (normals start at $2^{{{math.log2(fp16.smallest_normal):.0f}}}$ ≈ {fp16.smallest_normal:.3g}):
a gradient smaller than half of that flushes to zero in the backward pass, and one below the normals keeps only a
few bits. Multiplying the loss by a scale $S$ multiplies every gradient by $S$ and lifts them into fp16's range; the
optimizer step divides by $S$ again in fp32. The top of the range bounds $S$: above {fp16.max:g} a gradient becomes
inf, the GradScaler skips that step and halves $S$.

**Why bf16 doesn't.** bf16 keeps fp32's 8 exponent bits: its normals reach down to
$2^{{{math.log2(bf16.smallest_normal):.0f}}}$ ≈ {bf16.smallest_normal:.3g}, like fp32's, so gradients do not underflow.
It pays with precision: {bf16.mantissa_bits} mantissa bits, eps = $2^{{{math.log2(bf16.eps):.0f}}}$ against fp16's
$2^{{{math.log2(fp16.eps):.0f}}}$.
"""
)
