"""The seed's W&B contract: `AmpWandbCallback` logs AMP facts and the loss scale to the active W&B run.

`get_scaler` and `get_loss_scale` read the trainer's GradScaler the seed's way (`get_scale()`, one
host sync on CUDA); `LossScaleMonitor` (amp_core.training.callbacks) reads it without syncing.
"""

from __future__ import annotations

import importlib
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from pytorch_lightning.utilities.rank_zero import rank_zero_warn

FP16_PRECISIONS = ("16", "16-mixed", "16_true")


def get_scaler(trainer: Any) -> Any:
    """The trainer's GradScaler (or any object with `get_scale()`), or None."""
    strategy = getattr(trainer, "strategy", None)
    plugin = getattr(strategy, "precision_plugin", None)
    return getattr(plugin, "scaler", None)


def get_loss_scale(trainer: Any) -> float | None:
    """The current loss scale, or None without a strategy, plugin or scaler, or if reading fails.

    Note: `GradScaler.get_scale()` calls `.item()`, one host sync on CUDA. Per-step readers should
    use `LossScaleMonitor`, which does not sync.
    """
    scaler = get_scaler(trainer)
    if scaler is None:
        return None
    try:
        return float(scaler.get_scale())
    except Exception:
        return None


def _wandb_module() -> Any:
    try:
        return importlib.import_module("wandb")
    except Exception:
        return None


class AmpWandbCallback(Callback):
    """Logs AMP facts to the active W&B run: every `log_every_n_steps` optimizer steps and each epoch end.

    Args:
        enabled: whether AMP is on for this run (logged as `amp/enabled`).
        precision: the precision the run uses; `amp/loss_scale` is logged only for fp16 variants.
        log_every_n_steps: per-step logging cadence; None follows `trainer.log_every_n_steps`.
            Reading the scale is one host sync on CUDA, so each logged step costs one.

    W&B steps stay monotonic: nothing is logged with an explicit `step=`; every payload carries
    `trainer/global_step` (the x-axis `WandbLogger` defines), so epoch-end logs after per-step
    logs are never dropped. No W&B installed, no active run, or W&B raising: training goes on.
    """

    def __init__(self, enabled: bool, precision: str, log_every_n_steps: int | None = None):
        if log_every_n_steps is not None and (not isinstance(log_every_n_steps, int) or log_every_n_steps < 1):
            raise MisconfigurationException(
                f"log_every_n_steps must be a positive int or None, got {log_every_n_steps!r}"
            )
        self.enabled = bool(enabled)
        self.precision = str(precision)
        self.log_every_n_steps = log_every_n_steps
        self._warned = False

    @property
    def logs_loss_scale(self) -> bool:
        return self.enabled and self.precision in FP16_PRECISIONS

    def _get_loss_scale(self, trainer: Any) -> float | None:
        """The seed's `amp_utils.AmpWandbCallback._get_loss_scale`, kept so code written against it runs
        unchanged (subclasses that override it change what is logged); same as `get_loss_scale`."""
        return get_loss_scale(trainer)

    def _payload(self, trainer: Any) -> dict[str, Any]:
        payload: dict[str, Any] = {"amp/enabled": 1 if self.enabled else 0, "amp/precision": self.precision}
        if self.logs_loss_scale:
            scale = self._get_loss_scale(trainer)
            if scale is not None:
                payload["amp/loss_scale"] = scale
        return payload

    def _log(self, payload: dict[str, Any]) -> None:
        wandb = _wandb_module()
        try:
            if wandb is None or getattr(wandb, "run", None) is None:
                return
            wandb.log(payload)
        except Exception as e:  # W&B must never stop training
            if not self._warned:
                self._warned = True
                rank_zero_warn(f"AmpWandbCallback: W&B logging failed, training goes on: {type(e).__name__}: {e}")

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        every = self.log_every_n_steps or getattr(trainer, "log_every_n_steps", 50)
        step = trainer.global_step
        if step == 0 or step % every or step == getattr(self, "_last_step", None):
            return
        self._last_step = step
        payload = self._payload(trainer)
        if "amp/loss_scale" in payload:
            self._log({"amp/loss_scale": payload["amp/loss_scale"], "trainer/global_step": step})

    def on_train_epoch_end(self, trainer: Any, pl_module: Any = None) -> None:
        payload = self._payload(trainer)
        payload["epoch"] = getattr(trainer, "current_epoch", 0)
        if hasattr(trainer, "global_step"):
            payload["trainer/global_step"] = trainer.global_step
        self._log(payload)
