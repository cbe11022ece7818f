"""Multi-process runs through Lightning's own DDP launcher, on CPU with gloo."""

import numpy as np
import pytest

from amp_core.record import RunMetrics, list_runs, load_rank_scales, ranks_agree
from amp_core.serve.launcher import Launcher
from amp_core.training.cli import ConfigError, RunConfig
from tests.support.cli import cli_env, run_cli


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    runs = tmp_path_factory.mktemp("ddp")
    flags = (
        f"--accelerator cpu --devices 2 --strategy ddp --precision 16-mixed --init-scale {2.0**40} "
        "--growth-interval 5 --max-steps 30 --hidden 64 --wandb disabled"
    )
    out = run_cli("amp_core.train", [*flags.split(), "--runs-dir", str(runs)], env=cli_env())
    assert out.returncode == 0, out.stderr[-3000:]
    return runs, out


def test_rank_zero_writes_one_record(ddp_run):
    runs, out = ddp_run
    records = list_runs(runs)
    assert len(records) == 1  # the second process (launched by Lightning) made no folder of its own
    r = records[0]
    assert r.state == "completed" and len(r.metrics) == 30
    assert r.config["devices"] == 2 and r.config["strategy"] == "ddp"
    assert out.stdout.count("completed:") == 1  # only rank 0 reports


def test_both_ranks_have_identical_scale_trajectories(ddp_run):
    runs, _ = ddp_run
    r = list_runs(runs)[0]
    ranks = load_rank_scales(r.path)
    assert sorted(ranks) == [0, 1]
    np.testing.assert_array_equal(ranks[0].step, np.arange(30))
    np.testing.assert_array_equal(ranks[0].loss_scale, ranks[1].loss_scale)
    np.testing.assert_array_equal(ranks[0].skipped, ranks[1].skipped)
    np.testing.assert_array_equal(ranks[0].loss_scale, r.metrics.loss_scale)
    assert ranks[0].skipped.sum() > 0  # a real trajectory: backoffs from 2^40
    assert ranks_agree(ranks)[0]


def test_ranks_agree_notices_a_difference():
    rows = [{"step": i, "loss_scale": 2.0**10, "skipped": False} for i in range(5)]
    other = [dict(r) for r in rows]
    other[3]["loss_scale"] = 2.0**9
    agree, sentence = ranks_agree({0: RunMetrics.from_rows(rows), 1: RunMetrics.from_rows(other)})
    assert not agree and "step 3" in sentence
    assert ranks_agree({0: RunMetrics.from_rows(rows)}) == (True, "single process")


def test_the_app_sends_multi_process_runs_to_the_cli(tmp_path):
    launcher = Launcher(tmp_path, cuda_devices=0, warm=False)
    try:
        with pytest.raises(ConfigError, match="command line"):
            launcher.submit(RunConfig(devices=2, strategy="ddp"))
        assert list_runs(tmp_path) == []
    finally:
        launcher.close()


def test_bad_distributed_settings():
    for bad in (dict(devices=0), dict(num_nodes=-1), dict(strategy="fsdp-magic"), dict(devices="2")):
        with pytest.raises(ConfigError):
            RunConfig(**bad).validate()
