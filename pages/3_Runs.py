"""Runs: every recorded run; replay, overlay and export; runs still going are shown live."""

import pandas as pd
import streamlit as st

import ui_common  # first: it does the heavy imports once (see there)
from amp_core import charts
from amp_core.analysis.advice import advise, scaler_expectation
from amp_core.analysis.gradients import scale_at, shares
from amp_core.analysis.scaler_policies import (
    HysteresisPolicy,
    TorchGradScalerPolicy,
    overflow_model_for,
    replay,
    replay_own_policy,
)
from amp_core.record import (
    ACTIVE_STATES,
    list_runs,
    load_histograms,
    load_rank_scales,
    metrics_csv,
    metrics_json,
    ranks_agree,
    summarize,
)
from amp_core.record.skips import skip_hover, skipped_rows
from amp_core.training.preflight import failure_hint

st.set_page_config(page_title="Runs · AMP Explorer", page_icon="🗂️", layout="wide")
st.title("Runs")
st.caption(
    f"Run records in `{ui_common.runs_dir()}` (set `AMP_RUNS_DIR` to change it), newest first, "
    "and the recordings shipped in `demo_runs/` (🎞: real runs made elsewhere, read-only)."
)

runs = list_runs(ui_common.runs_dir(), include_recordings=True)
if not runs:
    st.info("No runs yet. Start one on the Train page, or with `python -m amp_core.train`.")
    st.stop()

by_id = {r.id: r for r in runs}
rows = pd.DataFrame([summarize(r) for r in runs])
st.dataframe(
    rows.assign(recording=rows["recording"].map({True: "🎞", False: ""}))[
        [
            "recording",
            "id",
            "state",
            "precision",
            "accelerator",
            "steps",
            "max_steps",
            "skipped",
            "final_loss_scale",
            "final_loss",
            "created_at",
            "problems",
        ]
    ],
    hide_index=True,
    width="stretch",
    column_config={
        "final_loss_scale": st.column_config.NumberColumn("final loss scale", format="%.6g"),
        "final_loss": st.column_config.NumberColumn("final loss", format="%.4f"),
        "max_steps": st.column_config.NumberColumn("of steps"),
        "recording": st.column_config.TextColumn("", width="small", help="🎞: a shipped recording (read-only)"),
    },
)

# The page keeps `?run=<id>` itself instead of binding the select to the URL. Streamlit's
# bind="query-params" writes a selectbox's *formatted label* into the URL (its wire value is
# format_func(option): SelectboxSerde, and _seed_widget_from_url in streamlit/runtime/state/
# session_state.py), silently drops a URL value that is not one of those labels, so a plain
# `?run=<id>` link opened the newest run, and a key bound to a widget cannot be deleted through
# st.query_params (StreamlitAPIException). Here the select's options are the ids, its label is only
# how they are shown, and the URL carries the id.
given = st.query_params.get("run")
if given is not None:
    named = given.split(" · ")[0]  # links made while the URL carried the label still open their run
    if named in by_id:
        if named != given:
            st.query_params["run"] = named
        st.session_state["run"] = named  # the link wins over what this session had open
    else:
        st.warning("The run named in the link is not in this runs directory; it was ignored. The newest run is open.")
        del st.query_params["run"]
        st.session_state["run"] = runs[0].id
if st.session_state.get("run") not in by_id:  # the run this session had open is gone
    st.session_state.pop("run", None)


def label(run_id: str) -> str:
    r = by_id[run_id]
    return f"{'🎞 ' if r.recording else ''}{run_id} · {r.precision}"


def put_run_in_url() -> None:
    st.query_params["run"] = st.session_state["run"]


selected = st.selectbox("Open a run", list(by_id), format_func=label, key="run", on_change=put_run_in_url)
overlay = st.multiselect("Overlay other runs", [i for i in by_id if i != selected], format_func=label)
run = by_id[selected]
injected = run.config.get("inject_overflow") or ()
series = [(charts.short_label(i), by_id[i].metrics) for i in [selected, *overlay]]  # legends: short names

if run.recording:
    made_by = run.provenance.get("command")
    st.info(
        f"🎞 **Recording** (read-only): {summarize(run)['provenance']}"
        + (f" · made with `{made_by}`" if made_by else "")
    )
for problem in run.problems:
    st.warning(f"This record is damaged: {problem}. What could be read is shown.")
ranks = load_rank_scales(run.path)
if ranks:
    agree, sentence = ranks_agree(ranks)
    (st.success if agree else st.error)(f"Multi-process run, {len(ranks)} ranks: {sentence}.")

if run.state in ACTIVE_STATES and not overlay:
    paused = st.toggle("Pause live updates", help="Stops redrawing so you can zoom and hover; the run goes on.")
    ui_common.live_run(selected, key="runs", paused=paused)
else:
    st.markdown(
        f"**{ui_common.STATE_BADGES.get(run.state, run.state)}** · {len(run.metrics)} steps · "
        f"{run.skipped_steps} skipped · {run.config.get('amp_path', '')}"
    )
    if run.status.get("error"):
        error = run.status["error"]  # records written before the hint existed get it here
        st.error(error if "likely reason" in error else error + failure_hint(run.precision, error))
    if expectation := scaler_expectation(run.config):
        st.caption(f"What these GradScaler settings allow: {expectation}")
    ui_common.run_charts(series, key="replay", injected=injected, skip_notes=skip_hover(run))

m = run.metrics
tab_grad, tab_skips, tab_whatif, tab_advice = st.tabs(
    ["Gradients vs fp16", "Skipped steps", "Scaler what-if", "Advice"]
)
with tab_skips:
    skips = skipped_rows(run)
    if not skips:
        st.caption(
            "No skipped steps in this run"
            + (
                ""
                if run.config.get("precision") in ("16-mixed", "16")
                else ": only fp16 runs have a GradScaler that skips"
            )
            + "."
        )
    else:
        st.dataframe(
            pd.DataFrame(skips),
            hide_index=True,
            column_config={
                "scale_before": st.column_config.NumberColumn("scale before", format="%.6g"),
                "scale_after": st.column_config.NumberColumn("scale after", format="%.6g"),
                "nonfinite": "inf or NaN",
                "param": "first parameter holding one",
                "scheduler_stepped": "LR scheduler stepped",
            },
        )
        st.caption(
            "The parameter is the first, in backward order, whose gradient held inf or NaN: where the overflow began. "
            "Recorded on the device with the monitor's other values; runs recorded before the ledger show only the step."
        )
with tab_grad:
    hists = load_histograms(run.path)
    if not hists:
        st.caption("No gradient histograms in this run (it ran with histogram-every 0, or has not reached one yet).")
    else:
        at = st.select_slider("Histogram at step", options=[h["step"] for h in hists], value=hists[-1]["step"])
        h = next(h for h in hists if h["step"] == at)
        scale = scale_at(m.step, m.loss_scale, at)
        sh = shares(h, scale)
        finite = int(sum(h["counts"])) - int(h.get("zeros", 0))  # nonzero finite values (zeros are counted in bin 0)
    if hists and finite <= 0:
        st.info(
            f"Nothing finite to show at step {at}: all {sh['values']:,} gradient values were NaN, inf or zero"
            + (" (the run had diverged by then)" if h.get("nonfinite") else "")
            + ". Pick an earlier step, if there is one."
        )
    elif hists:
        c1, c2, c3 = st.columns(3)
        c1.metric("Would underflow fp16 unscaled", f"{sh['underflow_unscaled']:.2%}")
        c2.metric(f"Underflow at scale {scale:.3g}" if scale else "No loss scale", f"{sh['underflow_scaled']:.2%}")
        c3.metric("Overflow at that scale", f"{sh['overflow_scaled']:.2%}")
        st.plotly_chart(charts.grad_histogram_figure(h, scale), key="grad-hist")
        st.caption(
            f"{sh['values']:,} values: the parameters' gradients after unscaling, a stand-in for the fp16 activation gradients "
            "that flow through backward. fp16 keeps magnitudes from 2^-24 (subnormal below 2^-14) to 65504: the loss scale "
            "shifts the whole histogram right, out of the underflow zone, and a step whose values cross 65504 is skipped."
        )
with tab_whatif:
    try:
        model = overflow_model_for(run)
    except ValueError as e:
        st.info(f"No what-if for this run: {e}.")
    else:
        own, agree = replay_own_policy(run.config, model, m.loss_scale)
        st.caption(
            f"**An estimate.** A step is taken to overflow when its recorded largest unscaled gradient times the scale reaches "
            f"{model.threshold:.6g} (fp16's limit, raised only if clean steps in the run's first half exceed it); steps that really "
            f"overflowed overflow at their recorded scale or above. **Check:** replaying this run's own GradScaler settings "
            f"reproduces the recorded scale on **{agree:.1%}** of {len(m)} steps."
        )
        c1, c2 = st.columns(2)
        with c1:
            st.markdown("**torch GradScaler**")
            t_init = st.number_input("init scale, log2", -24, 126, 16, key="w_t_init")
            t_growth = st.number_input("growth factor", 1.0001, 1e6, 2.0, key="w_t_growth")
            t_backoff = st.number_input("backoff factor", 0.0001, 0.9999, 0.5, key="w_t_backoff")
            t_interval = st.number_input("growth interval", 1, 10**9, 2000, key="w_t_interval")
        with c2:
            st.markdown("**DeepSpeed / Megatron style** (hysteresis, minimum scale)")
            h_init = st.number_input("init scale, log2", -24, 126, 16, key="w_h_init")
            h_window = st.number_input("scale window", 1, 10**9, 1000, key="w_h_window")
            h_hyst = st.number_input("hysteresis", 1, 1000, 2, key="w_h_hyst")
            h_min = st.number_input("min scale", 0.0, 1e9, 1.0, key="w_h_min")
        policies = [
            ("torch GradScaler", TorchGradScalerPolicy(2.0**t_init, t_growth, t_backoff, int(t_interval))),
            ("hysteresis", HysteresisPolicy(2.0**h_init, 2.0, int(h_window), int(h_hyst), h_min)),
        ]
        replays = [(label, r.scales, r.skipped) for label, r in ((lbl, replay(pol, model)) for lbl, pol in policies)]
        st.plotly_chart(
            charts.whatif_figure(m.step, m.loss_scale, [("own settings, replayed", own.scales, own.skipped), *replays]),
            key="whatif",
        )
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "policy": "recorded",
                        "skipped steps": run.skipped_steps,
                        "final scale": float(m.loss_scale[-1]),
                        "lowest scale": float(m.loss_scale.min()),
                    }
                ]
                + [
                    {
                        "policy": f"{lbl} (estimate)",
                        "skipped steps": int(sk.sum()),
                        "final scale": float(sc[-1]),
                        "lowest scale": float(sc.min()),
                    }
                    for lbl, sc, sk in replays
                ]
            ),
            hide_index=True,
        )
with tab_advice:
    for a in advise(run):
        {"ok": st.success, "info": st.info, "warning": st.warning}[a.level](
            f"**{a.finding}.** {a.evidence}. {a.suggestion}"
        )

with st.expander("Configuration and status"):
    st.json({"config": run.config, "status": {k: v for k, v in run.status.items() if k != "traceback"}}, expanded=False)

c1, c2, c3 = st.columns(3)
c1.download_button(
    "Metrics CSV", lambda: metrics_csv(run), file_name=f"{selected}.csv", mime="text/csv", on_click="ignore"
)
c2.download_button(
    "Record JSON", lambda: metrics_json(run), file_name=f"{selected}.json", mime="application/json", on_click="ignore"
)
c3.download_button(
    "Loss-scale chart HTML",
    lambda: charts.figure_html(charts.loss_scale_figure(series, injected=injected)),
    file_name=f"{selected}-loss-scale.html",
    mime="text/html",
    on_click="ignore",
)
