"""On a CUDA GPU only (each test skips with its reason elsewhere; `pytest -m cuda` selects them all):

- the monitor's per-step hooks make 0 host syncs, counted (sync debug mode "warn", every warning
  counted), not assumed; and the counter does count a sync, so a 0 from it means something;
- a real CUDA out-of-memory, from a run sized past the device, is recorded as `failed` with the
  message, through the real Launcher and worker, and the run queued behind it completes.
"""

from __future__ import annotations

import math
import time

import pytest
import torch

from amp_core.record import METRICS_FILE, load_run
from amp_core.serve.launcher import Launcher
from amp_core.training.cli import RunConfig
from amp_core.training.sync_check import MONITOR_STEP_HOOKS, HostSyncCounter, count_monitor_syncs
from tests.support.processes import read_status, wait_final

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

RUN_TIMEOUT = 420  # guards against hanging, not a timing: a cold worker, and a model of GiBs built on the CPU
# The out-of-memory run: the demo MLP at its deepest, on its largest batch, in fp32; the hidden width
# is chosen from the device so that the activations the forward pass keeps exceed its memory.
OOM_DEPTH, OOM_BATCH, OOM_MARGIN = 64, 65536, 1.15


def test_the_counter_counts_a_host_sync():
    value = torch.ones((), device="cuda")

    class Probe:
        def hook(self):
            return value.item()  # a device-to-host copy: one sync

        def quiet(self):
            return value + 1  # stays on the device

    counter = HostSyncCounter()
    probe = counter.wrap(Probe(), ["hook", "quiet"])
    for _ in range(3):
        probe.hook()
        probe.quiet()
    assert counter.calls == {"hook": 3, "quiet": 3}
    assert counter.syncs["hook"] >= 3 and counter.syncs["quiet"] == 0
    assert torch.cuda.get_sync_debug_mode() == 0, "the counter put the default mode back"


@pytest.mark.parametrize("precision", ["16-mixed", "bf16-mixed", "32-true"])
def test_monitor_makes_no_host_sync_per_step(precision, tmp_path):
    steps = 60  # three flushes of 20 and six histograms (every 10 steps), as amp_core.train records them
    result = count_monitor_syncs(precision, steps, tmp_path / "runs", histogram_every=10)
    assert result["steps"] == steps and result["recorded_steps"] == steps and result["recorded_histograms"] == 6
    assert {h: result["hook_calls"][h] for h in MONITOR_STEP_HOOKS} == dict.fromkeys(MONITOR_STEP_HOOKS, steps)
    assert {h: result["hook_syncs"][h] for h in MONITOR_STEP_HOOKS} == dict.fromkeys(MONITOR_STEP_HOOKS, 0), result
    assert result["syncs_per_step"] == 0


def test_a_real_cuda_oom_fails_its_run_and_the_next_run_completes(runs_dir):
    total = torch.cuda.get_device_properties(0).total_memory
    # Linear and GELU each keep their input for the backward pass: 2 fp32 tensors of batch x hidden per layer.
    hidden = 128 * math.ceil(OOM_MARGIN * total / (2 * OOM_DEPTH * OOM_BATCH * 4) / 128)
    if hidden > 65536:
        pytest.skip(f"a GPU of {total / 2**30:.0f} GiB is larger than the biggest demo MLP run can fill")
    big = RunConfig(
        accelerator="gpu",
        precision="32-true",
        hidden=hidden,
        depth=OOM_DEPTH,
        batch_size=OOM_BATCH,
        max_steps=2,
        wandb="disabled",
        histogram_every=0,
    )
    small = RunConfig(accelerator="gpu", precision="16-mixed", hidden=32, batch_size=16, max_steps=20, wandb="disabled")
    launcher = Launcher(runs_dir, cuda_devices=torch.cuda.device_count())
    try:
        oom, after = launcher.submit(big), launcher.submit(small)
        wait_final(runs_dir / oom, 2 * RUN_TIMEOUT), wait_final(runs_dir / after, 2 * RUN_TIMEOUT)
        failed, done = read_status(runs_dir / oom), read_status(runs_dir / after)
        assert failed["state"] == "failed", failed
        assert failed["error"].startswith("OutOfMemoryError: CUDA out of memory"), failed["error"]
        assert "injected" not in failed["error"] and failed.get("ended_at")
        assert (runs_dir / oom / METRICS_FILE).read_bytes() == b"", "the run died at its first step"
        record = load_run(runs_dir / after)
        assert done["state"] == "completed" and record.problems == [] and len(record.metrics) == 20
        assert record.config["accelerator_resolved"] == "gpu" and record.config["hardware"]["device_name"]
        deadline = time.monotonic() + 30
        while launcher.active():
            assert time.monotonic() < deadline, "the launcher did not reap the last worker"
            time.sleep(0.2)
        assert launcher._thread.is_alive() and launcher.queue() == []
    finally:
        launcher.close(stop_runs=True)
