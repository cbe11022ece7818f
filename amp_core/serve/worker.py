"""The warm child process: imports torch, Lightning and W&B, says `ready`, takes one job, trains it.

Started by amp_core.serve.launcher as `python -m amp_core.serve.worker`. Everything slow that a run
needs is done before the job arrives, so that Start is not kept waiting by imports: torch and
Lightning, the project's training modules, W&B's modules and its service process. Then one line on
stdin says what to train (run folder, configuration, device); the run goes into its record, and the
process exits. A fresh process per run leaves no state (W&B run, CUDA memory) behind.
"""

from __future__ import annotations

import json
import os
import sys


def warm_up() -> None:
    """The imports and start-ups a run needs, done while no run waits."""
    import pytorch_lightning  # noqa: F401
    import torch  # noqa: F401

    import amp_core.training.callbacks  # noqa: F401
    import amp_core.training.model  # noqa: F401
    import amp_core.training.record_logger  # noqa: F401
    import amp_core.training.run_loop  # noqa: F401

    try:  # W&B: its imports and its service process, seconds before the first wandb.init otherwise
        import wandb
        import wandb.sdk.launch  # noqa: F401  (wandb.init imports it, and with it pydantic models: slow)
        from pytorch_lightning.loggers import WandbLogger  # noqa: F401

        wandb.setup()
    except Exception:
        pass  # a run then trains without W&B, with a warning in its status


def serve() -> int:
    """Warm up, wait for one job on stdin, train it, exit."""
    warm_up()
    print("ready", flush=True)
    line = sys.stdin.readline()
    if not line.strip():
        return 0  # the server went away before giving us work
    job = json.loads(line)
    # From here on stdout goes to the worker's log like stderr: the server reads our stdout only for
    # "ready", and if the server restarts, prints into a pipe nobody reads would kill the run.
    os.dup2(2, 1)
    device = job["device"]
    # Before anything touches CUDA: this process sees only its own GPU (none for a CPU run).
    os.environ["CUDA_VISIBLE_DEVICES"] = device.split(":")[1] if device.startswith("cuda") else ""
    import torch

    from amp_core.record import RunWriter
    from amp_core.training.config import RunConfig
    from amp_core.training.run_loop import run

    if device == "cpu":
        # Leave a core to the server: a CPU run on every core starves the app that shows it.
        torch.set_num_threads(max(1, (os.cpu_count() or 2) - 1))
    config = RunConfig(**job["config"])
    writer = RunWriter.open(job["run_dir"])
    try:
        run(config, writer)
    except Exception:
        return 1  # already recorded as failed by the run
    return 0


if __name__ == "__main__":
    sys.exit(serve())
