"""What watching the loss scale costs, per training step (a benchmark: nothing here asserts a time).

    python bench/monitor_overhead.py            # the full set (a few minutes more than --quick)
    python bench/monitor_overhead.py --quick    # what `bench/run.py --quick` runs: about 3 minutes on 2 cores

Each figure is a ratio of per-step times of two Trainers, A and B, that live in one process at once,
each in its own thread, and take turns (A B B A ...): one turn is ~20 ms (at least 3 steps) of one
Trainer while the other waits, and a turn's value is the median time of its steps but the first (a
step: from one `on_train_batch_start` to the next, so the loop, every hook and the loggers are
inside it; the first follows the other side's turn, with cold caches). The ratio
is the median of B/A over the pairs (`bench.report.interleaved_ratio`), after warm-up turns. Both
sides have a logger (the bare side a `MemoryLogger` that drops everything), so only B's own work
differs. Interleaving in one process puts a burst of load from other processes on both sides alike.

    monitor    LossScaleMonitor + RunRecordLogger (what amp_core.train adds) vs bare Lightning, at
               32-true, bf16-mixed and 16-mixed (on CPU through the explicit fp16 plugin,
               amp_core.training.plugins.fp16_mixed), on the MLP and the GPT workload, default sizes
    ledger     the monitor vs the monitor with its skip ledger replaced by one that does nothing
    control    bare vs bare: the method's own noise on this machine at the time (ideally 1.000)
    wandb      AmpWandbCallback alone, logging the loss scale every step to an offline W&B run, vs bare
    W&B logger the offline WandbLogger amp_core.train adds, next to the monitor, vs the monitor alone
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from functools import partial
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "offline")  # never online from a benchmark
os.environ.setdefault("WANDB_SILENT", "true")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from pytorch_lightning.callbacks import Callback  # noqa: E402

from amp_core.record import METRICS_FILE, RunWriter  # noqa: E402
from amp_core.training.callbacks import AmpWandbCallback, LossScaleMonitor  # noqa: E402
from amp_core.training.config import RunConfig  # noqa: E402
from amp_core.training.plugins import build_precision  # noqa: E402
from amp_core.training.record_logger import RunRecordLogger  # noqa: E402
from amp_core.training.skip_probe import SkipLedgerProbe  # noqa: E402
from amp_core.training.wandb_logger import make_wandb_logger  # noqa: E402
from amp_core.training.workloads import WORKLOADS  # noqa: E402
from bench.report import Figure, figure, interleaved_ratio, not_measured, print_figures  # noqa: E402
from tests.support.loggers import MemoryLogger  # noqa: E402

GOAL = 1.03
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
WORKLOAD_NAMES = ("mlp", "gpt")
STEPS_PER_TURN = 5  # during warm-up; then as many as fill TURN_SECONDS
TURN_SECONDS = 0.02
WARMUP_TURNS = 3
MIN_PAIRS = 8


class Turns(Callback):
    """Lets a Trainer running in its own thread take turns of `steps` steps; `Side.turn()` runs one.
    Put it first among the callbacks: its mark comes before any other callback's work of the step."""

    def __init__(self, steps: int):
        self.steps = steps
        self.marks: list[tuple[float, float]] = []  # (wall, process CPU) seconds at each step's start
        self._left = 0  # steps left in this turn: none, so it waits at its first step
        self._go, self._paused = threading.Event(), threading.Event()
        self._finishing = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self._finishing:
            return
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()  # a step's time is its GPU work, not its kernel launches (both sides alike)
        if self._left == 0:
            if self.marks:
                self.marks.append((time.perf_counter(), time.process_time()))  # the end of the turn's last step
            self._paused.set()
            self._go.wait()
            self._go.clear()
            if self._finishing:
                trainer.should_stop = True
                return
            self.marks, self._left = [], self.steps
        self.marks.append((time.perf_counter(), time.process_time()))
        self._left -= 1


class Side:
    """One Trainer fitting in its own thread, a turn at a time."""

    def __init__(self, trainer: pl.Trainer, module, data, turns: Turns):
        self.trainer, self.turns, self.error = trainer, turns, None
        self.cpu: list[float] = []  # each turn's median CPU seconds per step (this process; the other side waits)
        self.thread = threading.Thread(target=self._fit, args=(module, data), daemon=True)
        self.thread.start()
        turns._paused.wait()  # at its first step

    def _fit(self, module, data) -> None:
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore")
                self.trainer.fit(module, data)
        except BaseException as e:  # re-raised by turn()
            self.error = e
        finally:
            self.turns._paused.set()

    def turn(self) -> float:
        self.turns._paused.clear()
        self.turns._go.set()
        self.turns._paused.wait()
        if self.error is not None:
            raise RuntimeError(f"a benchmark Trainer failed: {type(self.error).__name__}: {self.error}") from self.error
        # the turn's first step follows the other Trainer's turn (cold caches) and is left out: every step
        # counted follows one of its own, whichever side went first in the pair
        m = self.turns.marks[1:]
        self.cpu.append(statistics.median(b[1] - a[1] for a, b in zip(m, m[1:])))
        return statistics.median(b[0] - a[0] for a, b in zip(m, m[1:]))

    def finish(self) -> None:
        self.turns._finishing = True
        self.turns._go.set()
        self.thread.join()
        if self.error is not None:
            raise RuntimeError(f"a benchmark Trainer failed: {type(self.error).__name__}: {self.error}") from self.error


class NoLedger(SkipLedgerProbe):
    """The skip ledger with its per-step work taken out (the monitor without it, for the ledger's cost)."""

    def attach(self, trainer, pl_module) -> None:
        pass

    def batch_start(self, trainer) -> None:
        pass

    def batch_facts(self, trainer) -> tuple[bool, bool]:
        return False, False

    def take_step(self, params):
        return params, []


def config_for(workload: str, precision: str, accelerator: str = "cpu") -> RunConfig:
    """The workload at its default size, as amp_core.train would run it."""
    defaults = dict(WORKLOADS[workload].defaults)
    return RunConfig(
        workload=workload, precision=precision, accelerator=accelerator, max_steps=100_000, wandb="disabled", **defaults
    ).validate()


def make_side(
    config: RunConfig, tmp: Path, monitor: LossScaleMonitor | None, extra: list, loggers: list | None
) -> Side:
    """A Trainer of `config` with the monitor (and RunRecordLogger) or bare, plus `extra` callbacks."""
    pl.seed_everything(config.seed, verbose=False)
    built = WORKLOADS[config.workload].build(config)
    writer = None
    if loggers is None:
        loggers = [MemoryLogger(keep=False)]
        if monitor is not None:
            writer = RunWriter.create(tmp, {"precision": config.precision, "bench": True}, label=config.precision)
            loggers = [RunRecordLogger(writer)]
    turns = Turns(STEPS_PER_TURN)
    device = "cuda" if config.accelerator == "gpu" else "cpu"
    precision_kwargs, _ = build_precision(config, device)
    trainer = pl.Trainer(
        accelerator=config.accelerator,
        devices=1,
        max_steps=10**7,
        max_epochs=-1,
        logger=loggers,
        callbacks=[turns, *([monitor] if monitor else []), *extra],
        log_every_n_steps=1,  # amp_core.train's on CPU
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        **precision_kwargs,
    )
    side = Side(trainer, built.module, built.data, turns)
    side.writer = writer
    return side


def bare(config: RunConfig, tmp: Path) -> Side:
    return make_side(config, tmp, None, [], None)


def monitored(config: RunConfig, tmp: Path) -> Side:
    """The monitor as amp_core.train adds it."""
    return make_side(config, tmp, LossScaleMonitor(histogram_every=config.histogram_every or None), [], None)


@dataclasses.dataclass
class Measured:
    ratio: float  # median of B/A over the pairs
    a_step: float  # median step seconds of A's turns
    b_step: float
    pairs: int
    steps_per_turn: int
    cpu_ratio: float  # the same pairs, in process CPU time: what other processes' load leaves out


def ab_ratio(make_a: Callable[[], Side], make_b: Callable[[], Side], seconds: float) -> Measured:
    """The median B/A per-step ratio over interleaved pairs of turns for about `seconds`. A turn lasts
    about TURN_SECONDS (at least 3 steps, its first one not counted): short turns put the same bursts of
    load on both sides."""
    a, b = make_a(), make_b()
    try:
        warm = [t for _ in range(WARMUP_TURNS) for t in (a.turn(), b.turn())]
        step = statistics.median(warm[-2:])
        steps = max(3, round(TURN_SECONDS / step))
        a.turns.steps = b.turns.steps = steps
        pairs = max(MIN_PAIRS, round(seconds / (2 * steps * step)))
        r = interleaved_ratio(a.turn, b.turn, pairs)
        cpu = statistics.median(y / x for x, y in zip(a.cpu[WARMUP_TURNS:], b.cpu[WARMUP_TURNS:]) if x > 0)
    finally:
        for side in (a, b):
            side.finish()
    for side in (a, b):  # a sanity check that the monitor did its work, not a timing
        if getattr(side, "writer", None) is not None:
            with open(side.writer.path / METRICS_FILE) as f:
                lines = sum(1 for _ in f)
            if lines != side.trainer.global_step:
                raise RuntimeError(f"the monitor recorded {lines} of {side.trainer.global_step} steps")
    return Measured(r.ratio, r.a_median, r.b_median, pairs, steps, cpu)


def _how(a: str, b: str, m: Measured) -> str:
    return (
        f"{b} vs {a}: median of {m.pairs} interleaved pairs of {m.steps_per_turn}-step turns, one process "
        f"({m.a_step * 1e3:.2f} vs {m.b_step * 1e3:.2f} ms/step, {torch.get_num_threads()} torch threads; "
        f"in process CPU time {m.cpu_ratio:.3f}; load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
    )


def monitor_figures(
    tmp: Path, seconds: float, workloads=WORKLOAD_NAMES, precisions=PRECISIONS, accelerator: str = "cpu"
) -> list[Figure]:
    out = []
    section = "cuda" if accelerator == "gpu" else "monitor"
    for workload in workloads:
        for precision in precisions:
            config = config_for(workload, precision, accelerator)

            m = ab_ratio(partial(bare, config, tmp), partial(monitored, config, tmp), seconds)
            how = _how("bare Lightning", "LossScaleMonitor + RunRecordLogger", m)
            name = f"monitor per step, {workload} {precision}" + (" (CUDA)" if accelerator == "gpu" else "")
            out.append(figure(section, name, m.ratio, "x", how, at_most=GOAL))
            print(f"  {out[-1].name}: {m.ratio:.3f}", file=sys.stderr, flush=True)
    return out


def control_figure(tmp: Path, seconds: float) -> Figure:
    """Bare Lightning against bare Lightning: what the method reads when B does nothing more than A
    (its noise on this machine, now). The other figures are as good as this is close to 1."""
    config = config_for("mlp", "32-true")
    m = ab_ratio(partial(bare, config, tmp), partial(bare, config, tmp), seconds)
    return figure("monitor", "control: bare vs bare, mlp 32-true", m.ratio, "x", _how("bare", "bare", m))


def ledger_figure(tmp: Path, seconds: float) -> Figure:
    config = config_for("mlp", "32-true")

    def without():
        monitor = LossScaleMonitor(histogram_every=config.histogram_every)
        monitor._ledger = NoLedger()
        return make_side(config, tmp, monitor, [], None)

    m = ab_ratio(without, partial(monitored, config, tmp), seconds)
    how = _how("the monitor without it", "the monitor with its skip ledger", m)
    return figure("monitor", "skip ledger per step, mlp 32-true", m.ratio, "x", how)


def wandb_callback_figure(tmp: Path, seconds: float) -> Figure:
    name = "AmpWandbCallback per step (loss scale to offline W&B every step), mlp 16-mixed"
    try:
        import wandb

        run = wandb.init(mode="offline", dir=str(tmp), project="amp-explorer-bench", name="monitor-overhead")
    except Exception as e:
        return not_measured("monitor", name, "x", f"W&B did not start: {type(e).__name__}: {e}")
    config = config_for("mlp", "16-mixed")
    try:

        def with_callback():
            callback = AmpWandbCallback(enabled=True, precision="16-mixed", log_every_n_steps=1)
            return make_side(config, tmp, None, [callback], None)

        m = ab_ratio(partial(bare, config, tmp), with_callback, seconds)
    finally:
        run.finish()
    return figure("monitor", name, m.ratio, "x", _how("bare Lightning", "AmpWandbCallback", m))


def wandb_logger_figure(tmp: Path, seconds: float) -> Figure:
    name = "offline WandbLogger next to the monitor per step, mlp 32-true"
    config = config_for("mlp", "32-true")
    wandb_config = dataclasses.replace(config, wandb="offline")
    made = []

    def with_wandb():
        writer = RunWriter.create(tmp, {"precision": config.precision, "bench": True}, label="wandb")
        wandb_logger = make_wandb_logger(wandb_config, writer)
        if wandb_logger is None:
            raise RuntimeError("W&B did not start (see the bench run's status warnings)")
        made.append(wandb_logger)
        side = make_side(
            config,
            tmp,
            LossScaleMonitor(histogram_every=config.histogram_every),
            [],
            [RunRecordLogger(writer), wandb_logger],
        )
        side.writer = writer
        return side

    try:
        m = ab_ratio(partial(monitored, config, tmp), with_wandb, seconds)
    except RuntimeError as e:
        return not_measured("monitor", name, "x", str(e))
    finally:
        for logger in made:
            logger.experiment.finish()
    how = _how("the monitor + RunRecordLogger", "the same + an offline WandbLogger", m)
    return figure("monitor", name, m.ratio, "x", how)


def figures(quick: bool, tmp: Path) -> list[Figure]:
    """Every figure of this benchmark (CPU). quick: fewer pairs of turns (about 3 minutes on 2 cores)."""
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    seconds = 8.0 if quick else 40.0  # of interleaved turns per figure, after warm-up
    tmp = Path(tmp)
    out: list[Figure] = []
    parts = (
        ("control: bare vs bare, mlp 32-true", lambda: [control_figure(tmp, seconds)]),
        ("monitor per step", lambda: monitor_figures(tmp, seconds)),
        ("skip ledger per step, mlp 32-true", lambda: [ledger_figure(tmp, seconds)]),
        ("AmpWandbCallback per step", lambda: [wandb_callback_figure(tmp, seconds)]),
        ("offline WandbLogger next to the monitor per step", lambda: [wandb_logger_figure(tmp, seconds)]),
    )
    for name, part in parts:
        try:
            out += part()
        except Exception as e:  # one part failing still reports the others
            out.append(not_measured("monitor", name, "x", f"{type(e).__name__}: {e}"))
    return out


def cuda_figures(quick: bool, tmp: Path) -> list[Figure]:
    """The monitor's per-step cost on the GPU (each step boundary synchronised, on both sides alike)."""
    if not torch.cuda.is_available():
        return [not_measured("cuda", "monitor per step (CUDA)", "x", "no CUDA GPU here", goal=f"<= {GOAL:g}")]
    return monitor_figures(Path(tmp), 8.0 if quick else 40.0, accelerator="gpu")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer pairs of turns (what bench/run.py --quick runs)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's own choice)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="amp-bench-monitor-") as tmp:
        found = figures(args.quick, Path(tmp))
    print(f"\ntorch {torch.__version__}, Lightning {pl.__version__}, {torch.get_num_threads()} threads")
    print_figures(found)
    print(f"({time.perf_counter() - started:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
