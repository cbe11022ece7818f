"""The run record: one folder per run, the only thing training and the UI share.

Standard library and NumPy only: the Streamlit server imports this package without torch or Lightning.

    files      the folder layout, names, stop files and small JSON helpers
    writer     RunWriter: creates a record and writes it (training, the queue)
    reader     Run, RunMetrics, load_run, list_runs, summarize, the side files
    follow     RunFollower: reads only what a live run appended since the last poll
    export     CSV and JSON downloads
    recordings shipped, read-only runs (demo_runs/) and their provenance
    skips      the skip ledger: which steps were skipped and why
"""

from amp_core.record.export import metrics_csv, metrics_json
from amp_core.record.files import (
    ACTIVE_STATES,
    CONFIG_FILE,
    FINAL_STATES,
    HISTOGRAMS_FILE,
    METRIC_COLUMNS,
    METRICS_FILE,
    PROVENANCE_FILE,
    RANKS_DIR,
    RUN_ID,
    RUNS_DIR_ENV,
    SKIPS_FILE,
    STATUS_FILE,
    STOP_FILE,
    RunRecordError,
    default_runs_dir,
    finite_or_none,
    json_number,
    now_iso,
    process_alive,
    read_json,
    refuse_recording,
    request_stop,
    run_path,
    stop_requested,
    write_json_atomic,
)
from amp_core.record.follow import RunFollower
from amp_core.record.reader import (
    Run,
    RunMetrics,
    change_points,
    effective_state,
    list_runs,
    load_histograms,
    load_rank_scales,
    load_run,
    load_skips,
    parse_metrics,
    queued_runs,
    ranks_agree,
    summarize,
)
from amp_core.record.writer import RunWriter

__all__ = [
    "RUNS_DIR_ENV",
    "CONFIG_FILE",
    "STATUS_FILE",
    "METRICS_FILE",
    "STOP_FILE",
    "HISTOGRAMS_FILE",
    "SKIPS_FILE",
    "PROVENANCE_FILE",
    "RANKS_DIR",
    "ACTIVE_STATES",
    "FINAL_STATES",
    "METRIC_COLUMNS",
    "RUN_ID",
    "RunRecordError",
    "default_runs_dir",
    "now_iso",
    "run_path",
    "write_json_atomic",
    "read_json",
    "json_number",
    "finite_or_none",
    "request_stop",
    "stop_requested",
    "process_alive",
    "refuse_recording",
    "RunWriter",
    "RunMetrics",
    "parse_metrics",
    "Run",
    "effective_state",
    "load_run",
    "load_histograms",
    "load_skips",
    "load_rank_scales",
    "ranks_agree",
    "list_runs",
    "queued_runs",
    "change_points",
    "summarize",
    "RunFollower",
    "metrics_csv",
    "metrics_json",
]
