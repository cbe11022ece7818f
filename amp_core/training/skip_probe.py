"""The skip ledger's probe: why the GradScaler skipped a step, with no device work and no host sync per step.

`LossScaleMonitor` computes each gradient's L2 norm every step anyway (for `amp/grad_norm`); those
per-parameter norms travel in its batched copy to the host. Per step the probe only notes, on the
host, which parameters had a gradient (`take_step`) and in which order they received it; only for a
step the scaler skipped does `row()` look at the norms: a NaN in a gradient makes its norm NaN, an
inf (and no NaN) makes it inf, so the first parameter with a non-finite norm is where it began. A
finite gradient whose norm overflows float32 (norms are taken in float32, so fp16 gradients do not
overflow early) would be read as inf; only skipped steps are looked at, where something really
was non-finite.

"First" means backward order: the order in which parameters received their gradient in this step,
recorded by post-accumulate-grad hooks (host-side Python, no sync). An inf born in layer L flows into
every layer before it, so the first parameter to hold one is where it began; in the optimizer's
order it would nearly always be the input layer.

The LR-scheduler check is host-side too: a scheduler "moved" when its `last_epoch` (its step count)
or its last learning rates changed during the batch; the optimizer "stepped" when its `step()` ran
(a step post-hook counts calls; GradScaler does not call `step()` on a skipped step). A fused
optimizer is always called and skips inside its kernel, so the skip itself comes from the scale.
"""

from __future__ import annotations

import math
from typing import Any

from amp_core.record import finite_or_none


def nonfinite_kind(inf: bool, nan: bool) -> str | None:
    return "inf and NaN" if inf and nan else "NaN" if nan else "inf" if inf else None


class SkipLedgerProbe:
    def __init__(self) -> None:
        self._names: list[str] = []
        self._index_of: dict[int, int] = {}
        self._grad_order: list[int] = []
        self._hooks: list[Any] = []
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
                # self._grad_order is looked up per call: take_step() swaps in a fresh list
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

    def take_step(self, params: list[Any]) -> tuple[list[Any], list[int]]:
        """This step's host facts for `row()`: the parameters with a gradient (in the optimizer's order,
        the order of the norms) and the backward order they arrived in. O(1): nothing is copied."""
        order, self._grad_order = self._grad_order, []
        return params, order

    def row(
        self,
        scale_before: float,
        scale_after: float,
        norms: list[float],
        step: tuple[list[Any], list[int]],
        facts: tuple[bool, bool],
    ) -> dict[str, Any]:
        """The ledger row of a skipped step: `norms` are the step's per-parameter gradient norms, `step`
        what `take_step()` returned, `facts` what `batch_facts()` returned."""
        index = self._first_nonfinite(norms, *step)
        moved, stepped = facts
        return {
            "scale_before": finite_or_none(scale_before),
            "scale_after": finite_or_none(scale_after),
            "nonfinite": nonfinite_kind(any(math.isinf(n) for n in norms), any(math.isnan(n) for n in norms)),
            "param": self._names[index] if 0 <= index < len(self._names) else None,
            "param_index": index if index >= 0 else None,
            "scheduler_stepped": bool(moved),
            "optimizer_step_called": bool(stepped),
        }

    def _first_nonfinite(self, norms: list[float], params: list[Any], order: list[int]) -> int:
        """The index (in the trainer's parameter list) of the first parameter, in backward order, whose
        gradient norm is not finite; -1 if none is."""
        arrival = {i: rank for rank, i in enumerate(dict.fromkeys(order))}
        bad = [k for k, n in enumerate(norms) if not math.isfinite(n)]
        if not bad:
            return -1
        index = [self._index_of.get(id(p), -1) for p in params]
        first = min(bad, key=lambda k: (arrival.get(index[k], len(arrival)), k))
        return index[first]
