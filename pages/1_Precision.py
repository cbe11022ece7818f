"""Precision: the four toggles -> the project's rule -> what Lightning really does with it."""

import pandas as pd
import streamlit as st

import ui_common  # first: it does the heavy imports once (see there)

st.set_page_config(page_title="Precision · AMP Explorer", page_icon="🎚️", layout="wide")
st.title("Precision resolver")
st.caption(
    "Toggle the inputs and follow the decision: first the project's rule (`compute_effective_precision`), "
    "then Lightning itself, asked in a child process (its accelerator connector builds the precision plugin; its own warnings "
    "are captured). The toggles live in the URL: copy it to share this view."
)

precision_table = ui_common.precision_table()  # from a child process: the server imports no Lightning
VALUES = precision_table.values
USE_AMP = {"None": None, "True": True, "False": False}

# Checked here, before the widgets bind to them: Streamlit drops a bound value it cannot use
# (cuda=yes, gpu=0) without a word, and a bound key cannot be deleted after its widget exists.
# Checkboxes read true/false in any case, as Streamlit's own URL parser does.
for name, allowed, fold in (
    ("precision", VALUES, str),
    ("use_amp", tuple(USE_AMP), str),
    ("cuda", ("true", "false"), str.lower),
    ("gpu", ("true", "false"), str.lower),
):
    given = st.query_params.get(name)
    if given is not None and fold(given) not in allowed:
        st.warning(f"Ignored the link's {name} value: it is not one of the allowed values ({', '.join(allowed)}).")
        del st.query_params[name]

c1, c2, c3, c4 = st.columns(4)
requested = c1.selectbox(
    "Requested precision",
    VALUES,
    index=VALUES.index("16-mixed"),
    key="precision",
    bind="query-params",
    help="Every value Lightning accepts, legacy aliases included ('16', 'bf16', '32', '64').",
)
use_amp_label = c2.selectbox(
    "use_amp",
    tuple(USE_AMP),
    key="use_amp",
    bind="query-params",
    help="None keeps the requested precision; True asks for fp16 AMP on a usable GPU; False forces fp32.",
)
cuda_available = c3.checkbox("CUDA available", value=False, key="cuda", bind="query-params")
use_gpu = c4.checkbox("Use GPU", value=True, key="gpu", bind="query-params")
use_amp = USE_AMP[use_amp_label]

r = precision_table.resolve(requested, use_amp, cuda_available, use_gpu)
st.caption(
    "The project's rule, kept as written: with use_amp None it passes the requested precision on; with use_amp True on a "
    "usable GPU it returns '16' whatever was requested, so a **bf16** request (bf16-mixed, bf16) becomes fp16 AMP with a "
    "GradScaler, and Lightning then warns about the legacy '16'; otherwise it returns '32'."
)
if use_amp is True and cuda_available and use_gpu and "bf16" in str(requested):
    st.warning(
        f"The rule turned this bf16 request ({requested!r}) into '16': it trains in fp16 with loss scaling, not in bf16. "
        "To train in bf16, leave use_amp None."
    )

st.subheader("Resolved mode")
m1, m2, m3, m4 = st.columns(4)
m1.metric("Project rule gives", repr(r.rule_precision))
m2.metric(
    "Lightning trains in", r.final_precision or "error", delta="fallback" if r.fallback else None, delta_color="off"
)
m3.metric("Autocast dtype", (r.autocast_dtype or "none").replace("torch.", ""))
m4.metric("GradScaler", "yes" if r.grad_scaler else "no")

if r.simulated:
    st.info(
        "This machine has no CUDA, so Lightning was asked with CUDA availability simulated: this is what it does on a "
        f"CUDA machine. Here, Lightning itself says: *{r.local_error}*"
    )
for text in r.warnings:
    st.warning(f"Lightning warns: {text}")
if r.error:
    st.error(f"Lightning refuses this configuration: {r.error}")

# A static table: its cells wrap, so every "why" reads whole (a dataframe cuts long text off).
st.table(pd.DataFrame(r.steps(), columns=["step", "value", "why"]), hide_index=True)

st.subheader("Truth table")
show_all = st.toggle("Every requested precision (otherwise only the selected one)", value=False)
rows = precision_table.truth_table(None if show_all else [requested])
table = pd.DataFrame(
    [
        {
            "requested": repr(x.requested),
            "use_amp": str(x.use_amp),
            "CUDA available": x.cuda_available,
            "use GPU": x.use_gpu,
            "rule": repr(x.rule_precision),
            "accelerator": x.accelerator + (" (simulated)" if x.simulated else ""),
            "Lightning": x.lightning_precision,
            "final": x.final_precision or "error",
            "autocast": (x.autocast_dtype or "none").replace("torch.", ""),
            "scaler": x.grad_scaler,
            "warning": " / ".join(x.warnings),
        }
        for x in rows
    ]
)
current = [
    x.requested == requested and x.use_amp == use_amp and x.cuda_available == cuda_available and x.use_gpu == use_gpu
    for x in rows
]
st.dataframe(
    table.style.apply(
        lambda row: ["background-color: rgba(255, 215, 0, 0.35)" if current[row.name] else "" for _ in row], axis=1
    ),
    hide_index=True,
    width="stretch",
    column_config=ui_common.fitted_columns(table),
)
st.caption(f"{len(rows)} combinations; the highlighted row is the one selected above.")
