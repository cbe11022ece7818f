"""What watching the loss scale costs, per training step (a benchmark: nothing here asserts a time).

    python bench/monitor_overhead.py            # the full set (a few minutes more than --quick)
    python bench/monitor_overhead.py --quick    # what `bench/run.py --quick` runs: about 3 minutes on 2 cores

Each figure is a ratio of per-step times of one Trainer under two setups, A and B, that take turns
(A B B A ...): a setup is the callbacks and loggers added to the Trainer, swapped in between two
steps (Lightning reads `trainer.callbacks` and `trainer.loggers` afresh at every hook). One turn is
~20 ms (at least 3 steps) and its value is the median time of its steps but the first (a step: from
one `on_train_batch_start` to the next, so the loop, every hook and the loggers are inside it; the
first is the switch). The ratio is the median of B/A over the pairs (`bench.report.interleaved_ratio`),
after warm-up turns. One Trainer, one model, one process: only B's own work differs, and a burst of
load from other processes falls on both setups alike. The bare setup has a logger too (a
`MemoryLogger` that drops everything), as Lightning's own `self.log` calls need one.

    monitor    LossScaleMonitor + RunRecordLogger (what amp_core.train adds) vs bare Lightning, at
               32-true, bf16-mixed and 16-mixed (on CPU through the explicit fp16 plugin,
               amp_core.training.plugins.fp16_mixed), on the MLP and the GPT workload, default sizes
    gradients  a callback that only reads the gradients as the monitor does on the CPU, vs bare: the
               floor the monitor's figures stand on (at 32-true, where the step is shortest)
    ledger     the monitor vs the monitor with its skip ledger replaced by one that does nothing (16-mixed)
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
from typing import Any

os.environ.setdefault("WANDB_MODE", "offline")  # never online from a benchmark
os.environ.setdefault("WANDB_SILENT", "true")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from pytorch_lightning.callbacks import Callback  # noqa: E402

from amp_core.record import METRICS_FILE, RunWriter  # noqa: E402
from amp_core.training.callbacks import AmpWandbCallback, LossScaleMonitor  # noqa: E402
from amp_core.training.config import RunConfig  # noqa: E402
from amp_core.training.grad_stats import host_stats  # noqa: E402
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


class Setup:
    """One side of a comparison: the callbacks and loggers it adds to the shared Trainer, and the
    monitor and record whose lines are counted at the end (a check that the monitor worked)."""

    def __init__(self, callbacks: list, loggers: list, writer: RunWriter | None = None):
        self.callbacks, self.loggers, self.writer = callbacks, loggers, writer
        self.monitor = next((c for c in callbacks if isinstance(c, LossScaleMonitor)), None)


def _union(lists) -> list:
    out = []
    for items in lists:
        out += [x for x in items if all(x is not y for y in out)]
    return out


class Turns(Callback):
    """Lets a Trainer take turns of `steps` steps, each under one of `setups`, started from another
    thread: `Side.turn(name)` runs one. Put it first among the callbacks: its mark comes before any
    other callback's work of the step, and the setup it swaps in applies from the step's next hook."""

    def __init__(self, steps: int, setups: dict[str, Setup]):
        self.steps, self.setups = steps, setups
        self.marks: list[tuple[float, float]] = []  # (wall, process CPU) seconds at each step's start
        self.monitor_steps: dict[int, int] = {}  # id(monitor) -> steps it saw whole
        self.next = ""
        self._left = 0  # steps left in this turn: none, so it waits at its first step
        self._go, self._paused = threading.Event(), threading.Event()
        self._finishing = False
        self._active: list = []  # the monitors of the setup in use
        self._started: list = []  # monitors between their on_train_start and on_train_end

    def everything(self) -> tuple[list, list]:
        """Every setup's callbacks and loggers: what the Trainer is made with (each gets its `setup`,
        `on_train_start` and so on as fit starts; the first turn then ends the monitors it does not use)."""
        return (
            _union(s.callbacks for s in self.setups.values()),
            _union(s.loggers for s in self.setups.values()),
        )

    def _use(self, trainer, setup: Setup) -> None:
        """Swaps `setup` in. A monitor leaving ends its training (its rows to its own loggers, its
        skip ledger's hooks off the parameters: they would run in the other setup's backward), one
        coming back starts it again; that work falls in the turn's first step, which is not counted."""
        module = trainer.lightning_module
        for monitor in [m for m in self._started if all(m is not c for c in setup.callbacks)]:
            monitor.on_train_end(trainer, module)
            self._started.remove(monitor)
        trainer.callbacks = [self, *setup.callbacks]  # a new list: the hook now running goes on with the old one
        trainer.loggers = setup.loggers
        self._active = [c for c in setup.callbacks if isinstance(c, LossScaleMonitor)]
        for monitor in [m for m in self._active if all(m is not s for s in self._started)]:
            monitor.on_train_start(trainer, module)
            self._started.append(monitor)

    def on_train_start(self, trainer, pl_module):
        self._started = [c for c in trainer.callbacks if isinstance(c, LossScaleMonitor)]

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
            if self._finishing:  # one last step in the setup in use, which Lightning then ends
                self._count()
                trainer.should_stop = True
                return
            self._use(trainer, self.setups[self.next])
            self.marks, self._left = [], self.steps
        self._count()
        self.marks.append((time.perf_counter(), time.process_time()))
        self._left -= 1

    def _count(self) -> None:
        for monitor in self._active:
            self.monitor_steps[id(monitor)] = self.monitor_steps.get(id(monitor), 0) + 1


class Side:
    """One Trainer taking turns under the setup each turn names. The Trainer fits in the calling
    thread, as it does in amp_core.train (torch's intra-op thread pool driven from another thread
    costs far more per parallel op: 100 against 10 µs for one reduction here); `drive` runs in a
    helper thread that only starts turns and reads their marks."""

    def __init__(self, trainer: pl.Trainer, module, data, turns: Turns):
        self.trainer, self.module, self.data, self.turns = trainer, module, data, turns
        self.error: BaseException | None = None
        self._fitting = True
        self.cpu: dict[str, list[float]] = {name: [] for name in turns.setups}  # per turn: median CPU s/step

    def run(self, drive: Callable[[], Any]) -> Any:
        """Fits here while `drive()` takes turns in a helper thread; returns what it returns."""
        out: dict[str, Any] = {}

        def driver() -> None:
            try:
                self.turns._paused.wait()  # the Trainer is at its first step
                out["value"] = drive()
            except BaseException as e:
                out["error"] = e
            finally:
                self.turns._finishing = True
                self.turns._go.set()

        thread = threading.Thread(target=driver, daemon=True)
        thread.start()
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore")
                self.trainer.fit(self.module, self.data)
        except BaseException as e:
            self.error = e
        finally:
            self._fitting = False
            self.turns._paused.set()  # a driver waiting on a turn sees the end
            thread.join()
        if self.error is not None:
            raise RuntimeError(f"a benchmark Trainer failed: {type(self.error).__name__}: {self.error}") from self.error
        if "error" in out:
            raise out["error"]
        return out["value"]

    def turn(self, name: str) -> float:
        self.turns.next = name
        self.turns._paused.clear()
        self.turns._go.set()
        while not self.turns._paused.wait(0.5):
            if not self._fitting:  # the fit ended (or failed) while this turn was being handed over
                break
        if not self._fitting:
            raise RuntimeError("the benchmark Trainer stopped during a turn")
        # the turn's first step is the switch from the other setup (its hooks ran in part under each)
        # and is left out: every step counted follows one of the same setup
        m = self.turns.marks[1:]
        self.cpu[name].append(statistics.median(b[1] - a[1] for a, b in zip(m, m[1:])))
        return statistics.median(b[0] - a[0] for a, b in zip(m, m[1:]))

    def check_records(self) -> None:
        """Each monitor wrote one record line per step it saw whole (a sanity check, not a timing)."""
        for setup in self.turns.setups.values():
            if setup.writer is None or setup.monitor is None:
                continue
            setup.writer.flush()  # a setup not in use at the end was not finalized by Lightning
            with open(setup.writer.path / METRICS_FILE) as f:
                lines = sum(1 for _ in f)
            expected = self.turns.monitor_steps.get(id(setup.monitor), 0)
            if lines != expected:
                raise RuntimeError(f"the monitor recorded {lines} of the {expected} steps it saw")


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


def bare(config: RunConfig, tmp: Path) -> Setup:
    """Nothing added: the logger every Trainer here needs, dropping what it is given."""
    return Setup([], [MemoryLogger(keep=False)])


def monitored(config: RunConfig, tmp: Path, monitor: LossScaleMonitor | None = None) -> Setup:
    """The monitor and its record, as amp_core.train adds them."""
    writer = RunWriter.create(tmp, {"precision": config.precision, "bench": True}, label=config.precision)
    monitor = monitor or LossScaleMonitor(histogram_every=config.histogram_every or None)
    return Setup([monitor], [RunRecordLogger(writer)], writer)


def make_side(config: RunConfig, setups: dict[str, Setup]) -> Side:
    """One Trainer of `config` that takes turns under `setups` once run."""
    pl.seed_everything(config.seed, verbose=False)
    built = WORKLOADS[config.workload].build(config)
    turns = Turns(STEPS_PER_TURN, setups)
    callbacks, loggers = turns.everything()
    device = "cuda" if config.accelerator == "gpu" else "cpu"
    precision_kwargs, _ = build_precision(config, device)
    trainer = pl.Trainer(
        accelerator=config.accelerator,
        devices=1,
        max_steps=10**7,
        max_epochs=-1,
        logger=loggers,
        callbacks=[turns, *callbacks],
        log_every_n_steps=1,  # amp_core.train's on CPU
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=False,
        **precision_kwargs,
    )
    return Side(trainer, built.module, built.data, turns)


@dataclasses.dataclass
class Measured:
    ratio: float  # median of B/A over the pairs
    a_step: float  # median step seconds of A's turns
    b_step: float
    pairs: int
    steps_per_turn: int
    cpu_ratio: float  # the same pairs, in process CPU time: what other processes' load leaves out


def ab_ratio(config: RunConfig, a: Setup, b: Setup, seconds: float) -> Measured:
    """The median B/A per-step ratio over interleaved pairs of turns of one Trainer for about `seconds`.
    A turn lasts about TURN_SECONDS (at least 3 steps, its first one not counted): short turns put the
    same bursts of load on both setups."""
    side = make_side(config, {"a": a, "b": b})

    def drive() -> Measured:
        warm = [t for _ in range(WARMUP_TURNS) for t in (side.turn("a"), side.turn("b"))]
        step = statistics.median(warm[-2:])
        steps = max(3, round(TURN_SECONDS / step))
        side.turns.steps = steps
        pairs = max(MIN_PAIRS, round(seconds / (2 * steps * step)))
        r = interleaved_ratio(partial(side.turn, "a"), partial(side.turn, "b"), pairs)
        cpu_a, cpu_b = side.cpu["a"][WARMUP_TURNS:], side.cpu["b"][WARMUP_TURNS:]
        cpu = statistics.median(y / x for x, y in zip(cpu_a, cpu_b) if x > 0)
        return Measured(r.ratio, r.a_median, r.b_median, pairs, steps, cpu)

    measured = side.run(drive)
    side.check_records()
    return measured


def _how(a: str, b: str, m: Measured) -> str:
    return (
        f"{b} vs {a}: median of {m.pairs} interleaved pairs of {m.steps_per_turn}-step turns of one Trainer "
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
            m = ab_ratio(config, bare(config, tmp), monitored(config, tmp), seconds)
            how = _how("bare Lightning", "LossScaleMonitor + RunRecordLogger", m)
            name = f"monitor per step, {workload} {precision}" + (" (CUDA)" if accelerator == "gpu" else "")
            out.append(figure(section, name, m.ratio, "x", how, at_most=GOAL))
            print(f"  {out[-1].name}: {m.ratio:.3f}", file=sys.stderr, flush=True)
    return out


def control_figure(tmp: Path, seconds: float) -> Figure:
    """Bare Lightning against bare Lightning: what the method reads when B does nothing more than A
    (its noise on this machine, now). The other figures are as good as this is close to 1."""
    config = config_for("mlp", "32-true")
    same = bare(config, tmp)
    m = ab_ratio(config, same, same, seconds)
    return figure("monitor", "control: bare vs bare, mlp 32-true", m.ratio, "x", _how("bare", "bare", m))


def ledger_figure(tmp: Path, seconds: float) -> Figure:
    """The ledger works with a GradScaler only (without one no step is skipped, and it does nothing)."""
    config = config_for("mlp", "16-mixed")
    without = LossScaleMonitor(histogram_every=config.histogram_every)
    without._ledger = NoLedger()
    m = ab_ratio(config, monitored(config, tmp, without), monitored(config, tmp), seconds)
    how = _how("the monitor without it", "the monitor with its skip ledger", m)
    return figure("monitor", "skip ledger per step, mlp 16-mixed", m.ratio, "x", how)


class GradStatsOnly(Callback):
    """Only the gradient statistics the monitor takes each step on the CPU (`grad_stats.host_stats`;
    without a GradScaler, every gradient's L2 norm): the part of its cost that reading the gradients sets."""

    def __init__(self, with_max: bool):
        self.with_max = with_max

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        self.last = host_stats(grads, self.with_max)


def grad_stats_figures(tmp: Path, seconds: float) -> list[Figure]:
    out = []
    for workload in WORKLOAD_NAMES:
        config = config_for(workload, "32-true")
        plain = bare(config, tmp)
        m = ab_ratio(config, plain, Setup([GradStatsOnly(with_max=False)], plain.loggers), seconds)
        how = _how("bare Lightning", "a callback reading the gradients as the monitor does, nothing else", m)
        out.append(figure("monitor", f"gradient statistics alone per step, {workload} 32-true", m.ratio, "x", how))
    # what the default leaves out without a GradScaler: the largest |g|, a second pass over the gradients
    config = config_for("mlp", "32-true")
    with_max = LossScaleMonitor(histogram_every=config.histogram_every or None, grad_max=True)
    m = ab_ratio(config, monitored(config, tmp), monitored(config, tmp, with_max), seconds)
    how = _how("the monitor as by default (no amp/grad_max without a GradScaler)", "the monitor with grad_max=True", m)
    out.append(figure("monitor", "amp/grad_max every step too (grad_max=True), mlp 32-true", m.ratio, "x", how))
    return out


def wandb_callback_figure(tmp: Path, seconds: float) -> Figure:
    name = "AmpWandbCallback per step (loss scale to offline W&B every step), mlp 16-mixed"
    try:
        import wandb

        run = wandb.init(mode="offline", dir=str(tmp), project="amp-explorer-bench", name="monitor-overhead")
    except Exception as e:
        return not_measured("monitor", name, "x", f"W&B did not start: {type(e).__name__}: {e}")
    config = config_for("mlp", "16-mixed")
    try:
        plain = bare(config, tmp)
        callback = AmpWandbCallback(enabled=True, precision="16-mixed", log_every_n_steps=1)
        m = ab_ratio(config, plain, Setup([callback], plain.loggers), seconds)
    finally:
        run.finish()
    return figure("monitor", name, m.ratio, "x", _how("bare Lightning", "AmpWandbCallback", m))


def wandb_logger_figure(tmp: Path, seconds: float) -> Figure:
    name = "offline WandbLogger next to the monitor per step, mlp 32-true"
    config = config_for("mlp", "32-true")
    alone = monitored(config, tmp)
    wandb_logger = make_wandb_logger(dataclasses.replace(config, wandb="offline"), alone.writer)
    if wandb_logger is None:
        return not_measured("monitor", name, "x", "W&B did not start (see the bench run's status warnings)")
    try:
        # the same monitor and record on both sides: what B adds is the W&B logger alone
        both = Setup(alone.callbacks, [*alone.loggers, wandb_logger], alone.writer)
        m = ab_ratio(config, alone, both, seconds)
    except RuntimeError as e:
        return not_measured("monitor", name, "x", str(e))
    finally:
        wandb_logger.experiment.finish()
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
        ("gradient statistics alone per step", lambda: grad_stats_figures(tmp, seconds)),
        ("skip ledger per step, mlp 16-mixed", lambda: [ledger_figure(tmp, seconds)]),
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
