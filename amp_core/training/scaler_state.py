"""The GradScaler's private state, read in one place.

The monitor reads the scale and the growth tracker as the 0-d device tensors the scaler keeps
(`_scale`, `_growth_tracker`) rather than through `get_scale()`, which is a host sync on CUDA; it
reads each optimizer's stage in `_per_optimizer_states` to know whether the gradients it sees are
unscaled yet; the record notes the scaler's settings (`_init_scale`, `_growth_factor`, ...). None of
these is public API, so a torch release may rename them: `check_scaler` is called at run start and
fails the run with the torch version in the message, instead of recording "no scaler" in silence.

A disabled GradScaler (`enabled=False`) keeps none of this state and scales nothing: it reads as no
scaler.
"""

from __future__ import annotations

from typing import Any

import torch

try:  # the stage a step's gradients are in once unscale_() ran
    from torch.amp.grad_scaler import OptState

    UNSCALED = OptState.UNSCALED
except (ImportError, AttributeError):  # named by check_scaler, at run start
    UNSCALED = None

# The attributes amp_core reads, as torch.amp.GradScaler.__init__ sets them (torch 2.x).
TENSORS = ("_scale", "_growth_tracker")  # None until the first scale()
SETTINGS = ("_init_scale", "_growth_factor", "_backoff_factor", "_growth_interval")
REQUIRED = (*TENSORS, "_per_optimizer_states", *SETTINGS)


class ScalerInternalsError(RuntimeError):
    """The GradScaler lacks the private state amp_core reads (a torch version it was not written for)."""


def is_enabled(scaler: Any) -> bool:
    """False for None and for a disabled torch GradScaler; True for any other scaler."""
    if scaler is None:
        return False
    return scaler.is_enabled() if isinstance(scaler, torch.amp.GradScaler) else True


def check_scaler(scaler: Any) -> None:
    """Raise ScalerInternalsError, naming the torch version, if an enabled scaler lacks what amp_core reads."""
    if not is_enabled(scaler):
        return
    missing = [name for name in REQUIRED if not hasattr(scaler, name)]
    if UNSCALED is None:
        missing.append("torch.amp.grad_scaler.OptState.UNSCALED")
    if missing:
        raise ScalerInternalsError(
            f"{type(scaler).__module__}.{type(scaler).__qualname__} under torch {torch.__version__} has no "
            f"{', '.join(missing)}: AMP Explorer reads these GradScaler internals to record the loss scale "
            f"without a host sync, and was written for torch 2.x, where GradScaler.__init__ sets them"
        )


def scale_tensor(scaler: Any) -> torch.Tensor | None:
    """The current loss scale as the scaler's own device tensor (no sync); None before the first scale()."""
    return scaler._scale if is_enabled(scaler) else None


def growth_tracker(scaler: Any) -> torch.Tensor | None:
    """Clean steps since the last growth or backoff, as a device tensor; None before the first scale()."""
    return scaler._growth_tracker


def unscaled(scaler: Any, optimizer: Any) -> bool:
    """Whether this step's gradients of `optimizer` are already unscaled (False for a fused optimizer,
    which unscales inside step(), and before `unscale_`)."""
    state = scaler._per_optimizer_states.get(id(optimizer))
    return state is not None and state.get("stage") is UNSCALED


def settings(scaler: Any) -> dict[str, Any]:
    """init_scale, growth_factor, backoff_factor, growth_interval of an enabled scaler; {} otherwise."""
    if not is_enabled(scaler):
        return {}
    check_scaler(scaler)
    return {
        "init_scale": float(scaler._init_scale),
        "growth_factor": float(scaler._growth_factor),
        "backoff_factor": float(scaler._backoff_factor),
        "growth_interval": int(scaler._growth_interval),
    }
