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
    "AmpWandbCallback": "amp_core.training.wandb_callback",
    "LossScaleMonitor": "amp_core.training.callbacks",
    "get_loss_scale": "amp_core.training.wandb_callback",
    "RunRecordLogger": "amp_core.training.record_logger",
    "RunConfig": "amp_core.training.config",
    "ConfigError": "amp_core.training.config",
    "fp16_mixed": "amp_core.training.plugins",
    "scaler_expectation": "amp_core.analysis.advice",
    "WORKLOADS": "amp_core.training.workloads",
    "user_models_allowed": "amp_core.training.workloads",
    "RunWriter": "amp_core.record",
    "RunFollower": "amp_core.record",
    "list_runs": "amp_core.record",
    "load_run": "amp_core.record",
    "change_points": "amp_core.record",
    "record_step": "amp_core.inside.op_recorder",
    "skipped_rows": "amp_core.record.skips",
    "skip_hover": "amp_core.record.skips",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'amp_core' has no attribute {name!r}")


def __dir__():
    return __all__
