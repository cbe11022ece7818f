"""Helpers the test modules share: waiting, reading records, cleaning up processes, making real records.

- `cli`: the command lines in a child process (cli_env, run_cli, start_cli) and what their runs left.
- `processes`: wait_until, read_status, dead_pid, and killers for the training processes a test started.
- `records`: a runs folder of real run records (completed, failed, stopped, interrupted, queued,
  damaged, multi-rank, a comparison), made by short `python -m amp_core.train` runs.
- `app`: a runs folder for the app under test, and closing the launchers and caches after it.
- `scaler`: the GradScaler's contract, checked step by step against a record.
- `interaction`: random widget actions on a Streamlit AppTest, as a browser user would take them.
- `loggers`: `MemoryLogger`, a real Lightning logger that keeps (or drops) what it is given.
"""
