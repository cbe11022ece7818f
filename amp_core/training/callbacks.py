"""Lightning callbacks that make the loss scale visible.

`LossScaleMonitor` records, every optimizer step, what the GradScaler did (scale, skipped step,
growth tracker) with the unscaled gradient norm and the loss, and publishes it through
`trainer.loggers` in the manner of Lightning's `LearningRateMonitor`. `AmpWandbCallback`, the
seed's contract (AMP facts and the loss scale to the active W&B run), lives in
amp_core.training.wandb_callback and is importable from here too.

On CUDA the monitor adds no host synchronisation per step: it keeps 0-d device tensors, stacks
them every `flush_every` steps and copies them into pinned host memory without blocking; a CUDA
event says when the copy has landed, and only then are the values published. On the CPU, where
reading a value waits for nothing, each step's numbers are read as the step ends (fewer ops than
stacking them) and published every 0.05 s (`amp_core.training.grad_stats` says what it reads).
"""

from __future__ import annotations

import math
import time
import warnings
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities.exceptions import MisconfigurationException
from pytorch_lightning.utilities.rank_zero import rank_zero_warn

from amp_core.training import grad_stats, scaler_state
from amp_core.training.skip_probe import SkipLedgerProbe
from amp_core.training.wandb_callback import FP16_PRECISIONS, AmpWandbCallback, get_loss_scale, get_scaler

__all__ = ["FP16_PRECISIONS", "AmpWandbCallback", "LossScaleMonitor", "get_loss_scale", "get_scaler"]


class LossScaleMonitor(Callback):
    """Records the loss scale, skipped steps, growth tracker, unscaled gradients and loss each step.

    Publishes through `trainer.loggers` as `amp/loss_scale` (only with a GradScaler), `amp/skipped`
    (1.0 when the scaler found inf/NaN gradients and skipped the step), `amp/growth_tracker`,
    `amp/grad_norm` (global L2 norm of the unscaled gradients), `amp/grad_max` (their largest
    absolute value; by default only with a GradScaler, see `grad_max`) and `amp/loss`, at the step
    Lightning was on when the step ran (`global_step` advances on skipped steps too).

    For every skipped step it also keeps a ledger row (handed to loggers with a
    `log_skipped_step(step, row)` method): whether the gradients held inf or NaN, the parameter that
    first held one in backward order (the first to receive its gradient: where the overflow began,
    as inf spreads from there to every earlier layer), the scale before and after, and whether an LR
    scheduler stepped although the optimizer did not. It costs no device work per step: the
    per-parameter gradient norms (needed for `amp/grad_norm` anyway) travel with the other values,
    and only a skipped step's are looked at, on the host. Without a GradScaler no step is skipped
    and the ledger does nothing (no hooks on the parameters).

    Every `histogram_every` steps it also counts the unscaled gradient values in log2 bins (on the
    gradients' device) and hands the histogram to loggers that have a
    `log_grad_histogram(step, log2_lo, counts, zeros, nonfinite)` method.

    A skipped step is read as the scale dropping in `GradScaler.update()`: that is the same with
    fused optimizers, which unscale inside `step()` and leave the scaler's per-optimizer state empty.

    Args:
        flush_every: steps kept before one batched copy to the host and publication. None: on CPU,
            every `PUBLISH_SECONDS` (0.05 s: per-step publishing costs more than the copy), on
            CUDA every 20 steps. What was published is then saved (`Logger.save()`, at most every
            0.05 s), so `RunRecordLogger` writes it. Whatever is kept is also published and saved
            when training pauses (validation, an epoch's end), ends or fails.
        histogram_every: steps between gradient histograms; None for none.
        grad_max: whether to take `amp/grad_max` every step. None (default): only with a GradScaler,
            where it says how close a step came to fp16's overflow (the Runs page replays other
            scaler policies from it). It costs a second pass over every gradient, as much as the
            norms (on the CPU demo MLP, about 4% of a 2.7 ms step): without a scaler, nothing reads it.
    """

    KEYS = ("amp/loss", "amp/loss_scale", "amp/skipped", "amp/grad_norm", "amp/grad_max", "amp/growth_tracker")
    # Bin k of a histogram counts |g| in [2**(LOG2_LO + k), 2**(LOG2_LO + k + 1)); the first bin also
    # takes everything smaller, zeros included (they are counted apart as well), the last everything
    # larger but finite (grad_stats.histogram).
    LOG2_LO, LOG2_HI = grad_stats.LOG2_LO, grad_stats.LOG2_HI
    VALUES = 7  # per step: loss, scale, skipped, grad norm, grad max, growth tracker, scale after
    PUBLISH_SECONDS = 0.05  # on CPU, steps are published (and saved) in batches this far apart

    def __init__(
        self, flush_every: int | None = None, histogram_every: int | None = None, grad_max: bool | None = None
    ):
        for name, value in (("flush_every", flush_every), ("histogram_every", histogram_every)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise MisconfigurationException(
                    f"LossScaleMonitor: {name} must be a positive int or None, got {value!r}"
                )
        if grad_max is not None and not isinstance(grad_max, bool):
            raise MisconfigurationException(f"LossScaleMonitor: grad_max must be True, False or None, got {grad_max!r}")
        self.flush_every = flush_every
        self.histogram_every = histogram_every
        self.grad_max = grad_max
        self._with_max = True  # decided in on_train_start (None: whether there is a GradScaler)
        self._pending: dict[str, Any] | None = None  # the step between on_before_optimizer_step and update()
        self._steps: list[int] = []
        self._scheduler_moves: list[tuple[bool, bool]] = []  # host facts per step: (scheduler moved, optimizer stepped)
        # per step, on the host path: its numbers and gradient statistics (a tuple); on the device path:
        # a tensor of its values, then one of its per-parameter gradient norms
        self._rows: list[Any] = []
        self._ledger_steps: list[Any] = []  # per step: what the ledger needs to explain a skip (host side)
        self._hists: list[tuple[int, torch.Tensor]] = []
        self._in_flight: list[tuple[list, Any, list[int], torch.Tensor | None, Any]] = []  # flushed blocks
        self._has_scaler = False
        self._cuda = False
        self._host = True
        self._ledger = SkipLedgerProbe()

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and not trainer.loggers:
            raise MisconfigurationException(
                "Cannot use `LossScaleMonitor` callback with `Trainer` that has no logger: "
                "pass a logger, e.g. `Trainer(logger=RunRecordLogger(...))` or `CSVLogger`."
            )

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not pl_module.automatic_optimization:
            rank_zero_warn(
                "LossScaleMonitor follows automatic optimization; with manual optimization it records nothing."
            )
        scaler = get_scaler(trainer)
        scaler_state.check_scaler(scaler)  # loud if a torch release renamed what the steps below read
        self._has_scaler = scaler_state.is_enabled(scaler)
        self._with_max = self._has_scaler if self.grad_max is None else self.grad_max
        self._device = trainer.strategy.root_device
        self._cuda = self._device.type == "cuda"
        self._host = self._host_path(self._device)
        # made once: per step, every small tensor made on the CPU costs a few microseconds of dispatch
        self._zero = torch.zeros((), device=self._device)
        self._nan = torch.full((), float("nan"), device=self._device)
        self._every = self.flush_every or (20 if self._cuda else None)  # None: by time (CPU)
        self._flushed_at = self._saved_at = -math.inf  # the first step is published at once
        if self._has_scaler:  # without a GradScaler no step is skipped: the ledger's hooks would only cost
            self._ledger.attach(trainer, pl_module)

    @staticmethod
    def _host_path(device: torch.device) -> bool:
        """Whether a step's numbers are read on the host as it ends (CPU: nothing to wait for) or kept
        on the device and copied in batches (CUDA, and any other device)."""
        return device.type == "cpu"

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._has_scaler:
            self._ledger.batch_start(trainer)

    def _histogram(self, grads: list[torch.Tensor], log2_unscale: torch.Tensor) -> torch.Tensor:
        """[zeros, nonfinite, counts...] of |g| / 2**log2_unscale in log2 bins (`grad_stats.histogram`)."""
        return grad_stats.histogram(grads, log2_unscale)

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        scaler = get_scaler(trainer)
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        grads = [p.grad for p in params]
        scale = unscale = None
        if (scale_now := scaler_state.scale_tensor(scaler)) is not None:
            scale = float(scale_now) if self._host else scale_now.detach().clone()
            if not scaler_state.unscaled(scaler, optimizer):
                unscale = scale  # a fused optimizer unscales inside step(): these gradients are still scaled
        step = trainer.global_step
        if self.histogram_every and grads and step % self.histogram_every == 0:
            log2_unscale = torch.log2(torch.as_tensor(unscale)) if unscale is not None else self._zero
            self._hists.append((step, self._histogram(grads, log2_unscale)))
        if self._host:  # read now: on the CPU that waits for nothing
            stats = grad_stats.host_stats(grads, self._with_max)
        elif grads:
            norms, norm, gmax = grad_stats.device_stats(grads, self._with_max)
            if unscale is not None:
                norm, gmax = norm / unscale, gmax / unscale
            stats = (norms, norm, gmax)
        else:
            stats = (torch.zeros(0, device=self._device), self._zero, self._zero)
        self._pending = {"step": step, "scale": scale, "unscale": unscale, "stats": stats}
        self._pending["ledger"] = self._ledger.take_step(params)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        pending, self._pending = self._pending, None
        if pending is None:  # gradient accumulation: no optimizer step on this batch
            self._publish_landed(trainer, wait=False)
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        scaler = get_scaler(trainer)
        if self._host:
            self._rows.append(self._host_row(pending, loss, scaler))
        else:
            self._rows += self._device_row(pending, loss, scaler)
        self._steps.append(pending["step"])
        self._scheduler_moves.append(self._ledger.batch_facts(trainer) if self._has_scaler else (False, False))
        self._ledger_steps.append(pending["ledger"])
        now = time.monotonic()
        due = len(self._steps) >= self._every if self._every else now - self._flushed_at >= self.PUBLISH_SECONDS
        if due:
            self._flush()
            self._flushed_at = now
        if self._publish_landed(trainer, wait=False) and (
            not self._every or now - self._saved_at >= self.PUBLISH_SECONDS
        ):
            self._save_loggers(trainer)
            self._saved_at = now

    def _host_row(self, pending: dict[str, Any], loss: Any, scaler: Any) -> tuple:
        """CPU: the step's numbers read now (no device to wait for) and its gradient statistics."""
        loss = loss.item() if isinstance(loss, torch.Tensor) else math.nan
        scale = scale_after = tracker = math.nan
        if pending["scale"] is not None:
            scale, scale_after = pending["scale"], float(scaler_state.scale_tensor(scaler))
            tracker_now = scaler_state.growth_tracker(scaler)
            tracker = float(tracker_now) if tracker_now is not None else math.nan
        return loss, scale, scale_after, tracker, pending["stats"], pending["unscale"]

    def _device_row(self, pending: dict[str, Any], loss: Any, scaler: Any) -> list[torch.Tensor]:
        """CUDA: the step's 0-d tensors stacked on the device (copied to the host in batches), then its
        per-parameter norms."""
        loss = loss.detach().float().reshape(()).to(self._device) if isinstance(loss, torch.Tensor) else self._nan
        nan = self._nan
        if pending["scale"] is not None:
            scale_now, tracker_now = scaler_state.scale_tensor(scaler), scaler_state.growth_tracker(scaler)
            skipped = (scale_now < pending["scale"]).float()
            tracker = tracker_now.float() if tracker_now is not None else nan
            scale, scale_after = pending["scale"], scale_now.float().reshape(())
        else:
            scale, skipped, tracker, scale_after = nan, self._zero, nan, nan
        norms, norm, gmax = pending["stats"]
        return [torch.stack([loss, scale, skipped, norm.detach(), gmax.detach(), tracker, scale_after]), norms.detach()]

    def _save_loggers(self, trainer: pl.Trainer) -> None:
        """Lightning's `Logger.save()`: a logger that buffers (RunRecordLogger's writer) writes now."""
        for logger in trainer.loggers:
            logger.save()

    def _flush(self) -> None:
        if not self._rows:
            return
        hist_steps = [s for s, _ in self._hists]
        hists = torch.stack([h for _, h in self._hists]) if self._hists else None
        steps, rows = self._steps, self._rows
        self._steps, self._rows, self._hists = [], [], []
        moves, self._scheduler_moves = self._scheduler_moves, []
        ledger, self._ledger_steps = self._ledger_steps, []
        event = None
        if self._host:
            block = rows  # already host numbers (their gradient statistics are read when published)
        else:
            block = torch.cat(rows)  # one flat block: a step's values, then its norms (their count varies)
            widths = [len(n) for n in rows[1::2]]
            steps = list(zip(steps, widths))
        if self._cuda:
            block, hists = (self._to_pinned(t) for t in (block, hists))
            event = torch.cuda.Event()
            event.record()
        self._in_flight.append((list(zip(steps, moves, ledger)), block, hist_steps, hists, event))

    @staticmethod
    def _to_pinned(t: torch.Tensor | None) -> torch.Tensor | None:
        if t is None:
            return None
        host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
        host.copy_(t, non_blocking=True)
        return host

    def _host_values(self, block: list[tuple]) -> list[tuple]:
        """Per step: (loss, scale, skipped, norm, gmax, tracker, scale_after, norms) from host rows."""
        out = []
        for loss, scale, scale_after, tracker, stats, unscale in block:
            norms, norm, gmax = stats
            if unscale is not None:
                norm, gmax = norm / unscale, gmax / unscale
            out.append((loss, scale, float(scale_after < scale), norm, gmax, tracker, scale_after, norms))
        return out

    def _device_values(self, steps: list, block: torch.Tensor) -> list[tuple]:
        flat, at, out = block.tolist(), 0, []
        for (_, width), _, _ in steps:
            values, norms = flat[at : at + self.VALUES], flat[at + self.VALUES : at + self.VALUES + width]
            out.append((*values, norms))
            at += self.VALUES + width
        return out

    def _publish_landed(self, trainer: pl.Trainer, wait: bool) -> int:
        """Hands every landed block to the loggers; returns how many steps it published."""
        published = 0
        while self._in_flight:
            steps, block, hist_steps, hists, event = self._in_flight[0]
            if event is not None:
                if wait:
                    event.synchronize()
                elif not event.query():
                    break
            self._in_flight.pop(0)
            published += len(steps)
            values = self._host_values(block) if self._host else self._device_values(steps, block)
            for (step, moves, ledger), (loss, scale, skipped, norm, gmax, tracker, scale_after, norms) in zip(
                steps, values
            ):
                step = step if self._host else step[0]
                metrics = {"amp/loss": loss, "amp/skipped": skipped, "amp/grad_norm": norm}
                if self._with_max:
                    metrics["amp/grad_max"] = gmax
                if self._has_scaler:
                    metrics["amp/loss_scale"] = scale
                    metrics["amp/growth_tracker"] = tracker
                for logger in trainer.loggers:
                    logger.log_metrics(metrics, step=step)
                if skipped:
                    row = self._ledger.row(scale, scale_after, norms, ledger, moves)
                    for logger in trainer.loggers:
                        if hasattr(logger, "log_skipped_step"):
                            logger.log_skipped_step(step, row)
            for step, h in zip(hist_steps, hists.tolist() if hists is not None else []):
                for logger in trainer.loggers:
                    if hasattr(logger, "log_grad_histogram"):
                        logger.log_grad_histogram(step, self.LOG2_LO, [int(c) for c in h[2:]], int(h[0]), int(h[1]))
        return published

    def _publish_and_save(self, trainer: pl.Trainer) -> None:
        """Training pauses (validation, an epoch's end): what was measured goes to the loggers and, through
        Lightning's `Logger.save()`, to disk, so a live view is not left behind while it waits."""
        self._flush()
        self._publish_landed(trainer, wait=False)
        self._save_loggers(trainer)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._publish_and_save(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._publish_and_save(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._flush()
        self._publish_landed(trainer, wait=True)
        self._ledger.detach()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        # Whatever was measured before a failure or a stop is still worth keeping; if keeping it fails
        # too, the run's own exception is the one that propagates, and this one is said beside it.
        try:
            self.on_train_end(trainer, pl_module)
        except Exception as e:
            warnings.warn(
                f"LossScaleMonitor: the steps measured before the run's {type(exception).__name__} could not all "
                f"be published: {type(e).__name__}: {e}",
                RuntimeWarning,
                stacklevel=2,
            )
