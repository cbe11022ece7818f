"""Weights & Biases for a run: a WandbLogger whose failures become warnings in the run's status."""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from amp_core.record import RunWriter


def wandb_credentials_present() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


def make_wandb_logger(config: Any, writer: RunWriter) -> Any:
    """A WandbLogger whose failures become warnings in the run's status: W&B never stops training.
    None when W&B is disabled or cannot start."""
    if config.wandb == "disabled":
        return None
    offline = config.wandb == "offline"
    if not offline and not wandb_credentials_present():
        writer.add_warning(
            "W&B online needs credentials (`wandb login` or WANDB_API_KEY): this run logs to W&B offline instead"
        )
        offline = True
    try:
        from pytorch_lightning.loggers import WandbLogger

        class ResilientWandbLogger(WandbLogger):
            broken = False

            def _guarded(self, what: str, fn: Any, *args: Any) -> Any:
                if self.broken:
                    return None
                try:
                    return fn(*args)
                except Exception as e:
                    self.broken = True
                    writer.add_warning(f"W&B failed ({what}: {type(e).__name__}: {e}); training goes on without it")
                    return None

            def log_metrics(self, metrics: Any, step: Any = None) -> None:
                self._guarded("log", super().log_metrics, metrics, step)

            def log_hyperparams(self, params: Any) -> None:
                self._guarded("config", super().log_hyperparams, params)

            def finalize(self, status: str) -> None:
                self._guarded("finish", super().finalize, status)

        import wandb

        logger = ResilientWandbLogger(
            project=os.environ.get("WANDB_PROJECT", "amp-explorer"),
            name=writer.id,
            save_dir=str(writer.path),
            offline=offline,
            config=asdict(config),
            # Offline, the list of installed packages W&B saves at init is the slowest part of it: 0.19 s
            # of reading every package's metadata, before the first step (the run record notes the
            # versions that matter). Online, init waits on the network for longer anyway: kept there.
            settings=wandb.Settings(x_save_requirements=not offline),
        )
        _ = logger.experiment  # start the W&B run now, so a failing start is caught here and not mid-training
        return logger
    except Exception as e:
        writer.add_warning(f"W&B is unavailable, training without it: {type(e).__name__}: {e}")
        return None


def finish_wandb(logger: Any, writer: RunWriter) -> None:
    """End the W&B run (else a later WandbLogger in this process reuses it)."""
    if logger is None or logger.broken:
        return
    try:
        logger.experiment.finish()
    except Exception as e:
        writer.add_warning(f"W&B finish failed: {type(e).__name__}: {e}")
