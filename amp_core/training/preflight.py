"""What can be checked before a run starts, and what to say when a run fails for a known reason.

Cheap on purpose (no torch, no Lightning): the Train page calls it on every rerun, and
`RunConfig.validate` calls it so the CLI and the worker refuse the same runs.
"""

from __future__ import annotations

import importlib.util

_TRANSFORMER_ENGINE = (
    "transformer_engine",
    "NVIDIA Transformer Engine (pip install transformer-engine[pytorch]; CUDA GPUs only)",
)

# Precisions that need a package Lightning does not install: precision -> (import name, what to install).
PRECISION_PACKAGES = {
    "transformer-engine": _TRANSFORMER_ENGINE,
    "transformer-engine-float16": _TRANSFORMER_ENGINE,
}

# Precisions that start fine and commonly fail later, and why.
PRECISION_RISKS = {
    "16-true": (
        "16-true keeps the weights, gradients and optimizer state in fp16 with no GradScaler: small updates round away and "
        "gradients under- or overflow, so it commonly diverges to a NaN loss within tens of steps. 16-mixed (fp32 weights, "
        "loss scaling) is the fp16 mode that trains reliably"
    ),
}


def missing_precision_package(precision: str) -> str | None:
    """One line saying that `precision` cannot run here because a package it needs is missing; None if it can.

    importlib's finder locates a top-level package without importing it."""
    need = PRECISION_PACKAGES.get(precision)
    if need is None:
        return None
    module, what = need
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a broken install counts as missing
        found = False
    return None if found else f"precision {precision} needs the `{module}` package, which is not installed here: {what}"


def absent_accelerator(accelerator: str, cuda_devices: int | None) -> str | None:
    """One line when `accelerator` asks for a GPU and none is visible (cuda_devices 0); None when unknown or fine."""
    if accelerator == "gpu" and cuda_devices == 0:
        return "accelerator gpu needs a CUDA GPU, and none is visible here: choose cpu or auto"
    return None


def precision_risk(precision: str) -> str | None:
    """A sentence on how `precision` commonly fails (16-true diverges), or None."""
    return PRECISION_RISKS.get(precision)


def failure_hint(precision: str, error: BaseException | str) -> str:
    """What to add to a failed run's message when its precision is the likely reason ('' otherwise)."""
    text = str(error)
    non_finite = isinstance(error, FloatingPointError) or "NaN" in text or "non-finite" in text
    if precision == "16-true" and non_finite:
        return f". Precision 16-true is the likely reason: {PRECISION_RISKS['16-true']}."
    return ""
