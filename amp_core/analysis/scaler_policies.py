"""Replay a recorded fp16 run under other loss-scale policies: an estimate, and how good it is.

Whether a step overflows under scale S is decided from what the run recorded: the step's largest
unscaled parameter gradient `grad_max`, times S, against fp16's limit. The real overflow can also
happen in fp16 activation gradients during backward, which were not recorded, and steps that really
overflowed recorded no finite `grad_max`: see `OverflowModel` for how both are estimated.

`replay_own_policy` checks the estimate: it replays the run's own GradScaler settings and reports
on how many steps the replayed scale equals the recorded one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from amp_core.analysis.gradients import FP16_MAX


def step_through(init_scale: float, overflow_at, next_scale) -> tuple[np.ndarray, np.ndarray]:
    """The scale each step runs at and whether it overflows there, one step after another:
    `overflow_at(step, scale)` says whether the step overflows, `next_scale(step, scale, over)` is the
    policy's rule for the scale of the next step."""
    scale, scales, skipped = float(init_scale), [], []
    for step in range(len(overflow_at.grad_max)):
        over = overflow_at(step, scale)
        scales.append(scale)
        skipped.append(over)
        scale = next_scale(step, scale, over)
    return np.array(scales), np.array(skipped)


@dataclass(frozen=True)
class TorchGradScalerPolicy:
    """torch.amp.GradScaler's rule: halve on overflow, grow after `growth_interval` clean steps."""

    init_scale: float = 2.0**16
    growth_factor: float = 2.0
    backoff_factor: float = 0.5
    growth_interval: int = 2000

    def run(self, overflow_at) -> tuple[np.ndarray, np.ndarray]:
        tracker = 0  # clean steps since the last growth or backoff

        def next_scale(step: int, scale: float, over: bool) -> float:
            nonlocal tracker
            if over:
                tracker = 0
                return scale * self.backoff_factor
            tracker += 1
            if tracker == self.growth_interval:
                tracker = 0
                return scale * self.growth_factor
            return scale

        return step_through(self.init_scale, overflow_at, next_scale)


@dataclass(frozen=True)
class HysteresisPolicy:
    """DeepSpeed / Megatron's dynamic loss scaler: tolerate `hysteresis` overflows before backing off,
    never go below `min_scale`, grow after `scale_window` steps without overflow."""

    init_scale: float = 2.0**16
    scale_factor: float = 2.0
    scale_window: int = 1000
    hysteresis: int = 2
    min_scale: float = 1.0

    def run(self, overflow_at) -> tuple[np.ndarray, np.ndarray]:
        left, last_overflow = self.hysteresis, -1  # overflows still tolerated; the last step that overflowed

        def next_scale(step: int, scale: float, over: bool) -> float:
            nonlocal left, last_overflow
            if over:
                last_overflow = step
                if left <= 1:
                    return max(scale / self.scale_factor, self.min_scale)
                left -= 1
                return scale
            if (step - last_overflow) % self.scale_window == 0:
                left = self.hysteresis
                return scale * self.scale_factor
            return scale

        return step_through(self.init_scale, overflow_at, next_scale)


class OverflowModel:
    """Decides 'would step t overflow at scale S' from a run's recorded gradients.

    A step with a recorded (finite) unscaled gradient maximum g overflows when g * S >= threshold.
    A step that overflowed in the run recorded no g; it overflows at any scale >= the one it
    overflowed at (gradients scale linearly), and below that it borrows the nearest recorded g.
    Injected overflows (`forced`) overflow at any scale.

    The threshold starts at fp16's largest value and is raised, if need be, above every clean
    step's g * S in the first `calibrate_share` of the run, so that the rest of the run is an honest
    check of the estimate (see `replay_own_policy`).
    """

    def __init__(self, grad_max, scales, skipped, forced: tuple[int, ...] = (), calibrate_share: float = 0.5):
        g = np.asarray(grad_max, dtype=np.float64).copy()
        n = len(g)
        self.forced = np.zeros(n, dtype=bool)
        self.forced[[i for i in forced if 0 <= i < n]] = True
        self.recorded_scale = np.asarray(scales, dtype=np.float64)
        self.overflowed = np.asarray(skipped, dtype=bool) & ~self.forced
        known = np.isfinite(g) & (g > 0) & ~self.overflowed & ~self.forced
        if not known.any():
            raise ValueError("the run recorded no finite gradient maximum: nothing to replay")
        # Steps without a recorded value take the nearest earlier one (the first one for a leading run).
        idx = np.where(known, np.arange(n), -1)
        np.maximum.accumulate(idx, out=idx)
        idx[idx < 0] = int(np.argmax(known))
        self.grad_max = g[idx]
        self.estimated = ~known
        head = known & (np.arange(n) < max(1, int(n * calibrate_share)))
        clean_products = g[head] * self.recorded_scale[head]
        self.threshold = float(
            max(FP16_MAX, np.nextafter(clean_products.max(), np.inf) if clean_products.size else 0.0)
        )

    def __call__(self, step: int, scale: float) -> bool:
        if self.forced[step]:
            return True
        if self.overflowed[step] and scale >= self.recorded_scale[step]:
            return True
        return bool(self.grad_max[step] * scale >= self.threshold)


@dataclass
class Replay:
    policy: object
    scales: np.ndarray
    skipped: np.ndarray

    @property
    def skipped_steps(self) -> int:
        return int(self.skipped.sum())


def replay(policy, model: OverflowModel) -> Replay:
    scales, skipped = policy.run(model)
    return Replay(policy, scales, skipped)


def own_policy(config: dict) -> TorchGradScalerPolicy:
    return TorchGradScalerPolicy(
        init_scale=float(config.get("init_scale", 2.0**16)),
        growth_factor=float(config.get("growth_factor", 2.0)),
        backoff_factor=float(config.get("backoff_factor", 0.5)),
        growth_interval=int(config.get("growth_interval", 2000)),
    )


def replay_own_policy(config: dict, model: OverflowModel, recorded_scales: np.ndarray) -> tuple[Replay, float]:
    """Replay the run's own settings; returns the replay and the share of steps whose scale matches."""
    r = replay(own_policy(config), model)
    agree = float(np.mean(r.scales == np.asarray(recorded_scales, dtype=np.float64)))
    return r, agree


def overflow_model_for(run) -> OverflowModel:
    """The calibrated overflow model of a recorded run (amp_core.record.Run); ValueError if it has no scaler or gradients."""
    m = run.metrics
    if len(m) == 0 or np.isnan(m.loss_scale).all():
        raise ValueError("this run has no loss scale (no GradScaler): there is nothing to replay")
    return OverflowModel(m.grad_max, m.loss_scale, m.skipped > 0, forced=tuple(run.config.get("inject_overflow") or ()))
