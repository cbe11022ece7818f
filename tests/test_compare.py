"""amp_core.compare: one real CPU comparison through the CLI, checked against the runs' own records.

The comparison (three tiny runs, one process each, one after another) is made once per module. No
assertion is about speed: only that every ratio and verdict follows from what the records say.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from amp_core.analysis import compare, compare_figures, compare_summary
from amp_core.record import RunWriter, list_runs, load_run
from amp_core.training import memory
from amp_core.training.cli import ConfigError, RunConfig, config_from_args, run, step_timing
from tests.support.records import write_record

REPO = Path(__file__).resolve().parents[1]
PREFIX = "amp_core.compare: error:"
VARIANTS = ["32-true", "16-mixed", "bf16-mixed"]
STEPS = 30


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    base = tmp_path_factory.mktemp("compare")
    runs_dir, summary_file = base / "runs", base / "summary.json"
    env = {**os.environ, "WANDB_MODE": "offline", "AMP_RUNS_DIR": str(base / "elsewhere"), "PYTHONPATH": str(REPO)}
    args = [
        "--precisions",
        ",".join(VARIANTS),
        "--max-steps",
        str(STEPS),
        "--hidden",
        "64",
        "--depth",
        "2",
        "--batch-size",
        "32",
        "--runs-dir",
        str(runs_dir),
        "--json",
        str(summary_file),
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "amp_core.compare", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, runs_dir, json.loads(summary_file.read_text())


def records(runs_dir: Path, run_id: str) -> tuple[dict, dict, list[dict]]:
    """A run's config, status and metrics lines, read straight from its files."""
    d = runs_dir / run_id
    return (
        json.loads((d / "config.json").read_text()),
        json.loads((d / "status.json").read_text()),
        [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()],
    )


def test_cli_prints_the_table_then_the_json_summary(compared):
    proc, _, summary = compared
    lines = proc.stdout.strip().splitlines()
    assert json.loads(lines[-1]) == summary
    header = next(line for line in lines if line.startswith("variant"))
    unit, _ = compare.flops_unit(summary["rows"])
    for column in (
        "timed",
        "step ms",
        "steps/s",
        "samples/s",
        unit,
        "of peak",
        "memory MiB",
        "final loss",
        "loss diff",
        "skipped",
        "speedup",
        "memory",
        "verdict",
    ):
        assert column in header
    for variant in VARIANTS:
        assert any(line.startswith(variant + " ") for line in lines)
    assert "n/a, CPU" in proc.stdout and "RSS the run added" in proc.stdout
    assert [line for line in proc.stderr.splitlines() if line.startswith("[")] == [
        f"[{i}/3] {v}: {STEPS} steps ..." for i, v in enumerate(VARIANTS, 1)
    ]


def test_each_precision_is_a_normal_run_record_of_one_group(compared):
    _, runs_dir, summary = compared
    runs = list_runs(runs_dir)
    assert sorted(compare.variant_of(r) for r in runs) == sorted(VARIANTS)
    assert {r.config["compare_group"] for r in runs} == {summary["group"]}
    for r in runs:
        assert r.state == "completed" and r.problems == [] and len(r.metrics) == STEPS
        assert r.config["time_steps"] is True and r.config["matmul_precision"] == "highest"
        assert r.config["hidden"] == 64 and r.config["batch_size"] == 32 and r.config["wandb"] == "disabled"
    assert [row["variant"] for row in summary["rows"]] == VARIANTS
    assert [g["group"] for g in compare.list_groups(runs_dir)] == [summary["group"]]
    assert compare.summarize_group(compare.group_runs(runs_dir, summary["group"])) == summary


def test_table_fields_are_present(compared):
    _, _, summary = compared
    methods = {row["memory_method"] for row in summary["rows"]}
    assert len(methods) == 1 and methods <= {
        "clear_refs",
        "sampled",
    }  # which one depends on this kernel; the record says
    assert (
        summary["device"] == "cpu"
        and summary["memory_kind"] == compare.RSS_MEMORY_KIND[methods.pop()]
        and summary["complete"]
    )
    assert summary["settings"]["hidden"] == 64 and summary["settings"]["matmul_flops_per_step"] > 0
    for row in summary["rows"]:
        for key in (
            "median_step_ms",
            "steps_per_s",
            "samples_per_s",
            "tflops",
            "memory_mib",
            "final_loss",
            "loss_diff",
            "speedup",
            "memory_ratio",
        ):
            assert isinstance(row[key], float), (row["variant"], key)
        assert row["peak_tflops"] is None and row["peak_share"] is None  # no peak on a CPU
        assert row["timed_steps"] == STEPS - 5 and row["steps"] == STEPS and row["enough_timed_steps"]


def test_ratios_follow_from_the_runs_own_records(compared):
    _, runs_dir, summary = compared
    base_config, base_status, base_metrics = records(runs_dir, summary["rows"][0]["run_id"])
    for row in summary["rows"]:
        config, status, metrics = records(runs_dir, row["run_id"])
        assert row["median_step_ms"] == status["median_step_ms"]
        assert row["steps_per_s"] == status["steps_per_s"] == pytest.approx(1e3 / status["median_step_ms"])
        assert row["samples_per_s"] == pytest.approx(32 * status["steps_per_s"])
        assert row["speedup"] == pytest.approx(base_status["median_step_ms"] / status["median_step_ms"], rel=1e-12)
        assert row["memory_mib"] == status["run_memory_mib"] and row["memory_method"] == status["run_memory_method"]
        assert row["memory_ratio"] == pytest.approx(status["run_memory_mib"] / base_status["run_memory_mib"], rel=1e-12)
        # What the run added, not the process: far below the RSS the imports had before the run began.
        assert 0 < status["run_memory_mib"] < status["rss_before_run_mib"] <= status["peak_rss_mib"]
        assert row["memory_reduction"] == pytest.approx(1 - row["memory_ratio"])
        assert row["tflops"] == pytest.approx(
            config["matmul_flops_per_step"] / (status["median_step_ms"] / 1e3) / 1e12, rel=1e-12
        )
        assert row["final_loss"] == metrics[-1]["loss"]
        assert row["loss_diff"] == pytest.approx(metrics[-1]["loss"] - base_metrics[-1]["loss"], abs=1e-12)
        assert row["skipped_steps"] == sum(m["skipped"] for m in metrics)


def test_verdicts_follow_the_thresholds(compared):
    _, _, summary = compared
    base, *others = summary["rows"]
    assert base["verdict"] == "baseline" and base["speedup"] == 1.0 and base["loss_diff"] == 0.0
    for row in others:
        assert row["speedup_ok"] == (row["speedup"] >= 1.5)
        assert row["memory_ok"] == (1 - row["memory_ratio"] >= 0.40)
        assert row["loss_ok"] == (abs(row["loss_diff"]) < 0.01)
        assert row["verdict"] == ("pass" if row["speedup_ok"] and row["memory_ok"] and row["loss_ok"] else "fail")


def test_cpu_notes_say_what_this_cpu_has(compared):
    _, runs_dir, summary = compared
    hardware = load_run(runs_dir / summary["rows"][0]["run_id"]).config["hardware"]
    assert hardware["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    text = " ".join(summary["notes"])
    assert hardware["cpu_capability"] in text and "resident memory (RSS)" in text
    assert compare_summary.RSS_METHODS[summary["memory_method"]] in text  # the note says how memory was measured
    assert ("no fp16 arithmetic units" in text) != any(f in hardware["cpu_flags"] for f in ("avx512_fp16", "amx_fp16"))


@pytest.mark.parametrize(
    "flags, says",
    [
        ([], ["no fp16 arithmetic units", "no bf16 instructions"]),
        (["avx512_bf16", "avx512f"], ["no fp16 arithmetic units", "AVX512-BF16 instructions"]),
        (["amx_bf16", "amx_fp16", "avx512_fp16"], ["fp16 units (AVX512-FP16 and AMX-FP16)", "AMX-BF16 instructions"]),
    ],
)
def test_cpu_notes_from_flags(flags, says):
    text = " ".join(compare.cpu_notes({"cpu_capability": "AVX512", "cpu_flags": flags}))
    assert all(s in text for s in says), text


# ---------------------------------------------------------------- the summary on made-up records


def fake_run(
    runs_dir: Path,
    precision: str,
    step_ms: float,
    memory: float,
    loss: float,
    *,
    matmul: str = "highest",
    gpu: str | None = "NVIDIA H100 80GB HBM3",
    state: str = "completed",
    skipped: int = 0,
    group: str = "g",
    timed: int = 20,
) -> str:
    accel = "gpu" if gpu else "cpu"
    config = {
        "precision": precision,
        "precision_resolved": precision,
        "matmul_precision": matmul,
        "compare_group": group,
        "accelerator_resolved": accel,
        "hardware": {"cuda": bool(gpu), "device_name": gpu}
        if gpu
        else {"cuda": False, "cpu_capability": "AVX2", "cpu_flags": ["avx2"]},
        "matmul_flops_per_step": 10**12,
        "max_steps": 4,
        "batch_size": 8,
        "hidden": 8,
        "depth": 1,
        "seed": 0,
        "lr": 1e-3,
    }
    memory = {"cuda_peak_mib": memory} if gpu else {"run_memory_mib": memory, "run_memory_method": "sampled"}
    made = len(list(runs_dir.iterdir())) if runs_dir.exists() else 0
    w = write_record(
        runs_dir,
        config,
        state,
        [{"step": i, "loss": loss + (3 - i), "skipped": i < skipped} for i in range(4)],
        created_at=f"2026-01-01T00:00:0{made + 1}",
        label=precision,
        median_step_ms=step_ms,
        timed_steps=timed,
        peak_rss_mib=999.0,
        **memory,
        **({"error": "RuntimeError: boom"} if state == "failed" else {}),
    )
    return w.id


def test_summary_on_a_known_gpu_against_its_peaks(tmp_path):
    fake_run(tmp_path, "32-true", 100.0, 1000.0, 1.0)
    fake_run(tmp_path, "32-true", 40.0, 1000.0, 1.004, matmul="high")
    fake_run(tmp_path, "16-mixed", 20.0, 500.0, 1.02, skipped=2)
    summary = compare.summarize_group(compare.group_runs(tmp_path, "g"))
    base, tf32, fp16 = summary["rows"]
    assert [r["variant"] for r in summary["rows"]] == ["32-true", "32-true+tf32", "16-mixed"]
    assert summary["memory_kind"] == "CUDA allocator peak" and base["memory_mib"] == 1000.0  # not the RSS
    assert base["tflops"] == pytest.approx(10.0) and base["peak_share"] == pytest.approx(10 / 67)
    assert tf32["matmul_dtype"] == "tf32" and tf32["peak_share"] == pytest.approx(25 / 495)
    assert fp16["peak_share"] == pytest.approx(50 / 989) and fp16["skipped_steps"] == 2
    assert (tf32["speedup"], tf32["memory_ok"], tf32["loss_ok"], tf32["verdict"]) == (2.5, False, True, "fail")
    assert (fp16["speedup"], fp16["memory_reduction"], fp16["loss_ok"], fp16["verdict"]) == (5.0, 0.5, False, "fail")
    assert fp16["loss_diff"] == pytest.approx(0.02)
    assert not any("CPU" in n for n in summary["notes"])


def test_summary_passes_fails_and_gaps(tmp_path):
    fake_run(tmp_path, "32-true", 30.0, 1000.0, 1.0, gpu="Some Future GPU")
    fake_run(tmp_path, "bf16-mixed", 15.0, 590.0, 1.005, gpu="Some Future GPU")
    fake_run(tmp_path, "16-mixed", 15.0, 590.0, 1.0, gpu="Some Future GPU", state="failed")
    summary = compare.summarize_group(compare.group_runs(tmp_path, "g"))
    base, bf16, fp16 = summary["rows"]
    assert bf16["verdict"] == "pass" and bf16["peak_share"] is None
    assert fp16["state"] == "failed" and fp16["verdict"] == "n/a" and fp16["speedup_ok"] is None
    assert "16-mixed failed: RuntimeError: boom" in summary["notes"]
    assert any("No peak on record for Some Future GPU" in n for n in summary["notes"])
    assert "n/a" in compare.format_table(summary)


def test_summary_without_a_baseline_and_on_a_cpu(tmp_path):
    fake_run(tmp_path, "bf16-mixed", 15.0, 500.0, 1.0, gpu=None)
    summary = compare.summarize_group(compare.group_runs(tmp_path, "g"))
    (row,) = summary["rows"]
    assert (
        row["speedup"] is None
        and row["verdict"] == "n/a"
        and row["memory_kind"] == "RSS the run added, sampled peak"
        and row["memory_mib"] == 500.0
    )
    assert summary["notes"][0].startswith("No 32-true run")
    assert compare.summarize_group([])["rows"] == []


@pytest.mark.parametrize(
    "device, dtype, peak",
    [
        ("NVIDIA H100 80GB HBM3", "bf16", 989),
        ("NVIDIA H100 PCIe", "fp16", 756),
        ("NVIDIA H200", "tf32", 495),
        ("NVIDIA A100-SXM4-80GB", "fp32", 19.5),
        ("NVIDIA GeForce RTX 4090", "fp16", None),
        (None, "fp32", None),
        ("NVIDIA H100", None, None),
    ],
)
def test_peak_table(device, dtype, peak):
    assert compare.peak_tflops(device, dtype) == peak


def test_figures_carry_the_summary(tmp_path):
    fake_run(tmp_path, "32-true", 100.0, 1000.0, 1.0)
    fake_run(tmp_path, "16-mixed", 20.0, 500.0, 1.0)
    summary = compare.summarize_group(compare.group_runs(tmp_path, "g"))
    step = compare.bar_figure(summary, "median_step_ms")
    assert list(step.data[0].x) == ["32-true", "16-mixed"] and list(step.data[0].y) == [100.0, 20.0]
    assert "CUDA allocator peak" in compare.bar_figure(summary, "memory_mib").layout.title.text
    assert "of peak" in compare.bar_figure(summary, "tflops").data[0].text[1]
    ratio = compare.ratio_figure(summary)
    assert [list(t.y) for t in ratio.data] == [[1.0, 5.0], [1.0, 0.5]]
    assert sorted(s.y0 for s in ratio.layout.shapes) == [0.6, 1.5]
    assert step.layout.yaxis.type is None  # 5x apart: a linear axis
    slow = {**summary, "rows": [summary["rows"][0], {**summary["rows"][1], "median_step_ms": 3001.0}]}
    assert compare.bar_figure(slow, "median_step_ms").layout.yaxis.type == "log"  # 30x apart: log
    loss = compare.loss_figure(compare.group_runs(tmp_path, "g"))
    assert [t.name for t in loss.data] == ["32-true", "16-mixed"] and len({t.line.dash for t in loss.data}) == 2


# ---------------------------------------------------------------- planning and the CLI's input


def test_plan_shares_a_group_and_round_trips_through_the_train_cli(tmp_path):
    configs = compare.plan(
        ["bf16", "16-mixed", "32"],
        on_cuda=False,
        max_steps=compare.min_comparison_steps(),
        hidden=16,
        runs_dir=str(tmp_path),
    )
    assert [(c.precision, c.matmul_precision) for c in configs] == [
        ("32-true", "highest"),
        ("bf16-mixed", "highest"),
        ("16-mixed", "highest"),
    ]
    assert len({c.compare_group for c in configs}) == 1 and all(c.time_steps and c.wandb == "disabled" for c in configs)
    for c in configs:
        assert asdict(config_from_args(compare.train_argv(c))) == asdict(c)
    (tf32,) = [c for c in compare.plan(["tf32"], on_cuda=True) if c.matmul_precision == "high"]
    assert tf32.precision == "32-true"
    assert compare.default_variants(True)[-1] == compare.TF32 and compare.TF32 not in compare.default_variants(False)


BAD_INPUT = {  # args -> what the one line must mention
    "unknown precision": (["--precisions", "32-true,17"], "'17'"),
    "tf32 on a cpu": (["--precisions", "tf32", "--accelerator", "cpu"], "needs a CUDA GPU"),
    "zero steps": (["--max-steps", "0"], "max-steps"),
    "steps not a number": (["--max-steps", "many"], "--max-steps"),
    "negative width": (["--hidden", "-4"], "hidden"),
    "unknown wandb": (["--wandb", "loud"], "wandb"),
    "unknown option": (["--bogus"], "--bogus"),
    "json folder missing": (["--json", "/nonexistent/dir/out.json"], "json"),
    "one step": (
        ["--max-steps", "1"],
        f"at least {compare.MIN_TIMED_STEPS} timed steps; use {compare.min_comparison_steps()} steps or more",
    ),
    "one step short": (
        ["--max-steps", str(compare.min_comparison_steps() - 1)],
        f"use {compare.min_comparison_steps()} steps or more",
    ),
    "gpu without cuda": (["--accelerator", "gpu"], "CUDA"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_exits_2_with_one_line_before_any_run(case, runs_dir, capsys):
    if case == "gpu without cuda" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    args, mention = BAD_INPUT[case]
    assert compare.main(args) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(PREFIX) and mention in lines[0], captured.err
    assert captured.out == "" and not runs_dir.exists()


def test_a_run_refusing_its_settings_is_exit_2(runs_dir, monkeypatch, capsys):
    """What only the run can see (e.g. a runs dir it cannot write) comes back as the run's one line."""
    refused = subprocess.CompletedProcess([], 2, "", "amp_core.train: error: cannot create the runs directory 'x'\n")
    monkeypatch.setattr(compare.subprocess, "run", lambda *a, **k: refused)
    assert compare.main(["--max-steps", str(compare.min_comparison_steps())]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"{PREFIX} cannot create the runs directory 'x'"


# ---------------------------------------------------------------- what train.py records for it


@pytest.mark.parametrize(
    "n, warmup, timed",
    [(0, 0, 0), (1, 0, 1), (4, 2, 2), (10, 5, 5), (30, 5, 25), (100, 10, 90), (101, 11, 90)],
)
def test_step_timing_leaves_out_the_warm_up(n, warmup, timed):
    seconds = [1.0] * min(n, 5) + [0.01 * (i + 1) for i in range(n - min(n, 5))]
    out = step_timing(seconds, batch_size=10)
    if not timed:
        assert out == {}
        return
    assert (out["warmup_steps"], out["timed_steps"]) == (warmup, timed)
    rest = sorted(seconds[warmup:])
    median = rest[len(rest) // 2] if len(rest) % 2 else (rest[len(rest) // 2 - 1] + rest[len(rest) // 2]) / 2
    assert out["median_step_ms"] == pytest.approx(median * 1e3)
    assert out["samples_per_s"] == pytest.approx(10 * out["steps_per_s"]) and out["steps_per_s"] == pytest.approx(
        1 / median
    )


@pytest.mark.parametrize(
    "field, value, mention",
    [
        ("matmul_precision", "tf32", "matmul-precision"),
        ("time_steps", "yes", "time-steps"),
        ("compare_group", "../x", "compare-group"),
        ("compare_group", 5, "compare-group"),
    ],
)
def test_run_config_refuses_bad_comparison_settings(field, value, mention):
    with pytest.raises(ConfigError, match=mention):
        RunConfig(**{field: value}).validate()


def test_an_untimed_run_records_memory_only_and_a_timed_one_both(runs_dir):
    torch.set_float32_matmul_precision("highest")
    plain = load_run(
        run(
            RunConfig(precision="32-true", max_steps=8, hidden=16, batch_size=8, wandb="disabled", histogram_every=0)
        ).path
    )
    timed = load_run(
        run(
            RunConfig(
                precision="32-true",
                max_steps=8,
                hidden=16,
                batch_size=8,
                wandb="disabled",
                histogram_every=0,
                time_steps=True,
                matmul_precision="high",
            )
        ).path
    )
    assert torch.get_float32_matmul_precision() == "highest"  # the run's setting does not leak into the process
    assert plain.status["peak_rss_mib"] > 0 and "median_step_ms" not in plain.status
    assert (
        timed.status["timed_steps"] == 4
        and timed.status["median_step_ms"] > 0
        and timed.config["matmul_precision"] == "high"
    )
    assert "cuda_peak_mib" not in timed.status and timed.config["hardware"]["cpu_capability"]
    for r in (plain, timed):  # every run records what it added, and how that was measured
        assert r.status["run_memory_method"] in memory.METHODS and r.status["run_memory_mib"] >= 0


# ---------------------------------------------------------------- how many timed steps a median needs


def median_interval_coverage(n: int, left_out: int) -> float:
    """P(true median in [x(left_out+1), x(n-left_out)]) for n samples of any continuous distribution."""
    return 1 - 2 * sum(math.comb(n, i) for i in range(left_out + 1)) / 2**n


def test_the_minimum_is_the_fewest_steps_whose_median_interval_leaves_out_two_strays_each_side():
    n = compare.MIN_TIMED_STEPS
    assert median_interval_coverage(n, 2) >= 0.95 > median_interval_coverage(n - 1, 2)


@pytest.mark.parametrize("max_steps", range(0, 60))
def test_timed_steps_for_is_what_step_timing_times(max_steps):
    assert compare.timed_steps_for(max_steps) == step_timing([0.01] * max_steps, batch_size=1).get("timed_steps", 0)


def test_min_comparison_steps_is_the_fewest_that_reach_the_minimum():
    n = compare.min_comparison_steps()
    assert compare.timed_steps_for(n) >= compare.MIN_TIMED_STEPS > compare.timed_steps_for(n - 1)


def test_plan_refuses_too_few_steps_naming_the_minimum(tmp_path):
    n = compare.min_comparison_steps()
    with pytest.raises(ConfigError, match=f"at least {compare.MIN_TIMED_STEPS} timed steps; use {n} steps or more"):
        compare.plan(["bf16-mixed"], on_cuda=False, max_steps=n - 1, runs_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="max-steps"):  # a step count that is no count at all says that first
        compare.plan(["bf16-mixed"], on_cuda=False, max_steps=0, runs_dir=str(tmp_path))
    assert [c.max_steps for c in compare.plan(["bf16-mixed"], on_cuda=False, max_steps=n, runs_dir=str(tmp_path))] == [
        n,
        n,
    ]


def test_too_few_timed_steps_get_no_verdict_and_are_drawn_grey(tmp_path):
    fake_run(tmp_path, "32-true", 100.0, 1000.0, 1.0)
    fake_run(tmp_path, "16-mixed", 5.0, 500.0, 1.0, timed=1)  # "20x faster" from one step: not a measurement
    fake_run(tmp_path, "bf16-mixed", 20.0, 500.0, 1.0)
    summary = compare.summarize_group(compare.group_runs(tmp_path, "g"))
    base, fp16, bf16 = summary["rows"]
    assert fp16["verdict"] == compare.TOO_FEW_STEPS and not fp16["enough_timed_steps"]
    assert (fp16["speedup_ok"], fp16["memory_ok"], fp16["loss_ok"]) == (None, None, None)
    assert fp16["speedup"] == 20.0  # still shown, greyed
    assert bf16["verdict"] == "pass"
    assert any(
        n.startswith("Too few timed steps") and "16-mixed (1)" in n and f"{compare.min_comparison_steps()} steps" in n
        for n in summary["notes"]
    )
    step = compare.bar_figure(summary, "median_step_ms")
    colors = list(step.data[0].marker.color)
    assert colors[1] == compare_figures.GREY and compare_figures.GREY not in (colors[0], colors[2])
    assert compare.TOO_FEW_STEPS in step.data[0].text[1] and compare.TOO_FEW_STEPS not in step.data[0].text[2]
    assert list(compare.ratio_figure(summary).data[0].marker.color)[1] == compare_figures.GREY
    assert compare_figures.GREY not in list(
        compare.bar_figure(summary, "memory_mib").data[0].marker.color
    )  # memory needs no median
    table = compare.format_table(summary)
    assert "16-mixed: too few steps (1 timed, 12 needed): no verdict" in table and "bf16-mixed: speedup pass" in table


def test_a_barely_timed_baseline_leaves_every_row_without_a_verdict(tmp_path):
    fake_run(tmp_path, "32-true", 100.0, 1000.0, 1.0, timed=3)
    fake_run(tmp_path, "bf16-mixed", 20.0, 500.0, 1.0)
    base, bf16 = compare.summarize_group(compare.group_runs(tmp_path, "g"))["rows"]
    assert base["verdict"] == "baseline" and bf16["verdict"] == compare.TOO_FEW_STEPS and bf16["speedup_ok"] is None


# ---------------------------------------------------------------- throughput units


@pytest.mark.parametrize(
    "step_ms, unit, shown",
    [
        (0.1, "TFLOP/s", 1e4),
        (100.0, "TFLOP/s", 10.0),
        (1e4, "GFLOP/s", 100.0),
        (5e7, "MFLOP/s", 20.0),
        (5e10, "MFLOP/s", 0.02),
    ],
)
def test_throughput_is_drawn_in_a_unit_chosen_from_the_data(tmp_path, step_ms, unit, shown):
    fake_run(tmp_path, "32-true", step_ms, 1000.0, 1.0)  # 1e12 FLOP per step
    summary = compare.summarize_group(compare.group_runs(tmp_path, "g"))
    assert compare.flops_unit(summary["rows"])[0] == unit
    fig = compare.bar_figure(summary, "tflops")
    assert fig.layout.yaxis.title.text == unit and fig.data[0].y[0] == pytest.approx(shown)
    assert fig.layout.yaxis.tickformat == "~g"  # never d3's SI ticks ("20n")
    assert unit in compare.format_table(summary).splitlines()[1]


# ---------------------------------------------------------------- the memory a run adds


def _touch(mib: int) -> np.ndarray:
    return np.ones(mib * 2**20 // 8)  # every page written: resident


@pytest.mark.parametrize("method", ["auto", "sampled"])
def test_run_memory_sees_an_allocation_of_known_size(method):
    measure = memory.RunMemory(method).start()
    block = _touch(64)
    time.sleep(0.1)  # the sampler's samples
    del block
    out = measure.stop()
    assert out["run_memory_method"] == ("sampled" if method == "sampled" else out["run_memory_method"])
    assert 60 <= out["run_memory_mib"] <= 80, out
    assert measure.stop() is out  # measured once


def test_without_clear_refs_it_samples(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "CLEAR_REFS", tmp_path / "no" / "clear_refs")  # cannot be opened, as in a sandbox
    assert memory.RunMemory().start().stop()["run_memory_method"] == "sampled"


def test_a_clear_refs_that_takes_the_write_but_resets_nothing_is_not_trusted(tmp_path, monkeypatch):
    block = _touch(64)  # raise the high-water mark, then give the memory back
    del block
    assert memory.status_kib("VmHWM") - memory.status_kib("VmRSS") > memory.RESET_SLACK_KIB
    monkeypatch.setattr(
        memory, "CLEAR_REFS", tmp_path / "clear_refs"
    )  # a plain file: the write succeeds, the mark stays
    assert not memory.reset_peak_rss()
    assert memory.RunMemory().start().stop()["run_memory_method"] == "sampled"


def test_without_proc_nothing_is_measured_and_compare_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "STATUS", tmp_path / "status")
    out = memory.RunMemory().start().stop()
    assert out == {"run_memory_mib": None, "run_memory_method": None}
    w = RunWriter.create(
        tmp_path / "runs", {"precision": "32-true", "compare_group": "g", "accelerator_resolved": "cpu"}, label="x"
    )
    w.close()
    w.set_status(
        "completed", median_step_ms=1.0, timed_steps=20, peak_rss_mib=480.0, **out
    )  # a lifetime peak is not shown instead
    (row,) = compare.summarize_group(compare.group_runs(tmp_path / "runs", "g"))["rows"]
    assert row["memory_mib"] is None and row["memory_kind"] == "not measured"


def demo_params(hidden: int, depth: int) -> int:
    from amp_core.training.model import DemoMLP

    return sum(p.numel() for p in DemoMLP(hidden=hidden, depth=depth).parameters())


# A fresh process per run, as the app's worker and the compare CLI give each run; the second way
# makes clear_refs unavailable, so the sampling fallback is measured on real runs too.
TRAIN_WITH = {
    "auto": ["-m", "amp_core.training.compare_run"],
    "sampled": [
        "-c",
        "import pathlib, sys; import amp_core.training.memory as m; m.CLEAR_REFS = pathlib.Path('/nonexistent/clear_refs'); "
        "import amp_core.training.compare_run as r; sys.exit(r.main(sys.argv[1:]))",
    ],
}


@pytest.mark.parametrize("method", list(TRAIN_WITH))
def test_a_bigger_model_adds_more_memory_in_real_runs(tmp_path, method):
    sizes = {"small": (32, 1), "big": (2048, 2)}
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    status = {}
    for name, (hidden, depth) in sizes.items():
        args = [
            "--precision",
            "32-true",
            "--max-steps",
            "6",
            "--batch-size",
            "32",
            f"--hidden={hidden}",
            f"--depth={depth}",
            "--wandb",
            "disabled",
            "--runs-dir",
            str(tmp_path / name),
        ]
        proc = subprocess.run(
            [sys.executable, *TRAIN_WITH[method], *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        (run_dir,) = (tmp_path / name).iterdir()
        status[name] = json.loads((run_dir / "status.json").read_text())
    small, big = status["small"], status["big"]
    assert (
        small["run_memory_method"]
        == big["run_memory_method"]
        == ("sampled" if method == "sampled" else small["run_memory_method"])
    )
    # fp32 weights, their gradients and Adam's two moments: four copies of the parameters at the optimizer step.
    four_copies_mib = 4 * 4 * (demo_params(*sizes["big"]) - demo_params(*sizes["small"])) / 2**20
    grown = big["run_memory_mib"] - small["run_memory_mib"]
    assert 0.9 * four_copies_mib <= grown <= 3 * four_copies_mib + 64, (small, big, four_copies_mib)
    for s in (small, big):  # not the imports: what the process held before the run is left out
        assert 0 < s["run_memory_mib"] < s["rss_before_run_mib"]
