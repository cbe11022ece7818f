"""Inside the step: the dtype every op of one training step ran in, and fp16's real underflow in backward."""

import pandas as pd
import streamlit as st

import ui_common  # first: it does the heavy imports once (see there)
from amp_core.inside.autocast_map import NEAR_OVERFLOW_LOG2, module_table, probe_map, size_problem, summarize
from amp_core.inside.backward_underflow import binade_figure, underflow_rows

st.set_page_config(page_title="Inside the step · AMP Explorer", page_icon="🔬", layout="wide")
st.title("Inside the step")
st.caption(
    "One real training step under the precision plugin a run would use, recorded op by op (a TorchDispatchMode sees every "
    "aten op, forward and backward, in the dtype it really ran in). It is taken in a child process, on a copy of the model, "
    "and kept per workload, precision and device. CPU and CUDA autocast differ: the map says where it was taken."
)

cuda = bool(ui_common.launcher().cuda_devices)
c1, c2, c3, c4 = st.columns([2, 2, 2, 1])
with c1:
    workload = ui_common.workload_select("workload")
precision = c2.selectbox("Precision", ["16-mixed", "bf16-mixed"], key="precision")
device = c3.selectbox("Device", ["cpu", "cuda"] if cuda else ["cpu"], key="device")
again = c4.button("Take it again", help="Discard the kept map and record a fresh step")
settings = ui_common.workload_inputs(workload)
if workload == "user" and not settings.get("model"):
    st.info("Name your LightningModule (pkg.module:attr) to map one of its steps.")
    st.stop()

if problem := size_problem(workload, settings, device):
    st.warning(f"No map for this: {problem}.")
    st.stop()

with st.spinner(f"Recording one {precision} step of {workload} on {device} in a child process…"):
    m = probe_map(
        workload, precision, device, settings, cache_dir=ui_common.runs_dir() / ".autocast_maps", refresh=again
    )
if m.get("error"):
    st.error(f"The map could not be taken: {m['error']}")
    st.stop()

s = summarize(m)
st.info(
    f"Taken on **{s['device']}** ({s['device_name']}), torch {m['torch']}, plugin {m['precision_plugin']}: {m['amp_path']}."
)
k1, k2, k3, k4 = st.columns(4)
k1.metric(
    "FLOPs in 16 bits",
    f"{s['share_flops_16bit']:.1%}",
    help="matmul, convolution and attention FLOPs whose inputs were all 16-bit",
)
k2.metric("Forward ops", s["ops"]["forward"], help=f"{s['compute_ops']['forward']} of them not views")
k3.metric("Backward ops", s["ops"]["backward"], help=f"{s['compute_ops']['backward']} of them not views")
k4.metric(
    "Casts inserted",
    sum(sum(c.values()) for p, c in s["casts"].items() if p != "optimizer"),
    help="_to_copy ops that changed the dtype, forward and backward",
)
left, right = st.columns(2)
left.markdown(
    "**Forward ops kept in float32** (not casts or views): "
    + (", ".join(f"`{op}` ×{n}" for op, n in s["fp32_forward_ops"].items()) or "none")
)
right.markdown(
    "**Casts (`_to_copy`)**: "
    + ("; ".join(f"{p}: " + ", ".join(f"{k} ×{n}" for k, n in c.items()) for p, c in s["casts"].items()) or "none")
)

st.subheader("Per module")
f1, f2 = st.columns([3, 2])
needle = f1.text_input("Filter modules", key="module_filter", placeholder="e.g. net.2")
phases = f2.multiselect(
    "Phases", ["forward", "loss scaling", "backward", "optimizer"], default=["forward", "backward"], key="phases"
)
table = pd.DataFrame(module_table(m))
table = table[table["phase"].isin(phases) & table["module"].str.contains(needle, regex=False)]
marked = table["near overflow"].to_numpy()
st.dataframe(
    table.style.apply(
        lambda col: ["background-color: rgba(239, 85, 59, 0.35)" if x else "" for x in marked],
        subset=["16-bit headroom (log2)"],
    ),
    hide_index=True,
    width="stretch",
    key="modules",
)
st.caption(
    f"16-bit headroom: log2(largest value of the format) − log2(largest |output|) of the module's 16-bit outputs; red "
    f"where it is under {NEAR_OVERFLOW_LOG2} (the output came within 2^{NEAR_OVERFLOW_LOG2} of overflow; fp16's largest is 65504). "
    "Backward ops are attributed through autograd's graph to the module whose forward created each node."
)

st.subheader("fp16's real underflow in backward")
rows = underflow_rows(m["underflow"])
st.dataframe(
    pd.DataFrame(rows),
    hide_index=True,
    width="stretch",
    key="underflow",
    column_config={
        c: st.column_config.NumberColumn(format="percent") for c in ("exactly zero", "subnormal", "inf/NaN")
    },
)
if any(r["dtype"] == "float16" for r in rows):
    st.plotly_chart(binade_figure(m["underflow"]), key="binades")
st.caption(
    "The 16-bit outputs of backward ops as they ran (activation gradients, and weight gradients before their cast to the "
    "parameters' float32), not the fp32 parameter gradients the Runs page histograms. For fp16 the same step runs twice: "
    "at loss scale 1 and at the run's scale, so the difference is what the loss scale saves here. Exact zeros include "
    "values that were zero anyway."
)
