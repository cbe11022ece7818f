"""Callbacks that make things go wrong on purpose, and the guard that stops a run whose loss is not finite.

`InjectOverflow` puts a real inf into the gradients at chosen steps (the GradScaler then skips them: demos
and tests of the skip ledger); `InjectFault` raises, runs out of memory or returns NaN at a step (the
failure paths of the worker and the record); `NonFiniteLossGuard` ends a run whose loss became NaN or inf.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback
from pytorch_lightning.utilities.exceptions import MisconfigurationException


class InjectOverflow(Callback):
    """Puts a real inf into the gradients at chosen steps, so the GradScaler skips them on cue (demos, tests)."""

    def __init__(self, steps: list[int]):
        self.steps = frozenset(int(s) for s in steps)

    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step in self.steps:
            p = next(p for p in pl_module.parameters() if p.grad is not None)
            p.grad.view(-1)[0] = float("inf")


class NonFiniteLossGuard(Callback):
    """Fails the run once the loss has been NaN or inf for `patience` steps in a row.

    With a GradScaler a non-finite loss only skips steps (the scale sinks towards zero) and the run
    would "complete" having learnt nothing; this makes it fail with a message instead. The streak is
    counted on the device and read every `check_every` steps (None: every step on CPU, 25 on CUDA),
    so on a GPU it costs one host sync per `check_every` steps.
    """

    def __init__(self, patience: int = 25, check_every: int | None = None):
        if not isinstance(patience, int) or patience < 1:
            raise MisconfigurationException(f"NonFiniteLossGuard: patience must be a positive int, got {patience!r}")
        self.patience = patience
        self.check_every = check_every
        self._streak: torch.Tensor | None = None

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if not isinstance(loss, torch.Tensor):
            return
        bad = (~torch.isfinite(loss.detach())).all()
        self._streak = bad.long() if self._streak is None else (self._streak + 1) * bad.long()
        every = self.check_every or (25 if loss.device.type == "cuda" else 1)
        if trainer.global_step % every == 0 and int(self._streak) >= self.patience:
            streak = int(self._streak)
            raise FloatingPointError(
                f"the loss has been NaN or inf for {streak} steps in a row (since step {trainer.global_step - streak}): "
                "the model diverged or the data holds non-finite values"
            )


FAULTS = ("raise", "oom", "nan")


class InjectFault(Callback):
    """Makes a run fail on purpose at `step`, to show (and test) how failures are recorded.

    raise: the training step raises. oom: it raises torch.OutOfMemoryError, as CUDA does when memory
    runs out. nan: from that step on the model's output, hence the loss, is NaN.
    """

    def __init__(self, kind: str, step: int):
        if kind not in FAULTS:
            raise MisconfigurationException(f"InjectFault: kind must be one of {', '.join(FAULTS)}, got {kind!r}")
        self.kind, self.step = kind, int(step)
        self._hooked = False

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step < self.step:
            return
        if self.kind == "raise":
            raise RuntimeError(f"injected fault: the training step raised at step {trainer.global_step}")
        if self.kind == "oom":
            raise torch.OutOfMemoryError(
                f"injected fault: out of memory at step {trainer.global_step} (simulated; a real CUDA OOM reads alike)"
            )
        if not self._hooked:
            pl_module.register_forward_hook(lambda module, args, output: output * float("nan"))
            self._hooked = True
