"""A run's configuration: the `RunConfig` dataclass and one table of rules for its fields.

`RULES` is read by three users, so a bound is typed once: `RunConfig.validate` (refuses a value with
one line), the CLI (`amp_core.train` makes one flag per rule, with its help), and the pages (widget
bounds through `widget_bounds`). A field that belongs to one workload names it in its rule
(`workload="gpt"`); `workload_settings` lists them and the record notes them.

Standard library only: the Streamlit server imports this.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from amp_core.precision import shown
from amp_core.training.workloads import WORKLOADS, valid_import_path

WANDB_MODES = ("offline", "online", "disabled")
STRATEGIES = ("auto", "ddp")
ACCELERATORS = ("auto", "cpu", "gpu")
MATMUL_PRECISIONS = ("highest", "high", "medium")  # torch.set_float32_matmul_precision; 'high' allows TF32 on CUDA
MAX_STEPS_LIMIT = 1_000_000
_GROUP_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")  # \Z: "$" would let a trailing newline in


class ConfigError(ValueError):
    """A run setting that cannot be used; the message is one line a user can act on."""


@dataclass
class RunConfig:
    precision: str = "16-mixed"
    accelerator: str = "auto"
    max_steps: int = 200
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    init_scale: float = 2.0**16
    growth_factor: float = 2.0
    backoff_factor: float = 0.5
    growth_interval: int = 2000
    workload: str = "mlp"
    hidden: int = 256  # mlp
    depth: int = 3  # mlp
    layers: int = 2  # gpt
    heads: int = 4  # gpt
    width: int = 64  # gpt
    context: int = 32  # gpt
    model: str = ""  # user: pkg.module:attr
    data: str = ""  # user: pkg.module:attr
    path: str = ""  # user: a folder put first on sys.path
    fused: bool = False
    histogram_every: int = 25
    inject_overflow: tuple[int, ...] = ()
    fault: str = ""  # "KIND@STEP" with KIND raise, oom or nan: fail on purpose (demos, tests)
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"
    wandb: str = "offline"
    runs_dir: str = ""
    matmul_precision: str = "highest"
    time_steps: bool = False
    compare_group: str = ""

    def validate(self, normalize_precision: Callable[[Any], str] | None = None) -> RunConfig:
        """Check every field and normalise the precision; raises ConfigError with one clear line.

        `normalize_precision` defaults to amp_core.precision's, which asks Lightning; the server passes
        Lightning's answers read from amp_core.serve.precision_table, so that a Start imports no torch."""
        if normalize_precision is None:
            from amp_core.precision import normalize_precision

        try:
            self.precision = normalize_precision(self.precision)
        except ValueError as e:
            raise ConfigError(str(e).splitlines()[0]) from None
        from amp_core.training.preflight import missing_precision_package

        if missing := missing_precision_package(self.precision):  # refused here, not as a failed run after it started
            raise ConfigError(missing)
        for name, rule in RULES.items():
            if rule.kind != "custom":
                setattr(self, name, rule.check(name, getattr(self, name)))
        if self.backoff_factor == 1:
            raise ConfigError("backoff-factor must be < 1 (the scale must drop when a step overflows)")
        _check_text_fields(self)
        _check_workload(self)
        _check_injections(self)
        return self

    def workload_settings(self) -> dict[str, Any]:
        """This run's workload's own settings, as config.json records them."""
        return {name: getattr(self, name) for name in workload_settings(self.workload)}


@dataclass(frozen=True)
class Rule:
    """What one field accepts. kind: int, float, choice, bool, text (checked by code), custom (code only)."""

    kind: str
    help: str = ""
    lo: float = 0
    hi: float = 0
    lo_open: bool = False  # lo itself refused
    choices: tuple = ()
    workload: str = ""  # '' for every run, else the workload this setting belongs to
    flag: bool = True  # a `python -m amp_core.train` flag

    def check(self, name: str, value: Any) -> Any:
        """The value, normalised to its kind; raises ConfigError."""
        label = name.replace("_", "-")
        if self.kind == "choice":
            if not isinstance(value, str) or value not in self.choices:
                raise ConfigError(f"{label} must be one of {', '.join(self.choices)}, got {shown(value)}")
            return value
        if self.kind == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"{label} must be true or false, got {shown(value)}")
            return value
        if self.kind == "text":
            if not isinstance(value, str) or "\0" in value:
                raise ConfigError(f"{label} must be text, got {shown(value)}")
            return value
        kind = int if self.kind == "int" else float
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{label} must be {'an integer' if kind is int else 'a number'}, got {shown(value)}")
        try:
            as_float = float(value)
        except OverflowError:  # an int too large for a float: out of every range here
            as_float = math.inf if value > 0 else -math.inf
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{label} must be an integer, got {shown(value)}")
        if not math.isfinite(as_float) or value < self.lo or value > self.hi or (self.lo_open and value == self.lo):
            bound = f"{'>' if self.lo_open else '>='} {self.lo:g} and <= {self.hi:g}"
            raise ConfigError(f"{label} must be {bound}, got {shown(value)}")
        return kind(value)


def _int(help: str, lo: int, hi: int, workload: str = "") -> Rule:
    return Rule("int", help, lo, hi, workload=workload)


def _float(help: str, lo: float, hi: float) -> Rule:
    return Rule("float", help, lo, hi, lo_open=True)


# Field order is the order of checks and of the CLI's flags.
RULES: dict[str, Rule] = {
    "precision": Rule("custom", "any Lightning precision value, e.g. 16-mixed, bf16-mixed, 32-true, 16, bf16, 32"),
    "accelerator": Rule("choice", "auto, cpu or gpu", choices=ACCELERATORS),
    "wandb": Rule(
        "choice",
        "offline (default), online (needs credentials, else offline with a warning) or disabled",
        choices=WANDB_MODES,
    ),
    "matmul_precision": Rule(
        "choice",
        "torch.set_float32_matmul_precision: highest (default), high (TF32 on CUDA) or medium",
        choices=MATMUL_PRECISIONS,
    ),
    "time_steps": Rule("bool", "record the median step time in status.json (on CUDA: one synchronisation per step)"),
    "fused": Rule("bool", "use the fused AdamW implementation"),
    "runs_dir": Rule("custom", "where run records go (default: $AMP_RUNS_DIR or runs/)"),
    "compare_group": Rule("custom", "id shared by the runs of one precision comparison (amp_core.compare sets it)"),
    "max_steps": _int("optimizer steps to run", 1, MAX_STEPS_LIMIT),
    "batch_size": _int("samples per step (gpt: sequences of --context characters)", 1, 65536),
    "lr": _float("AdamW learning rate", 0, 10),
    "seed": _int("seed of the weights and the data", 0, 2**32 - 1),
    "init_scale": _float("GradScaler initial loss scale (fp16 only)", 0, 2.0**126),
    "growth_factor": _float("GradScaler growth factor", 1, 1e6),
    "backoff_factor": _float("GradScaler backoff factor (< 1)", 0, 1),
    "growth_interval": _int("GradScaler: clean steps before the scale grows", 1, 10**9),
    "workload": Rule(
        "choice",
        "what trains: " + "; ".join(f"{w.name}: {w.description}" for w in WORKLOADS.values()),
        choices=tuple(WORKLOADS),
    ),
    "hidden": _int("width of the demo MLP", 1, 65536, "mlp"),
    "depth": _int("hidden layers of the demo MLP", 1, 64, "mlp"),
    "layers": _int("transformer blocks", 1, 48, "gpt"),
    "heads": _int("attention heads per block (must divide --width)", 1, 64, "gpt"),
    "width": _int("embedding width", 8, 8192, "gpt"),
    "context": _int("context length in characters", 8, 4096, "gpt"),
    "model": Rule(
        "text",
        "your LightningModule: pkg.module:attr (a subclass, or a callable returning one); implies --workload user",
        workload="user",
    ),
    "data": Rule(
        "text",
        "its data: pkg.module:attr (a LightningDataModule, a DataLoader, or a callable returning one); default: the module's own train_dataloader",
        workload="user",
    ),
    "path": Rule("text", "a folder put first on sys.path before importing --model and --data", workload="user"),
    "devices": _int("processes (GPUs, or CPU processes) per node; >1 runs Lightning's DDP", 1, 1024),
    "num_nodes": _int("machines; launch one process per node as Lightning documents (torchrun, SLURM)", 1, 1024),
    "strategy": Rule("choice", "auto or ddp", choices=STRATEGIES),
    "histogram_every": _int("steps between gradient histograms (0: none)", 0, 10**9),
    "inject_overflow": Rule(
        "custom", "comma-separated steps at which to put an inf into the gradients (16-mixed only)"
    ),
    "fault": Rule("custom", "fail on purpose: raise@STEP, oom@STEP or nan@STEP (demos and tests)"),
}
assert list(RULES) and {f.name for f in fields(RunConfig)} == set(RULES), "every RunConfig field has one rule"


def workload_settings(workload: str) -> list[str]:
    """The RunConfig fields that are `workload`'s own settings, in table order."""
    return [name for name, rule in RULES.items() if rule.workload == workload]


def defaults_for(workload: str) -> dict[str, Any]:
    """Every field's default for a run of `workload` (a workload may change a shared one, e.g. gpt's batch size)."""
    return {**{f.name: f.default for f in fields(RunConfig)}, "workload": workload, **WORKLOADS[workload].defaults}


def widget_bounds(name: str, workload: str = "mlp") -> dict[str, Any]:
    """Keyword arguments for a Streamlit number_input/selectbox of field `name` (min, max, default, help)."""
    rule, default = RULES[name], defaults_for(workload)[name]
    if rule.kind == "choice":
        return {"options": list(rule.choices), "index": list(rule.choices).index(default), "help": rule.help}
    if rule.kind == "int":
        return {"min_value": int(rule.lo), "max_value": int(rule.hi), "value": default, "step": 1, "help": rule.help}
    if rule.kind == "float":  # an open lower bound: the next float above it
        return {
            "min_value": math.nextafter(float(rule.lo), math.inf) if rule.lo_open else float(rule.lo),
            "max_value": float(rule.hi),
            "value": float(default),
            "help": rule.help,
        }
    return {"value": default, "help": rule.help}


def _check_text_fields(c: RunConfig) -> None:
    if not isinstance(c.runs_dir, str) or "\0" in c.runs_dir:
        raise ConfigError(f"runs-dir must be a folder path, got {shown(c.runs_dir)}")
    if not isinstance(c.compare_group, str) or (c.compare_group and not _GROUP_ID.match(c.compare_group)):
        raise ConfigError(
            f"compare-group must be letters, digits, '.', '_' or '-' (at most 64), got {shown(c.compare_group)}"
        )


def _check_workload(c: RunConfig) -> None:
    """Settings that depend on each other; importing the user's code is left to the run (`workloads.user`)."""
    if c.workload == "gpt" and c.width % c.heads:
        raise ConfigError(f"heads must divide width: {c.width} is not a multiple of {c.heads}")
    if c.workload != "user":
        given = [f"--{name}" for name in workload_settings("user") if getattr(c, name)]
        if given:
            raise ConfigError(
                f"{', '.join(given)}: only for your own model (--workload user, or leave --workload out), not workload {c.workload!r}"
            )
        return
    if not c.model:
        raise ConfigError("workload 'user' needs --model pkg.module:attr (your LightningModule)")
    for name in ("model", "data"):
        value = getattr(c, name)
        if value and not valid_import_path(value):
            raise ConfigError(f"{name} must be pkg.module:attr (Python names, one ':'), got {shown(value)}")


def _check_injections(c: RunConfig) -> None:
    steps = c.inject_overflow
    if not isinstance(steps, (list, tuple, set, frozenset)) or not all(
        isinstance(x, int) and not isinstance(x, bool) for x in steps
    ):
        raise ConfigError(f"inject-overflow must be a list of step numbers, got {shown(steps)}")
    if any(x < 0 or x >= c.max_steps for x in steps):
        raise ConfigError(
            f"inject-overflow steps must be between 0 and max-steps - 1 ({c.max_steps - 1}), got {shown(sorted(steps))}"
        )
    if steps and c.precision != "16-mixed":
        raise ConfigError(
            "inject-overflow needs a GradScaler, i.e. precision 16-mixed: without one an inf gradient ruins the weights"
        )
    c.inject_overflow = tuple(sorted(set(steps)))
    if not isinstance(c.fault, str) or c.fault:
        from amp_core.training.faults import FAULTS

        kind, _, at = str(c.fault).partition("@") if isinstance(c.fault, str) else ("", "", "")
        if kind not in FAULTS or not re.fullmatch(r"[0-9]{1,9}", at):  # ASCII digits only: int() must read them
            raise ConfigError(
                f"fault must be KIND@STEP with KIND one of {', '.join(FAULTS)}, e.g. nan@10; got {shown(c.fault)}"
            )
