"""How much does watching the loss scale cost? A benchmark (not a test: nothing here asserts a time).

    python bench/monitor_overhead.py            # CPU, and CUDA too when there is one
    python bench/monitor_overhead.py --quick    # CI-sized: under 3 minutes on a small CPU box
    python bench/monitor_overhead.py --threads 1 --precisions 32-true

Two arms are measured against bare Lightning at the same precision, in one process:

    monitor   LossScaleMonitor + RunRecordLogger appending metrics.jsonl   (what amp_core.train adds)
    wandb     AmpWandbCallback logging to an active offline W&B run, every step (the CPU cadence of
              amp_core.train, and the worst case on CUDA where it logs every 20th step)

The bare runs have a logger too (a no-op Lightning Logger), so only the arm's own work differs.
A step's time is the time between consecutive `on_train_batch_start` calls: the whole step, the
loop, hooks and loggers included. Warm-up steps are dropped; numbers are medians.

Three estimates of the same ratio, because a small shared machine is noisy:

    trials    bare and armed Trainer runs take turns (rotating order, several repeats); median of
              all post-warm-up step times of each side. What a user would time, and the noisiest.
    paired    one Trainer per repeat in which the arm is switched on for every other step (the same
              Trainer, data, logger and warm caches on both sides); median of armed steps over
              median of bare steps. Bursts of load from other processes hit both sides alike.
    hooks     1 + (median time per step spent inside the arm's own hooks, logger writes included)
              / bare step time: the direct cost, with nothing else in it.

On CUDA every timed step ends with torch.cuda.synchronize() (else per-step times are launch times);
that serialises the monitor's few small kernels with the step, so the CUDA ratios are upper bounds.
fp16 on CPU runs through the explicit MixedPrecision('16-mixed', 'cpu') plugin with a CPU GradScaler,
as amp_core.train does, so the scaler's work is real (and slow: a CPU emulates most fp16 math).
The goal is a ratio of at most 1.03.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")  # never online from a benchmark
os.environ.setdefault("WANDB_SILENT", "true")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from pytorch_lightning.callbacks import Callback  # noqa: E402
from pytorch_lightning.loggers.logger import Logger  # noqa: E402
from pytorch_lightning.plugins import MixedPrecision  # noqa: E402

from amp_core.record import RunWriter  # noqa: E402
from amp_core.training.callbacks import AmpWandbCallback, LossScaleMonitor  # noqa: E402
from amp_core.training.model import DemoMLP, synthetic_loader  # noqa: E402
from amp_core.training.record_logger import RunRecordLogger  # noqa: E402

GOAL = 1.03
PER_STEP_HOOKS = {"monitor": ("on_before_optimizer_step", "on_train_batch_end"), "wandb": ("on_train_batch_end",)}
ONCE_HOOKS = {
    "monitor": ("on_train_start", "on_train_end"),
    "wandb": ("on_train_start", "on_train_epoch_end", "on_train_end"),
}


class NoOpLogger(Logger):
    """A real Lightning logger that drops everything: the bare side has a logger too."""

    @property
    def name(self) -> str:
        return "noop"

    @property
    def version(self) -> str:
        return "0"

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        pass


class Armed(Callback):
    """Runs the arm's callback, timing each of its hooks; with `alternate`, only on every other step."""

    def __init__(self, arm: str, inner: Callback, alternate: bool):
        self.inner, self.alternate = inner, alternate
        self.per_step_hooks, self.once_hooks = PER_STEP_HOOKS[arm], ONCE_HOOKS[arm]
        self.calls: dict[str, list[float]] = {h: [] for h in self.per_step_hooks}
        self.once = 0.0
        self.active = True
        self._batches = 0

    def _run(self, name: str, *args):
        t0 = time.perf_counter()
        getattr(self.inner, name)(*args)
        dt = time.perf_counter() - t0
        if name in self.calls:
            self.calls[name].append(dt)
        else:
            self.once += dt

    def setup(self, trainer, pl_module, stage):
        self.inner.setup(trainer, pl_module, stage)

    def on_train_start(self, trainer, pl_module):
        self._run("on_train_start", trainer, pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.active = not self.alternate or self._batches % 2 == 1
        self._batches += 1

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if self.active and "on_before_optimizer_step" in self.per_step_hooks:
            self._run("on_before_optimizer_step", trainer, pl_module, optimizer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.active:
            self._run("on_train_batch_end", trainer, pl_module, outputs, batch, batch_idx)

    def on_train_epoch_end(self, trainer, pl_module):
        if "on_train_epoch_end" in self.once_hooks:
            self._run("on_train_epoch_end", trainer, pl_module)

    def on_train_end(self, trainer, pl_module):
        self._run("on_train_end", trainer, pl_module)

    def hook_seconds_per_step(self, steps: int) -> float:
        """Median time per call of each per-step hook, plus the one-off hooks spread over the steps."""
        return sum(statistics.median(c) for c in self.calls.values() if c) + self.once / steps


class StepTimer(Callback):
    """Marks each step's start; step i lasts from its start to step i+1's. Remembers if the arm was on."""

    def __init__(self, armed: Armed | None, cuda: bool):
        self.armed, self.cuda = armed, cuda
        self.marks: list[tuple[float, bool]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.cuda:
            torch.cuda.synchronize()
        self.marks.append((time.perf_counter(), bool(self.armed and self.armed.active)))

    def on_train_end(self, trainer, pl_module):
        if self.cuda:
            torch.cuda.synchronize()
        self.marks.append((time.perf_counter(), False))

    def steps(self, warmup: int) -> list[tuple[float, bool]]:
        """(seconds, armed) of each step after the warm-up."""
        m = self.marks
        return [(m[i + 1][0] - m[i][0], m[i][1]) for i in range(warmup, len(m) - 1)]


def precision_kwargs(precision: str, device: str) -> dict:
    if precision == "16-mixed":
        return {
            "plugins": [MixedPrecision("16-mixed", device, scaler=torch.amp.GradScaler(device, init_scale=2.0**16))]
        }
    return {"precision": precision}


def trial(
    arm: str | None, precision: str, accelerator: str, steps: int, args, tmp: Path, alternate: bool = False
) -> tuple[StepTimer, Armed | None]:
    """One Trainer run: bare (arm None), armed every step, or armed every other step (alternate)."""
    cuda = accelerator == "gpu"
    loggers: list[Logger] = [NoOpLogger()]
    armed = None
    if arm == "monitor":
        writer = RunWriter.create(tmp, {"precision": precision, "bench": True}, label=precision)
        loggers = [RunRecordLogger(writer)]
        armed = Armed(arm, LossScaleMonitor(), alternate)
    elif arm == "wandb":
        armed = Armed(
            arm, AmpWandbCallback(enabled=precision != "32-true", precision=precision, log_every_n_steps=1), alternate
        )
    timer = StepTimer(armed, cuda)
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=1,
        max_steps=steps,
        max_epochs=-1,
        logger=loggers,
        callbacks=[c for c in (armed, timer) if c is not None],
        log_every_n_steps=20 if cuda else 1,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        **precision_kwargs(precision, "cuda" if cuda else "cpu"),
    )
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        trainer.fit(DemoMLP(hidden=args.hidden, depth=args.depth), synthetic_loader(args.batch_size, batches=64))
    if arm == "monitor":  # a sanity check that the arm did its work, not a timing
        with open(writer.path / "metrics.jsonl") as f:
            recorded = sum(1 for _ in f)
        expected = steps // 2 if alternate else steps  # alternate: armed on the odd-numbered steps
        assert recorded == expected, f"the monitor recorded {recorded} of {expected} steps"
    return timer, armed


def bench(
    precision: str, accelerator: str, steps: int, warmup: int, repeats: int, args, tmp: Path, arms: tuple[str, ...]
) -> dict:
    trial(None, precision, accelerator, warmup + 5, args, tmp)  # process-level warm-up
    sides = ("bare", *arms)
    trials: dict[str, list[float]] = {s: [] for s in sides}
    paired: dict[str, dict[bool, list[float]]] = {a: {True: [], False: []} for a in arms}
    hooks: dict[str, list[float]] = {a: [] for a in arms}
    for r in range(repeats):
        order = sides[r % len(sides) :] + sides[: r % len(sides)]  # rotate who goes first
        for side in order:
            timer, armed = trial(None if side == "bare" else side, precision, accelerator, steps, args, tmp)
            trials[side] += [s for s, _ in timer.steps(warmup)]
            if armed:
                hooks[side].append(armed.hook_seconds_per_step(steps))
        for arm in arms:
            timer, _ = trial(arm, precision, accelerator, steps, args, tmp, alternate=True)
            for seconds, on in timer.steps(warmup):
                paired[arm][on].append(seconds)
    bare = statistics.median(trials["bare"])
    out = {}
    for arm in arms:
        with_arm = statistics.median(trials[arm])
        p_on, p_off = statistics.median(paired[arm][True]), statistics.median(paired[arm][False])
        hook = statistics.median(hooks[arm])
        out[arm] = {
            "bare_ms": bare * 1e3,
            "with_ms": with_arm * 1e3,
            "trials": with_arm / bare,
            "paired_off_ms": p_off * 1e3,
            "paired_on_ms": p_on * 1e3,
            "paired": p_on / p_off,
            "hooks_ms": hook * 1e3,
            "hooks": 1 + hook / bare,
        }
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer steps and repeats (CI-sized)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--steps", type=int, default=None, help="steps per trial (fp16 on CPU gets a third: it is emulated)")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--hidden", type=int, default=256, help="demo MLP width (amp_core.train's default)")
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own choice)")
    p.add_argument("--precisions", default="16-mixed,bf16-mixed,32-true")
    p.add_argument("--no-cuda", action="store_true")
    p.add_argument("--no-wandb", action="store_true", help="leave out the AmpWandbCallback arm")
    args = p.parse_args()
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    repeats = args.repeats or (3 if args.quick else 7)
    steps = args.steps or (60 if args.quick else 200)
    if args.threads:
        torch.set_num_threads(args.threads)

    arms: tuple[str, ...] = ("monitor",)
    wandb_run = None
    if not args.no_wandb:
        try:
            import wandb

            wandb_run = wandb.init(
                mode="offline",
                dir=tempfile.mkdtemp(prefix="amp-bench-wandb-"),
                project="amp-explorer-bench",
                name="monitor-overhead",
            )
            arms = ("monitor", "wandb")
        except Exception as e:  # no W&B: bench the monitor alone
            print(f"(W&B arm left out: {type(e).__name__}: {e})", file=sys.stderr)

    devices = ["cpu"] + (["gpu"] if torch.cuda.is_available() and not args.no_cuda else [])
    rows = []
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="amp-bench-runs-") as tmp:
            for accelerator in devices:
                for precision in args.precisions.split(","):
                    n = max(args.warmup + 15, steps // 3) if precision == "16-mixed" and accelerator == "cpu" else steps
                    for arm, r in bench(precision, accelerator, n, args.warmup, repeats, args, Path(tmp), arms).items():
                        rows.append((accelerator, precision, arm, r))
                    print(
                        f"  done {accelerator} {precision}: {n} steps x {repeats} repeats", file=sys.stderr, flush=True
                    )
    finally:
        if wandb_run is not None:
            wandb_run.finish()

    print()
    print(
        f"torch {torch.__version__}, Lightning {pl.__version__}, {torch.get_num_threads()} threads, "
        f"DemoMLP hidden={args.hidden} depth={args.depth} batch={args.batch_size}, {repeats} repeats, warm-up {args.warmup} steps"
    )
    header = (
        f"{'device':<6} {'precision':<11} {'arm':<8} {'bare ms/step':>12} {'armed ms/step':>13} {'ratio':>7}"
        f" | {'paired ms':>15} {'ratio':>7} | {'hooks ms':>8} {'ratio':>7} | goal <= {GOAL}"
    )
    print(header)
    print("-" * len(header))
    for accelerator, precision, arm, r in rows:
        verdict = "ok" if r["paired"] <= GOAL and r["hooks"] <= GOAL else "over"
        print(
            f"{accelerator:<6} {precision:<11} {arm:<8} {r['bare_ms']:>12.3f} {r['with_ms']:>13.3f} {r['trials']:>7.3f}"
            f" | {r['paired_off_ms']:>7.3f}>{r['paired_on_ms']:<7.3f} {r['paired']:>7.3f} | {r['hooks_ms']:>8.4f} {r['hooks']:>7.3f} | {verdict}"
        )
    print(
        "ratio columns: trials (separate runs, interleaved), paired (arm on every other step of one run), hooks (time inside the arm)"
    )
    print(f"({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
