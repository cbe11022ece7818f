"""amp_core.precision against real Lightning: the seed rule, what Lightning does with its output, the CLI."""

import itertools
import json
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from typing import get_args

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from amp_core.precision import (
    InvalidPrecisionError,
    PrecisionResolution,
    compute_effective_precision,
    lightning_precision_values,
    normalize_precision,
    requested_precision_values,
    resolve_precision,
    truth_table,
)

REPO = Path(__file__).resolve().parents[1]
HAS_CUDA = torch.cuda.is_available()
BOOLS = (True, False)


# --- the seed rule -------------------------------------------------------------------------------------------------

RULE_REQUESTED = ["16-mixed", "bf16-mixed", "32-true", "16", "bf16", "32", "64", 16, 32, 64, None, "anything"]


@pytest.mark.parametrize("requested", RULE_REQUESTED)
@pytest.mark.parametrize("use_amp", [None, True, False])
@pytest.mark.parametrize("cuda_available", BOOLS)
@pytest.mark.parametrize("use_gpu", BOOLS)
def test_seed_rule_every_combination(requested, use_amp, cuda_available, use_gpu):
    result = compute_effective_precision(requested, use_amp, cuda_available, use_gpu)
    if use_amp is None:
        assert result is requested
    elif (use_amp, cuda_available, use_gpu) == (True, True, True):
        assert result == "16"
    else:
        assert result == "32"


@pytest.mark.parametrize("use_amp, expected", [(1, "16"), ("yes", "16"), (0, "32"), ("", "32")])
def test_seed_rule_takes_use_amp_by_truthiness(use_amp, expected):
    assert compute_effective_precision("bf16-mixed", use_amp, True, True) == expected


@given(st.one_of(st.none(), st.integers(), st.text(), st.lists(st.integers()), st.floats(allow_nan=True)))
def test_seed_rule_passes_any_requested_object_through_when_use_amp_is_none(requested):
    for cuda_available, use_gpu in itertools.product(BOOLS, BOOLS):
        assert compute_effective_precision(requested, None, cuda_available, use_gpu) is requested


def test_importing_the_module_loads_neither_torch_nor_lightning():
    code = (
        "import sys, amp_core.precision\n"
        "heavy = [m for m in ('torch', 'pytorch_lightning', 'lightning_fabric', 'streamlit') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


# --- what Lightning does on this machine ---------------------------------------------------------------------------


@pytest.mark.parametrize("requested", ["16-mixed", "16", 16])
@pytest.mark.parametrize("cuda_available, use_gpu", [(False, False), (False, True), (True, False)])
def test_fp16_amp_on_cpu_falls_back_to_bf16(requested, cuda_available, use_gpu):
    r = resolve_precision(requested, None, cuda_available, use_gpu)
    assert r.rule_precision == requested  # identity is the seed rule's contract; resolutions are cached
    assert r.accelerator == "cpu"
    assert (r.lightning_precision, r.final_precision, r.fallback) == ("16-mixed", "bf16-mixed", True)
    assert r.plugin == "MixedPrecision"
    assert r.autocast_dtype == str(torch.bfloat16)
    assert r.weights_dtype == str(torch.float32)
    assert r.grad_scaler is False
    assert any("AMP with fp16 is not supported on CPU" in w for w in r.warnings)
    assert "Using bfloat16 Automatic Mixed Precision (AMP)" in r.info
    assert not r.simulated and r.local_error is None and r.error is None


def test_legacy_alias_warning_is_lightnings_own():
    assert any("supported for historical reasons" in w for w in resolve_precision("16").warnings)
    assert not any("supported for historical reasons" in w for w in resolve_precision("16-mixed").warnings)


@pytest.mark.parametrize(
    "requested, lightning_precision, plugin, autocast_dtype, weights_dtype",
    [
        ("bf16", "bf16-mixed", "MixedPrecision", torch.bfloat16, torch.float32),
        ("bf16-mixed", "bf16-mixed", "MixedPrecision", torch.bfloat16, torch.float32),
        ("32", "32-true", "Precision", None, torch.float32),
        (32, "32-true", "Precision", None, torch.float32),
        ("64", "64-true", "DoublePrecision", None, torch.float64),
        (64, "64-true", "DoublePrecision", None, torch.float64),
        ("16-true", "16-true", "HalfPrecision", None, torch.float16),
        ("bf16-true", "bf16-true", "HalfPrecision", None, torch.bfloat16),
        (None, "32-true", "Precision", None, torch.float32),
    ],
)
def test_cpu_resolution_without_fallback(requested, lightning_precision, plugin, autocast_dtype, weights_dtype):
    r = resolve_precision(requested, None, False, False)
    assert r.lightning_precision == r.final_precision == lightning_precision
    assert r.fallback is False
    assert r.plugin == plugin
    assert r.autocast_dtype == (None if autocast_dtype is None else str(autocast_dtype))
    assert r.weights_dtype == str(weights_dtype)
    assert r.grad_scaler is False
    assert not any("not supported on CPU" in w for w in r.warnings)


def test_use_amp_on_a_cuda_machine_gives_fp16_amp_with_a_grad_scaler():
    r = resolve_precision("bf16-mixed", True, True, True)
    assert r.rule_precision == "16"
    assert r.accelerator == "cuda"
    assert (r.lightning_precision, r.final_precision, r.fallback) == ("16-mixed", "16-mixed", False)
    assert r.plugin == "MixedPrecision"
    assert r.autocast_dtype == str(torch.float16)
    assert r.grad_scaler is True
    assert "Using 16bit Automatic Mixed Precision (AMP)" in r.info
    assert not any("CUDA is not available" in w for w in r.warnings)  # simulation artifacts are filtered
    assert r.error is None
    assert r.simulated is (not HAS_CUDA)
    if r.simulated:
        assert "CUDAAccelerator" in r.local_error and "can not run on your system" in r.local_error
    else:
        assert r.local_error is None


def test_bf16_on_a_cuda_machine_keeps_bf16_without_scaler():
    r = resolve_precision("bf16", None, True, True)
    assert (r.accelerator, r.final_precision, r.autocast_dtype, r.grad_scaler) == (
        "cuda",
        "bf16-mixed",
        str(torch.bfloat16),
        False,
    )
    assert r.simulated is (not HAS_CUDA)


def test_simulating_cuda_leaves_lightnings_view_of_this_machine_alone():
    from lightning_fabric.accelerators.cuda import num_cuda_devices
    from lightning_fabric.utilities.rank_zero import rank_zero_module
    from pytorch_lightning.accelerators.cuda import CUDAAccelerator

    filters_before = list(rank_zero_module.log.filters)
    resolve_precision("16-true", True, True, True)
    resolve_precision("64-true", None, True, True)  # a fresh (precision, accelerator) pair, so Lightning is asked
    assert CUDAAccelerator.is_available() is HAS_CUDA
    assert num_cuda_devices() == torch.cuda.device_count()
    assert rank_zero_module.log.filters == filters_before


@pytest.mark.parametrize("cuda_available, use_gpu", itertools.product(BOOLS, BOOLS))
@pytest.mark.parametrize("requested", ["16-mixed", "bf16", 16, "64-true"])
def test_use_amp_false_means_full_precision(requested, cuda_available, use_gpu):
    r = resolve_precision(requested, False, cuda_available, use_gpu)
    assert r.rule_precision == "32"
    assert (r.final_precision, r.plugin, r.autocast_dtype, r.grad_scaler) == ("32-true", "Precision", None, False)


@pytest.mark.parametrize("cuda_available, use_gpu", [(True, False), (False, True), (False, False)])
def test_use_amp_without_a_usable_gpu_means_full_precision(cuda_available, use_gpu):
    r = resolve_precision("16-mixed", True, cuda_available, use_gpu)
    assert (r.rule_precision, r.accelerator, r.final_precision) == ("32", "cpu", "32-true")


def test_lightning_errors_become_part_of_the_answer():
    try:
        import transformer_engine  # noqa: F401
    except ImportError:
        r = resolve_precision("transformer-engine", None, False, False)
        assert r.final_precision is None and r.plugin is None
        assert "transformer_engine" in r.error
        assert ("lightning error", r.error, "Lightning cannot build this configuration") in r.steps()
    else:
        pytest.skip("transformer_engine is installed")


# --- invalid values --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["17", "fp8", "", "banana", 17, 16.0, True, "16-Mixed", [16]])
def test_invalid_precision_raises_a_clear_error(bad):
    for call in (lambda: normalize_precision(bad), lambda: resolve_precision(bad, None, False, False)):
        with pytest.raises(InvalidPrecisionError) as info:
            call()
        assert isinstance(info.value, ValueError)
        message = str(info.value)
        assert "Allowed precision values" in message
        assert all(repr(value) in message for value in ("16-mixed", "bf16-mixed", "32-true", "64-true", "bf16", 16))


def test_invalid_requested_is_rejected_even_when_the_rule_ignores_it():
    with pytest.raises(InvalidPrecisionError):
        resolve_precision("banana", True, True, True)


# --- Lightning, not a copied table -----------------------------------------------------------------------------------


def test_allowed_values_are_lightnings_own():
    from lightning_fabric.connector import _PRECISION_INPUT_STR
    from lightning_fabric.plugins.precision.precision import _PRECISION_INPUT_INT, _PRECISION_INPUT_STR_ALIAS

    assert lightning_precision_values() == get_args(_PRECISION_INPUT_STR) + get_args(_PRECISION_INPUT_STR_ALIAS)
    assert lightning_precision_values(include_aliases=False) == get_args(_PRECISION_INPUT_STR)
    assert set(requested_precision_values()) == set(lightning_precision_values()) | set(get_args(_PRECISION_INPUT_INT))


def test_normalize_precision_agrees_with_lightning():
    from lightning_fabric.connector import _convert_precision_to_unified_args

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for value in requested_precision_values():
            assert normalize_precision(value) == _convert_precision_to_unified_args(value)


CPU_TRAINABLE = [v for v in requested_precision_values() if not str(v).startswith("transformer-engine")]


@pytest.mark.parametrize("requested", CPU_TRAINABLE)
def test_resolution_matches_a_real_cpu_trainer(requested):
    from pytorch_lightning import Trainer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = Trainer(
            accelerator="cpu",
            devices=1,
            precision=requested,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
    r = resolve_precision(requested, None, False, False)
    assert r.final_precision == trainer.precision
    assert r.plugin == type(trainer.precision_plugin).__name__
    assert r.grad_scaler is (getattr(trainer.precision_plugin, "scaler", None) is not None)


# --- truth table ------------------------------------------------------------------------------------------------------


def test_truth_table_covers_every_combination_consistently():
    rows = truth_table()
    expected = set(itertools.product(requested_precision_values(), (None, True, False), BOOLS, BOOLS))
    # (value, type) so that 16 and '16' count separately
    keys = [((type(r.requested), r.requested), r.use_amp, r.cuda_available, r.use_gpu) for r in rows]
    assert len(keys) == len(set(keys)) == len(expected)
    assert {(req, amp, cuda, gpu) for (_, req), amp, cuda, gpu in keys} == expected
    for r in rows:
        assert isinstance(r, PrecisionResolution)
        assert r == resolve_precision(r.requested, r.use_amp, r.cuda_available, r.use_gpu)
        assert r.rule_precision == compute_effective_precision(r.requested, r.use_amp, r.cuda_available, r.use_gpu)
        assert r.accelerator == ("cuda" if r.cuda_available and r.use_gpu else "cpu")
        assert (r.final_precision is None) == (r.error is not None)
        if r.error is not None:  # only what this install cannot build, never a hardware problem
            assert r.lightning_precision.startswith("transformer-engine")
        assert r.simulated is (r.accelerator == "cuda" and not HAS_CUDA)


def test_truth_table_cold_from_many_threads_matches_warm():
    from amp_core import precision

    warm = truth_table()
    precision.clear_cache()
    results = [None] * 6

    def build(i):
        results[i] = truth_table()

    threads = [threading.Thread(target=build, args=(i,)) for i in range(len(results))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(result == warm for result in results)


# --- printing -------------------------------------------------------------------------------------------------------


def test_steps_are_ordered_and_printable():
    r = resolve_precision("16", None, False, False)
    names = [name for name, _, _ in r.steps()]
    order = ["requested", "use_amp", "project rule", "accelerator", "alias", "fallback", "plugin", "autocast"]
    assert [n for n in names if n in order] == order
    assert all(isinstance(part, str) for step in r.steps() for part in step)
    text = str(r)
    assert "bf16-mixed" in text and "AMP with fp16 is not supported on CPU" in text
    assert len(text.splitlines()) == len(r.steps())


def test_simulated_resolution_says_so():
    r = resolve_precision("16-mixed", True, True, True)
    names = [name for name, _, _ in r.steps()]
    assert ("simulated" in names) is r.simulated


def test_as_dict_is_json():
    r = resolve_precision("16-mixed", True, True, True)
    data = json.loads(json.dumps(r.as_dict()))
    assert data["final_precision"] == "16-mixed"
    assert data["grad_scaler"] is True
    assert data["fallback"] is False
    assert data["simulated"] is r.simulated
    assert data["warnings"] == list(r.warnings)


# --- CLI -----------------------------------------------------------------------------------------------------------


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "amp_core.precision", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_cli_explains_one_configuration():
    result = run_cli("--precision", "16-mixed", "--use-amp", "true", "--cuda-available", "true", "--use-gpu", "true")
    assert result.returncode == 0, result.stderr
    assert "project rule" in result.stdout
    assert "MixedPrecision" in result.stdout
    assert "torch.float16" in result.stdout
    assert "Using 16bit Automatic Mixed Precision (AMP)" in result.stdout
    assert "Traceback" not in result.stderr


def test_cli_prints_the_table_and_json():
    table = run_cli("--table")
    assert table.returncode == 0, table.stderr
    assert len(table.stdout.splitlines()) == len(requested_precision_values()) * 12 + 1
    one = run_cli("--precision", "bf16", "--use-amp", "none", "--cuda-available", "false", "--json")
    assert one.returncode == 0, one.stderr
    assert json.loads(one.stdout)["final_precision"] == "bf16-mixed"


@pytest.mark.parametrize(
    "args",
    [
        ["--precision", "banana"],
        ["--precision", "17", "--use-amp", "true"],
        ["--precision", "16-mixed", "--use-amp", "maybe"],
        ["--precision", "16-mixed", "--cuda-available", "sometimes"],
        [],
        ["--precision", "32", "--table"],
    ],
)
def test_cli_bad_input_is_one_line_and_exit_2(args):
    result = run_cli(*args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
