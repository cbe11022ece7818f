"""Train: a short run in a child process, its loss scale drawn live."""

import streamlit as st

import ui_common  # first: it does the heavy imports once (see there)
from amp_core import charts
from amp_core.analysis.advice import DEMO_INIT_SCALE_LOG2, TORCH_INIT_SCALE_LOG2, scaler_expectation
from amp_core.record import ACTIVE_STATES, load_run, run_path
from amp_core.training.cli import ConfigError, RunConfig
from amp_core.training.config import widget_bounds
from amp_core.training.preflight import absent_accelerator, missing_precision_package, precision_risk

st.set_page_config(page_title="Train · AMP Explorer", page_icon="🏃", layout="wide")
st.title("Train")
st.caption(
    "A workload (the demo MLP, a small GPT on Python's own source, or your own LightningModule), trained by Lightning in a separate process (a warm worker waits with torch "
    "and Lightning imported). Closing this tab does not stop the run; others can watch it on the Runs page."
)

# What torch's own GradScaler settings do in the page's default 300-step run (said beside the settings).
TORCH_DEFAULTS_EXPECTATION = scaler_expectation(
    {"precision": "16-mixed", "max_steps": 300, "growth_interval": 2000, "init_scale": 2.0**16}
)
launcher = ui_common.launcher()
defaults = RunConfig()
precisions = ui_common.precision_table()  # Lightning's answers, from a child process
values = precisions.values
workload = ui_common.workload_select("train_workload")

linked = st.query_params.get("run")
if linked is not None and ui_common.valid_run_id(linked) is None:  # it showed why; like other pages, drop it
    del st.query_params["run"]

with st.container(border=True):
    # Outside the form, so that choosing one says at once whether it can run here.
    c1, c2, _ = st.columns([1, 1, 2])
    precision = c1.selectbox(
        "Precision",
        values,
        index=values.index("16-mixed"),
        help="16-mixed on a CPU runs real fp16 autocast with a CPU GradScaler (slower than fp32: no fp16 units).",
    )
    accelerator = c2.selectbox("Accelerator", ("auto", "cpu", "gpu"))
    refusal = missing_precision_package(precision) or absent_accelerator(accelerator, launcher.cuda_devices)
    if refusal:
        st.error(f"Cannot start this run: {refusal}.")
    elif risk := precision_risk(precision):
        st.warning(f"{risk}.")
    with st.form("run", border=False):
        c1, c2, c3, c4 = st.columns(4)
        # Bounds and help from the run configuration's table (amp_core.training.config), the CLI's too; values the page's own.
        steps = c1.number_input("Steps", **{**widget_bounds("max_steps"), "value": 300, "step": 50})
        batch_size = c2.number_input("Batch size", **widget_bounds("batch_size", workload))
        lr = c3.number_input("Learning rate", min_value=1e-6, max_value=10.0, value=defaults.lr, format="%.5f")
        seed = c4.number_input("Seed", **widget_bounds("seed"))
        settings = ui_common.workload_inputs(workload)
        st.markdown(
            f"**GradScaler** (fp16 only). torch's defaults are 2<sup>{TORCH_INIT_SCALE_LOG2}</sup> and 2000: "
            f"{TORCH_DEFAULTS_EXPECTATION[0].lower()}{TORCH_DEFAULTS_EXPECTATION[1:]} These defaults (2<sup>{DEMO_INIT_SCALE_LOG2}</sup>, 50) "
            "show backoffs and growth in a short run.",
            unsafe_allow_html=True,
        )
        c1, c2, c3, c4 = st.columns(4)
        init_log2 = c1.number_input("Initial scale, log2", min_value=-24, max_value=126, value=DEMO_INIT_SCALE_LOG2)
        growth_factor = c2.number_input("Growth factor", min_value=1.0001, max_value=1e6, value=defaults.growth_factor)
        backoff_factor = c3.number_input(
            "Backoff factor", min_value=0.0001, max_value=0.9999, value=defaults.backoff_factor, format="%.4f"
        )
        growth_interval = c4.number_input("Growth interval", **{**widget_bounds("growth_interval"), "value": 50})
        c1, c2 = st.columns(2)
        inject = c1.text_input(
            "Inject overflow at steps",
            placeholder="e.g. 100, 200",
            help="Puts a real inf into the gradients at these steps (16-mixed only): the scaler skips them and backs off, on cue.",
        )
        histogram_every = c2.number_input(
            "Gradient histogram every N steps",
            **{
                **widget_bounds("histogram_every"),
                "help": "0 records none. Computed on the device, copied in batches with the other metrics.",
            },
        )
        wandb = st.radio(
            "W&B",
            ("offline", "online", "disabled"),
            horizontal=True,
            help="offline writes a local W&B run inside the run folder; online needs `wandb login`.",
        )
        start = st.form_submit_button("Start run", type="primary", disabled=bool(refusal))

if start:
    try:
        inject_steps = tuple(int(x) for x in inject.replace(",", " ").split())
    except ValueError:
        inject_steps = None
    config = RunConfig(
        precision=precision,
        accelerator=accelerator,
        max_steps=int(steps),
        batch_size=int(batch_size),
        lr=float(lr),
        seed=int(seed),
        init_scale=2.0 ** int(init_log2),
        growth_factor=float(growth_factor),
        backoff_factor=float(backoff_factor),
        growth_interval=int(growth_interval),
        workload=workload,
        **settings,
        histogram_every=int(histogram_every),
        inject_overflow=inject_steps or (),
        wandb=wandb,
    )
    try:
        if inject_steps is None:
            raise ConfigError("Inject overflow at steps takes whole step numbers separated by commas, e.g. 100, 200")
        # Normalised by the table: asking Lightning here would import torch and Lightning into the server on Start.
        run_id = launcher.submit(config, normalize_precision=lambda v: precisions.resolve(v).lightning_precision)
    except (ConfigError, ValueError) as e:
        st.error(f"Cannot start this run: {e}")
    else:
        st.session_state["train_run"] = run_id
        st.query_params["run"] = run_id

run_id = st.query_params.get("run") or st.session_state.get("train_run")
if not run_id:  # a reload lost the session: show whatever is training now
    active = launcher.active()
    run_id = next(iter(active.values()), None)
if not run_id:
    st.info("No run yet: set the options and press **Start run**.")
    # Where the run's loss scale will be drawn. Drawn empty now, it also has the browser load Plotly's
    # code (4.7 MB of JavaScript: a second or more to parse) while the form is filled in, not after Start.
    st.plotly_chart(charts.loss_scale_figure([]), key="train-no-run")
    st.stop()

st.session_state["train_run"] = run_id
run = load_run(run_path(ui_common.runs_dir(), run_id))
st.subheader(f"Run `{run_id}`")
# A plain link, relative to this page's address (so a server's baseUrlPath is kept), as Compare links:
# st.page_link cannot name another page when a page runs as the main script (AppTest). Streamlit opens
# markdown links in a new tab (target=_blank), so this page and its live view stay open.
st.markdown(f"[Open this run on the Runs page](Runs?run={run_id}): gradients, what-if, advice, downloads.")
if expectation := scaler_expectation(run.config):
    st.caption(f"What these GradScaler settings allow: {expectation}")
c1, c2 = st.columns([1, 4])
if run.state in ACTIVE_STATES and c1.button("Stop", type="secondary"):
    st.toast(f"Stop: {launcher.stop(run_id)}")
paused = c2.toggle("Pause live updates", help="Stops redrawing so you can zoom and hover; the run goes on.")


@st.fragment(run_every=2.0)
def queue() -> None:
    waiting = launcher.queue()
    if waiting:
        st.caption(
            "Queue (one run per device at a time): " + ", ".join(f"{q['position']}. `{q['id']}`" for q in waiting)
        )


queue()
ui_common.live_run(run_id, key="train", paused=paused)
