"""AMP Explorer's engine: see what automatic mixed precision does in PyTorch Lightning.

Importing the package is cheap (no torch, no Lightning): the names that need them load on first use.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "compute_effective_precision": "amp_core.precision",
    "resolve_precision": "amp_core.precision",
    "truth_table": "amp_core.precision",
    "normalize_precision": "amp_core.precision",
    "AmpWandbCallback": "amp_core.callbacks",
    "LossScaleMonitor": "amp_core.callbacks",
    "get_loss_scale": "amp_core.callbacks",
    "RunRecordLogger": "amp_core.record_logger",
    "RunConfig": "amp_core.config",
    "ConfigError": "amp_core.config",
    "fp16_mixed": "amp_core.plugins",
    "scaler_expectation": "amp_core.advice",
    "WORKLOADS": "amp_core.workloads",
    "user_models_allowed": "amp_core.workloads",
    "RunWriter": "amp_core.runs",
    "RunFollower": "amp_core.runs",
    "list_runs": "amp_core.runs",
    "load_run": "amp_core.runs",
    "change_points": "amp_core.runs",
    "record_step": "amp_core.op_recorder",
    "skipped_rows": "amp_core.skip_ledger",
    "skip_hover": "amp_core.skip_ledger",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'amp_core' has no attribute {name!r}")


def __dir__():
    return __all__
