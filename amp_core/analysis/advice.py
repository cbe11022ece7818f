"""Advice that reads a run: what its loss scale and gradients say, with the evidence and what to try."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from amp_core.analysis.gradients import scale_at, shares
from amp_core.record import Run, load_histograms
from amp_core.record.skips import main_culprit, scheduler_steps_on_skipped

SKIPPED_SHARE_LIMIT = 0.02
CULPRIT_MIN_SKIPS = 3  # one layer "causes most skips" only when it named over half of at least this many
UNDERFLOW_SHARE_LIMIT = 0.01
# The Train page's initial scale, 2^24: higher than this model needs on purpose, so that a short run shows backoffs.
DEMO_INIT_SCALE_LOG2 = 24
TORCH_INIT_SCALE_LOG2 = 16


@dataclass(frozen=True)
class Advice:
    level: str  # "ok", "info" or "warning"
    finding: str
    evidence: str
    suggestion: str


def _bf16_available(run: Run) -> bool:
    hw = run.config.get("hardware") or {}
    if not hw.get("cuda"):
        return True  # bf16 autocast runs on any CPU
    return bool(hw.get("bf16_supported"))


def advise(run: Run) -> list[Advice]:
    """What the run's loss, loss scale, skipped steps and gradient histograms say, worst first."""
    m = run.metrics
    if len(m) == 0:
        return [
            Advice("info", "No steps recorded yet", "metrics.jsonl is empty", "Wait for the run, or check its status.")
        ]
    bf16 = "bf16-mixed needs no loss scaling and has fp32's range" + (
        "" if _bf16_available(run) else " (not supported on this GPU)"
    )
    out = _loss_advice(run, bf16)
    if np.isnan(m.loss_scale).all():
        return out + [
            Advice(
                "info",
                "No GradScaler in this run",
                f"precision {run.precision}",
                "Loss scaling only matters for fp16 (16-mixed); bf16 and fp32 keep small gradients without it.",
            )
        ]
    injected = set(run.config.get("inject_overflow") or ())
    natural = (m.skipped > 0) & ~np.isin(m.step, list(injected))
    lead = int(np.argmin(natural)) if not natural.all() else len(natural)  # natural skips before the first clean step
    out += _initial_scale_advice(run, lead)
    out += _skip_rate_advice(run, natural, lead, bf16)
    out += _low_scale_advice(run, bf16)
    out += _underflow_advice(run, bf16)
    out += _skip_culprit_advice(run) + _scheduler_on_skipped_advice(run)
    if not any(a.level == "warning" for a in out):
        out.append(
            Advice(
                "ok",
                "The scaler looks healthy",
                f"{int(natural.sum())} natural overflow(s) in {len(m)} steps; final scale {m.loss_scale[-1]:.3g}",
                "Nothing to change."
                if not injected
                else f"Injected overflows at steps {sorted(injected)} were skipped as expected.",
            )
        )
    return out


def _loss_advice(run: Run, bf16: str) -> list[Advice]:
    """A loss that went NaN or inf."""
    m = run.metrics
    finite_loss = np.isfinite(m.loss)
    if finite_loss.all():
        return []
    first = int(m.step[np.argmax(~finite_loss)])
    return [
        Advice(
            "warning",
            "The loss is not finite",
            f"first NaN/inf loss at step {first}; {int((~finite_loss).sum())} such steps",
            "Lower the learning rate; check the data; " + bf16 + ".",
        )
    ]


def _initial_scale_advice(run: Run, lead: int) -> list[Advice]:
    """The first `lead` steps all overflowed: the scale started higher than the model needs."""
    if lead < 3:
        return []
    m, scale = run.metrics, run.metrics.loss_scale
    init = float(run.config.get("init_scale") or scale[0])
    better = init * float(run.config.get("backoff_factor", 0.5)) ** lead
    demo = init == 2.0**DEMO_INIT_SCALE_LOG2
    finding = (
        f"The first {lead} steps were skipped while the scale backed off from the demo's 2^{DEMO_INIT_SCALE_LOG2}"
        if demo
        else f"The initial scale was too high: the first {lead} steps were skipped"
    )
    why = (
        f"2^{DEMO_INIT_SCALE_LOG2} is the Train page's default, chosen above what this model needs so that backoffs show "
        f"in a short run (torch's default is 2^{TORCH_INIT_SCALE_LOG2}). Outside a demo, s"
        if demo
        else "S"
    )
    first_clean = (
        f"the first clean step ran at {scale[lead]:.3g}" if lead < len(m) else f"no step of {len(m)} was clean"
    )
    return [
        Advice(
            "info",
            finding,
            f"init scale {init:.3g} = 2^{math.log2(init):.0f}; " + first_clean,
            f"{why}tart near {better:.3g} (2^{math.log2(better):.0f}) to save {lead} batches; GradScaler finds it anyway, "
            "so this matters for short runs.",
        )
    ]


def _skip_rate_advice(run: Run, natural: np.ndarray, lead: int, bf16: str) -> list[Advice]:
    """Too many natural overflows once the scale has settled."""
    later = natural[lead:]
    if len(later) < 20 or later.mean() <= SKIPPED_SHARE_LIMIT:
        return []
    interval = int(run.config.get("growth_interval", 2000))
    return [
        Advice(
            "warning",
            f"Many skipped steps: {later.mean():.1%} after the start",
            f"{int(later.sum())} of {len(later)} steps overflowed after step {lead}; growth interval {interval}",
            f"Each skipped step wastes a batch. Raise the growth interval (now {interval}) so the scale grows less "
            f"eagerly, or use {bf16.split(' needs')[0]} ({bf16}).",
        )
    ]


def _low_scale_advice(run: Run, bf16: str) -> list[Advice]:
    """A scale below 1: the gradients overflow fp16 unscaled."""
    low = np.nanmin(run.metrics.loss_scale)
    if low >= 1:
        return []
    return [
        Advice(
            "warning",
            "The loss scale fell below 1",
            f"lowest scale {low:.3g}: gradients overflowed fp16 even without scaling",
            "The model is probably diverging: lower the learning rate or clip gradients; " + bf16 + ".",
        )
    ]


def _underflow_advice(run: Run, bf16: str) -> list[Advice]:
    """What the last gradient histogram says about underflow, at the scale the run had then."""
    hists = load_histograms(run.path)
    if not hists:
        return []
    h = hists[-1]
    at = scale_at(run.metrics.step, run.metrics.loss_scale, h["step"])
    sh = shares(h, at)
    at_text = f"{at:.3g}" if at is not None else "none"
    if sh["underflow_scaled"] > UNDERFLOW_SHARE_LIMIT:
        return [
            Advice(
                "warning",
                "Gradients underflow fp16 even when scaled",
                f"at step {h['step']}: {sh['underflow_scaled']:.1%} of gradient values stay below 2^-24 at scale "
                f"{at_text} ({sh['underflow_unscaled']:.1%} without scaling)",
                "Raise the initial scale or the growth factor; " + bf16 + ".",
            )
        ]
    if sh["underflow_unscaled"] > UNDERFLOW_SHARE_LIMIT:
        return [
            Advice(
                "ok",
                "The loss scale is doing its job",
                f"at step {h['step']}: {sh['underflow_unscaled']:.1%} of gradient values would underflow fp16 unscaled, "
                f"{sh['underflow_scaled']:.2%} at scale {at_text}",
                "Nothing to change.",
            )
        ]
    return []


def _skip_culprit_advice(run: Run) -> list[Advice]:
    """When one parameter was the first to hold inf/NaN in most natural skipped steps (the skip ledger)."""
    found = main_culprit(run)
    if found is None or found[2] < CULPRIT_MIN_SKIPS or found[1] * 2 <= found[2]:
        return []
    param, count, total = found
    layer = param.rsplit(".", 1)[0]
    return [
        Advice(
            "warning",
            f"One layer causes most skipped steps: {layer}",
            f"{param} was the first parameter to hold inf/NaN in {count} of {total} skipped steps (backward order)",
            f"Look at what feeds {layer}: large activations or logits overflow fp16 there. Normalise its input, "
            "scale its initialisation down, compute it in float32 (torch.autocast(enabled=False) around it), "
            "or use bf16-mixed.",
        )
    ]


def _scheduler_on_skipped_advice(run: Run) -> list[Advice]:
    """An LR scheduler that stepped on skipped steps runs its schedule ahead of the weights."""
    steps = scheduler_steps_on_skipped(run)
    if not steps:
        return []
    shown = ", ".join(map(str, steps[:8])) + (" …" if len(steps) > 8 else "")
    return [
        Advice(
            "warning",
            f"The LR scheduler stepped on {len(steps)} skipped step(s)",
            f"at steps {shown} the GradScaler skipped optimizer.step(), yet the scheduler's step count moved",
            "The schedule runs ahead of the optimizer by that many steps (warm-up ends early, decay comes early). "
            "Override LightningModule.lr_scheduler_step to call scheduler.step() only when the optimizer stepped, "
            "e.g. when the GradScaler's scale did not drop, or the optimizer's state 'step' moved.",
        )
    ]


def scaler_expectation(config: dict) -> str | None:
    """What the GradScaler settings of a run let its loss-scale line do, in a sentence or two; None without a scaler.

    Growth needs `growth_interval` clean steps in a row, so an interval at or above the run's length leaves
    the scale unable to grow; whether it backs off depends on the gradients overflowing fp16 at that scale."""
    if config.get("precision") not in ("16-mixed", "16"):
        return None
    steps = int(config.get("max_steps") or 0)
    interval = int(config.get("growth_interval") or 2000)
    factor = float(config.get("growth_factor") or 2.0)
    init = float(config.get("init_scale") or 2.0**TORCH_INIT_SCALE_LOG2)
    init_text = f"2^{math.log2(init):.0f}" if math.log2(init).is_integer() else f"{init:.3g}"
    if interval >= steps:
        grow = (
            f"With growth interval {interval}, the scale grows only after {interval} clean steps in a row, so within "
            f"{steps} steps it cannot grow"
        )
    else:
        grow = f"The scale can grow ×{factor:g} after every {interval} clean steps in a row: at most {steps // interval} time{'s' if steps // interval > 1 else ''} in {steps} steps"
    if init > 2.0**TORCH_INIT_SCALE_LOG2:
        back = (
            f"starting at {init_text}, above torch's 2^{TORCH_INIT_SCALE_LOG2}, the first steps are likely to overflow and "
            "back off until the scaled gradients fit fp16"
        )
    else:
        back = (
            f"at {init_text} this small model's scaled gradients may never overflow fp16, so there may be no backoff at all"
            + (" and the line stays flat" if interval >= steps else "")
        )
    injected = config.get("inject_overflow") or ()
    backoff = float(config.get("backoff_factor") or 0.5)
    extra = (
        f" Each injected overflow (steps {', '.join(map(str, injected))}) multiplies it by {backoff:g}."
        if injected
        else ""
    )
    return f"{grow}; {back}.{extra}"
