"""AMP Explorer: the home page. Fast by design: no torch and no Lightning in this script."""

import streamlit as st

import ui_common  # first: it does the heavy imports once (see there)
from amp_core.serve.hardware import summary_lines

st.set_page_config(page_title="AMP Explorer", page_icon="⚡", layout="wide")

st.title("AMP Explorer")
st.markdown(
    """
**Automatic mixed precision (AMP)** runs most of a model's arithmetic in a 16-bit float (fp16 or bf16)
while the weights stay in fp32: matrix units run faster and activations take half the memory.

- **bf16** has fp32's range with fewer digits: it needs no loss scaling.
- **fp16** has more digits but a tiny range: small gradients underflow to zero. A **GradScaler** multiplies
  the loss by a large *loss scale* before backward, unscales the gradients before the optimizer step,
  **skips** any step whose gradients overflowed (inf/NaN) and halves the scale, and doubles it again after a
  run of clean steps. The loss-scale trajectory is the heartbeat of an fp16 run: this app shows it.
"""
)

st.subheader("This machine")


@st.fragment(run_every=1.0 if ui_common.launcher().hardware is None else None)
def hardware() -> None:
    facts = ui_common.launcher().hardware
    if facts is None:
        st.caption("Reading the hardware (a child process imports torch)…")
        return
    for line in summary_lines(facts):
        st.markdown(f"- {line}")
    if facts.get("torch"):
        st.caption(f"torch {facts['torch']} · Python {facts.get('python', '?')}")


hardware()

st.subheader("Explore")
st.page_link("pages/1_Precision.py", label="Precision: which mode does a setting really give?", icon="🎚️")
st.page_link("pages/2_Train.py", label="Train: start a short run and watch its loss scale live", icon="🏃")
st.page_link(
    "pages/3_Runs.py",
    label="Runs: replay, overlay and export recorded runs; gradients vs fp16, scaler what-ifs, advice",
    icon="🗂️",
)
st.page_link(
    "pages/4_Compare.py",
    label="Compare: the same model under 32-true, 16-mixed and bf16-mixed; speed, memory, loss, against AMP's targets",
    icon="⚖️",
)
st.page_link(
    "pages/5_Formats.py",
    label="Formats: what fp32, tf32, fp16, bf16 and fp8 can hold, and where a gradient lands",
    icon="🔢",
)
st.page_link(
    "pages/6_Inside_the_step.py",
    label="Inside the step: the dtype every op really ran in, and fp16's real underflow in backward",
    icon="🔬",
)
