"""Compare: the same model, data and seed under several precisions, side by side."""

import pandas as pd
import streamlit as st
from streamlit.errors import StreamlitPageNotFoundError

import ui_common  # first: it does the heavy imports once (see there)
from amp_core.analysis import compare
from amp_core.record import ACTIVE_STATES
from amp_core.training.cli import ConfigError
from amp_core.training.config import widget_bounds

st.set_page_config(page_title="Compare · AMP Explorer", page_icon="⚖️", layout="wide")
st.title("Compare precisions")
st.caption(
    "One run per precision, the same model, data and seed, one after another on the same device. Each is a normal run "
    "(replay it on the Runs page); its median step time (after a warm-up) and the memory it adds are measured in its own process. "
    "A small model is overhead-bound and AMP cannot help it; widen it, or raise the batch, and watch the speedup appear."
)

launcher = ui_common.launcher()
on_cuda = bool(launcher.cuda_devices)
options = compare.default_variants(True) + ["16-true", "bf16-true"]
# Starting sizes: on a GPU big enough for the matmuls to matter; on a CPU small enough that emulated fp16 ends soon.
start_with = {
    True: dict(steps=100, batch=1024, hidden=4096, depth=4),
    False: dict(steps=50, batch=128, hidden=512, depth=4),
}[on_cuda]

workload = ui_common.workload_select("compare_workload")

with st.form("compare"):
    variants = st.multiselect(
        "Precisions",
        options,
        default=compare.default_variants(on_cuda),
        help=f"{compare.BASELINE} always runs: it is the baseline. {compare.TF32} (fp32 with TF32 matmuls) needs a CUDA GPU.",
    )
    c1, c2, c3, c4 = st.columns(4)
    # min_value stays 1: fewer steps than a comparison can time get a message naming the minimum, not a silent clamp.
    steps = c1.number_input(
        "Steps",
        min_value=1,
        max_value=100_000,
        value=start_with["steps"],
        step=10,
        help=f"At least {compare.min_comparison_steps()}: the first steps are a warm-up, and the median step time needs "
        f"{compare.MIN_TIMED_STEPS} timed steps after it.",
    )
    batch_size = c2.number_input(
        "Batch size",
        min_value=1,
        max_value=65536,
        value=start_with["batch"] if workload == "mlp" else widget_bounds("batch_size", workload)["value"],
    )
    if workload == "mlp":
        hidden = c3.number_input(
            "Hidden width",
            min_value=1,
            max_value=65536,
            value=start_with["hidden"],
            help="128: overhead-bound; 4096 and more: matmul-bound",
        )
        depth = c4.number_input("Hidden layers", min_value=1, max_value=64, value=start_with["depth"])
        settings = {"hidden": int(hidden), "depth": int(depth)}
    else:
        settings = ui_common.workload_inputs(workload)
    if not on_cuda:
        st.caption(
            "On a CPU without fp16 units, 16-mixed is emulated: at widths of 1024 and more each of its steps can take "
            "tens of times longer than 32-true's. bf16-mixed is the CPU's AMP."
        )
    start = st.form_submit_button("Run comparison", type="primary")

if start:
    try:
        configs = compare.plan(
            variants, on_cuda=on_cuda, max_steps=int(steps), batch_size=int(batch_size), workload=workload, **settings
        )
        for config in configs:
            launcher.submit(config)  # queued in order; the launcher runs one per device at a time
    except (ConfigError, ValueError) as e:
        st.error(f"Cannot start this comparison: {e}")
    else:
        st.session_state["group"] = st.query_params["group"] = configs[0].compare_group

groups = {g["group"]: g for g in compare.list_groups(ui_common.runs_dir(), include_recordings=True)}
given = st.query_params.get("group")
if given is not None and given not in groups:
    st.warning("The comparison named in the link is not in this runs directory; it was ignored.")
    del st.query_params["group"]
elif given is not None:
    st.session_state["group"] = given  # the link names the one shown (the page keeps the two in step)
if not groups:
    st.info("No comparison yet: choose the precisions and the model size, and press **Run comparison**.")
    st.stop()

# The page keeps `?group=` itself rather than bind="query-params": a bound select leaves its default
# (the first option, here the newest comparison) out of the URL, so the link of a new comparison named
# nothing and showed whichever comparison was newest when it was opened.
group = st.selectbox(
    "Comparison",
    list(groups),
    key="group",
    help="Newest first; the link names the one shown. 🎞: a shipped recording.",
    format_func=lambda g: f"🎞 {g} (recording)" if groups[g]["recording"] else g,
    on_change=lambda: st.query_params.update(group=st.session_state["group"]),
)
if st.query_params.get("group") != group:
    st.query_params["group"] = group
st.caption(
    f"{', '.join(groups[group]['variants'])} · {groups[group]['settings']} · started {groups[group]['created_at'][:19].replace('T', ' ')} UTC"
)
# Live while a run is queued or going; a damaged record's "unknown" state is not a run that will end.
live = any(s in ACTIVE_STATES for s in groups[group]["states"])


@st.fragment(run_every=ui_common.LIVE_EVERY_S if live else None)
def progress_and_table() -> None:
    summary = compare.summarize_group(compare.group_runs(ui_common.runs_dir(), group, include_recordings=True))
    rows = summary["rows"]
    going = [r for r in rows if r["state"] in ACTIVE_STATES]
    if going:  # a damaged record (state unknown) is not going: it neither counts as running nor holds the page live
        now = ", ".join(
            f"{r['variant']} {ui_common.STATE_BADGES.get(r['state'], r['state'])} (step {r['steps']})" for r in going
        )
        done = len(rows) - len(going)
        st.progress(done / max(1, len(rows)), text=f"{done} of {len(rows)} runs ended · {now}")
        if st.button("Stop comparison"):
            st.toast("; ".join(f"{r['variant']}: {launcher.stop(r['run_id'])}" for r in going))
    unit, factor = compare.flops_unit(rows)
    table = pd.DataFrame(rows).assign(
        peak_share=[compare.peak_label(r) for r in rows],
        flops=[None if r["tflops"] is None else r["tflops"] * factor for r in rows],
    )
    # The verdict and its inputs first: a wide table scrolls, and these are what a reader came for.
    columns = [
        "variant",
        "state",
        "verdict",
        "timed_steps",
        "median_step_ms",
        "speedup",
        "memory_mib",
        "memory_ratio",
        "final_loss",
        "loss_diff",
        "steps_per_s",
        "samples_per_s",
        "flops",
        "peak_share",
        "skipped_steps",
        "run_id",
    ]
    too_few = table["verdict"] == compare.TOO_FEW_STEPS
    st.dataframe(
        # Rows with too few timed steps are greyed: shown, but not a measurement to judge by.
        table[columns].style.apply(
            lambda row: ["color: #9a9a9a"] * len(row) if too_few[row.name] else [""] * len(row), axis=1
        ),
        hide_index=True,
        width="stretch",
        column_config={
            "timed_steps": st.column_config.NumberColumn(
                "timed steps",
                help=f"steps in the median, after the warm-up; {compare.MIN_TIMED_STEPS} or more for a verdict",
            ),
            "median_step_ms": st.column_config.NumberColumn("step ms (median)", format="%.2f"),
            "steps_per_s": st.column_config.NumberColumn("steps/s", format="%.3g"),
            "samples_per_s": st.column_config.NumberColumn("samples/s", format="%.0f"),
            "flops": st.column_config.NumberColumn(f"matmul {unit}", format="%.3g"),
            "peak_share": st.column_config.TextColumn(
                "of GPU peak",
                help="achieved matmul throughput over the GPU's dense peak for the dtype; n/a on a CPU or an unknown GPU",
            ),
            "memory_mib": st.column_config.NumberColumn(
                f"memory MiB: {summary['memory_kind']}",
                format="%.1f",
                help="on a GPU the CUDA allocator's peak; on a CPU the resident memory the run added (see the notes)",
            ),
            "final_loss": st.column_config.NumberColumn("final loss", format="%.4f"),
            "loss_diff": st.column_config.NumberColumn("loss diff", format="%+.4f"),
            "skipped_steps": st.column_config.NumberColumn("skipped"),
            "speedup": st.column_config.NumberColumn("speedup", format="%.2fx"),
            "memory_ratio": st.column_config.NumberColumn("memory", format="%.2fx"),
        },
    )
    if too_few.any():
        st.warning(
            f"Too few timed steps for a verdict ({compare.MIN_TIMED_STEPS} needed): "
            + ", ".join(table["variant"][too_few])
            + f". Run the comparison again with {compare.min_comparison_steps()} steps or more."
        )
    if live and not going:
        st.rerun(scope="app")  # all runs ended: draw the charts once, without the timer


progress_and_table()
if live:
    st.stop()

summary = compare.summarize_group(compare.group_runs(ui_common.runs_dir(), group, include_recordings=True))
t = summary["targets"]
st.caption(
    f"Targets against {summary['baseline']}: speedup ≥ {t['speedup']}x, memory reduction ≥ {t['memory_reduction']:.0%}, "
    f"|loss diff| < {t['loss_diff']}. Verdict per run: "
    + "; ".join(f"**{r['variant']}** {r['verdict']}" for r in summary["rows"] if r["verdict"] != "baseline")
)
if summary["notes"]:
    st.info("\n".join(f"- {note}" for note in summary["notes"]))
c1, c2 = st.columns(2)
c1.plotly_chart(compare.bar_figure(summary, "median_step_ms"), key="cmp-step")
c2.plotly_chart(compare.bar_figure(summary, "tflops"), key="cmp-tflops")
c1.plotly_chart(compare.bar_figure(summary, "memory_mib"), key="cmp-memory")
c2.plotly_chart(compare.ratio_figure(summary), key="cmp-ratio")
runs = compare.group_runs(ui_common.runs_dir(), group, include_recordings=True)
st.plotly_chart(compare.loss_figure(runs), key="cmp-loss")
st.caption("Open each run on the Runs page:")
for r in runs:
    label = f"{compare.variant_of(r)} · {r.id}"
    try:  # the app's own navigation: the link keeps the server's base path and opens the Runs page in this tab
        st.page_link("pages/3_Runs.py", label=label, query_params={"run": r.id})
    except (
        StreamlitPageNotFoundError
    ):  # this page run on its own (`streamlit run pages/4_Compare.py`): no Runs page to link
        st.caption(f"{label} (open it on the Runs page of the app)")
