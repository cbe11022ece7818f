"""Runs: every recorded run; replay, overlay and export; runs still going are shown live."""

import pandas as pd
import streamlit as st

import ui_common
from amp_core import charts
from amp_core.runs import ACTIVE_STATES, list_runs, metrics_csv, metrics_json, summarize

st.set_page_config(page_title="Runs · AMP Explorer", page_icon="🗂️", layout="wide")
st.title("Runs")
st.caption(f"Run records in `{ui_common.runs_dir()}` (set `AMP_RUNS_DIR` to change it), newest first.")

runs = list_runs(ui_common.runs_dir())
if not runs:
    st.info("No runs yet. Start one on the Train page, or with `python -m amp_core.train`.")
    st.stop()

by_id = {r.id: r for r in runs}
rows = pd.DataFrame([summarize(r) for r in runs])
st.dataframe(
    rows[["id", "state", "precision", "accelerator", "steps", "max_steps", "skipped", "final_loss_scale", "final_loss", "created_at", "problems"]],
    hide_index=True,
    width="stretch",
    column_config={
        "final_loss_scale": st.column_config.NumberColumn("final loss scale", format="%.4g"),
        "final_loss": st.column_config.NumberColumn("final loss", format="%.4f"),
        "max_steps": st.column_config.NumberColumn("of steps"),
    },
)

given = st.query_params.get("run")
if given is not None and given not in by_id:
    st.warning("The run named in the link is not in this runs directory; it was ignored.")
    del st.query_params["run"]


def label(run_id: str) -> str:
    r = by_id[run_id]
    return f"{run_id} · {r.precision} · {r.state}"


selected = st.selectbox("Open a run", list(by_id), format_func=label, key="run", bind="query-params")
overlay = st.multiselect("Overlay other runs", [i for i in by_id if i != selected], format_func=label)
run = by_id[selected]

for problem in run.problems:
    st.warning(f"This record is damaged: {problem}. What could be read is shown.")

if run.state in ACTIVE_STATES and not overlay:
    paused = st.toggle("Pause live updates", help="Stops redrawing so you can zoom and hover; the run goes on.")
    ui_common.live_run(selected, key="runs", paused=paused)
else:
    st.markdown(f"**{ui_common.STATE_BADGES.get(run.state, run.state)}** · {len(run.metrics)} steps · "
                f"{run.skipped_steps} skipped · {run.config.get('amp_path', '')}")
    if run.status.get("error"):
        st.error(run.status["error"])
    series = [(i, by_id[i].metrics) for i in [selected, *overlay]]
    ui_common.run_charts(series, key="replay")

with st.expander("Configuration and status"):
    st.json({"config": run.config, "status": {k: v for k, v in run.status.items() if k != "traceback"}}, expanded=False)

c1, c2, c3 = st.columns(3)
c1.download_button("Metrics CSV", lambda: metrics_csv(run), file_name=f"{selected}.csv", mime="text/csv")
c2.download_button("Record JSON", lambda: metrics_json(run), file_name=f"{selected}.json", mime="application/json")
c3.download_button(
    "Loss-scale chart HTML",
    lambda: charts.figure_html(charts.loss_scale_figure([(i, by_id[i].metrics) for i in [selected, *overlay]])),
    file_name=f"{selected}-loss-scale.html",
    mime="text/html",
)
