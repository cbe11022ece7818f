"""The device side of the skip ledger: why the GradScaler skipped a step, measured without a host sync.

`LossScaleMonitor` calls `flags()` in `on_before_optimizer_step` with the per-parameter L2 norms and
largest |g| it computes anyway. The answer (inf seen, NaN seen, index of the first parameter that
held one) is a 3-vector on the device that travels in the monitor's batched copy; `row()` turns it
into a ledger row on the host once that copy has landed.

"First" means backward order: the order in which parameters received their gradient in this step,
recorded by post-accumulate-grad hooks (host-side Python, no sync). An inf born in layer L flows into
every layer before it, so the first parameter to hold one is where it began; in the optimizer's
order it would nearly always be the input layer. A NaN in a gradient makes its L2 norm NaN; an inf
(and no NaN) makes its largest |g| inf. A finite gradient whose norm overflows float32 is not flagged.

The LR-scheduler check is host-side too: a scheduler "moved" when its `last_epoch` (its step count)
or its last learning rates changed during the batch; the optimizer "stepped" when its `step()` ran
(a step post-hook counts calls; GradScaler does not call `step()` on a skipped step). A fused
optimizer is always called and skips inside its kernel, so the skip itself comes from the scale.
"""

from __future__ import annotations

from typing import Any

import torch

from amp_core.record import finite_or_none


def nonfinite_kind(inf: bool, nan: bool) -> str | None:
    return "inf and NaN" if inf and nan else "NaN" if nan else "inf" if inf else None


class SkipLedgerProbe:
    def __init__(self) -> None:
        self._names: list[str] = []
        self._index_of: dict[int, int] = {}
        self._grad_order: list[int] = []
        self._hooks: list[Any] = []
        self._order_cache: tuple | None = None
        self._schedulers_before: list[tuple] = []
        self._optimizer_steps = 0
        self._steps_at_batch_start = 0

    def attach(self, trainer: Any, pl_module: Any) -> None:
        self.detach()
        names = {id(p): n for n, p in pl_module.named_parameters()}
        params = [p for opt in trainer.optimizers for g in opt.param_groups for p in g["params"]]
        self._names = [names.get(id(p), f"param[{i}]") for i, p in enumerate(params)]
        self._index_of = {id(p): i for i, p in enumerate(params)}
        for i, p in enumerate(params):
            if p.requires_grad:
                self._hooks.append(p.register_post_accumulate_grad_hook(lambda _p, i=i: self._grad_order.append(i)))
        for opt in trainer.optimizers:
            self._hooks.append(opt.register_step_post_hook(self._count_step))

    def detach(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def _count_step(self, optimizer: Any, args: Any, kwargs: Any) -> None:
        self._optimizer_steps += 1

    @staticmethod
    def _scheduler_state(trainer: Any) -> list[tuple]:
        out = []
        for config in getattr(trainer, "lr_scheduler_configs", None) or []:
            s = config.scheduler
            lrs = getattr(s, "_last_lr", None) or ()
            out.append(
                (getattr(s, "last_epoch", None), tuple(x for x in lrs if isinstance(x, float)))
            )  # a tensor lr would need a sync
        return out

    def batch_start(self, trainer: Any) -> None:
        self._grad_order.clear()  # every micro-batch's backward runs in the same order: the last one's is kept
        self._steps_at_batch_start = self._optimizer_steps
        self._schedulers_before = self._scheduler_state(trainer)

    def batch_facts(self, trainer: Any) -> tuple[bool, bool]:
        """(an LR scheduler moved during this batch, the optimizer's step() ran): host facts."""
        return self._scheduler_state(
            trainer
        ) != self._schedulers_before, self._optimizer_steps > self._steps_at_batch_start

    def _order_tensors(
        self, order: tuple[int, ...], param_index: list[int], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        key = (order, tuple(param_index), str(device))
        if self._order_cache is None or self._order_cache[0] != key:
            host = (
                torch.tensor(order, dtype=torch.long),
                torch.tensor([param_index[k] for k in order], dtype=torch.long),
            )
            if device.type == "cuda":  # pinned and non-blocking: no sync; the host copies stay alive in the cache
                host = tuple(t.pin_memory() for t in host)
                on_device = tuple(t.to(device, non_blocking=True) for t in host)
            else:
                on_device = host
            self._order_cache = (key, host, on_device)
        return self._order_cache[2]

    def flags(self, optimizer: Any, norms: torch.Tensor, maxabs: torch.Tensor) -> torch.Tensor:
        """[inf seen, NaN seen, index of the first parameter (backward order) holding one, or -1], on the device.

        `norms` and `maxabs` hold each gradient's L2 norm and largest |g|, for the optimizer's
        parameters that have a gradient, in the optimizer's order.
        """
        params = [p for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        param_index = [self._index_of.get(id(p), -1) for p in params]
        arrival = {i: rank for rank, i in enumerate(dict.fromkeys(self._grad_order))}
        self._grad_order.clear()
        order = tuple(sorted(range(len(params)), key=lambda k: (arrival.get(param_index[k], len(arrival)), k)))
        perm, index = self._order_tensors(order, param_index, norms.device)
        nan = torch.isnan(norms)
        # index_select and gather, not t[i]: indexing with a 0-d tensor can read it on the host (a sync)
        bad = (nan | ~torch.isfinite(maxabs)).index_select(0, perm)
        culprit = index.gather(0, bad.int().argmax().reshape(1)).reshape(())
        first = torch.where(bad.any(), culprit, torch.full((), -1, dtype=torch.long, device=norms.device))
        return torch.stack([torch.isinf(maxabs).any().float(), nan.any().float(), first.float()])

    def row(
        self, scale_before: float, scale_after: float, flags: list[float], facts: tuple[bool, bool]
    ) -> dict[str, Any]:
        """The ledger row of a skipped step, on the host (flags from `flags()`, facts from `batch_facts()`)."""
        inf, nan, first = flags
        index = int(first)
        moved, stepped = facts
        return {
            "scale_before": finite_or_none(scale_before),
            "scale_after": finite_or_none(scale_after),
            "nonfinite": nonfinite_kind(bool(inf), bool(nan)),
            "param": self._names[index] if 0 <= index < len(self._names) else None,
            "param_index": index if index >= 0 else None,
            "scheduler_stepped": bool(moved),
            "optimizer_step_called": bool(stepped),
        }
