"""One short training run from the command line: flags -> RunConfig -> run() -> a run record.

    python -m amp_core.train --precision 16-mixed --max-steps 200 --init-scale 65536
    python -m amp_core.train --workload gpt --layers 2 --width 64 --context 32
    python -m amp_core.train --model mypkg.models:Net --data mypkg.data:loader --path ~/project

One flag per field of `amp_core.training.config.RULES` (its help, its kind). Every refusal is one line on
stderr and exit code 2, before any run folder is made; a run that fails exits 1.

The pieces live in their own modules; their public names are re-exported here: the configuration
(`amp_core.training.config`), the run (`amp_core.training.run_loop`), the precision plugin (`amp_core.training.plugins`),
what a record notes (`amp_core.training.run_facts`), W&B (`amp_core.training.wandb_logger`), the workloads
(`amp_core.training.workloads`). Importing this module does not import torch (the app's server imports it).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn

from amp_core.record import RunRecordError, default_runs_dir
from amp_core.training.config import (  # noqa: F401  (re-exported)
    ACCELERATORS,
    MATMUL_PRECISIONS,
    MAX_STEPS_LIMIT,
    RULES,
    STRATEGIES,
    WANDB_MODES,
    ConfigError,
    RunConfig,
    defaults_for,
)
from amp_core.training.workloads import WORKLOADS

# Flags whose default depends on the workload: None in the parser, filled in after it.
_PER_WORKLOAD = {"workload", *(name for w in WORKLOADS.values() for name in w.defaults)}

_LAZY = {  # the names this module had before the split, loaded on use (they import torch)
    "run": "amp_core.training.run_loop",
    "resolve_accelerator": "amp_core.training.run_loop",
    "global_rank": "amp_core.training.run_loop",
    "RUN_DIR_ENV": "amp_core.training.run_loop",
    "build_precision": "amp_core.training.plugins",
    "hardware_facts": "amp_core.training.run_facts",
    "versions": "amp_core.training.run_facts",
    "cpu_amp_flags": "amp_core.training.run_facts",
    "step_timing": "amp_core.training.run_facts",
    "peak_memory": "amp_core.training.run_facts",
    "StepTimer": "amp_core.training.run_callbacks",
    "StopOnRequest": "amp_core.training.run_callbacks",
    "wandb_credentials_present": "amp_core.training.wandb_logger",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'amp_core.train' has no attribute {name!r}")


def run(config: RunConfig, writer: Any = None) -> Any:
    """Train once and record it (`amp_core.training.run_loop.run`)."""
    from amp_core.training.run_loop import run as run_once

    return run_once(config, writer)


class UsageError(Exception):
    """Arguments argparse refused (an unknown flag, a flag without its value); the message is one line."""


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser that raises UsageError with one printable line instead of printing the usage
    and exiting (the CLIs print it as their one-line refusal; tests and callers can catch it)."""

    def error(self, message: str) -> NoReturn:
        # argparse quotes the user's arguments: a line break (or other control character) in one is escaped.
        raise UsageError("".join(c if c.isprintable() else repr(c)[1:-1] for c in message))


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def parser() -> OneLineParser:
    """One flag per rule; values stay strings here and are typed by `config_from_args`."""
    d = RunConfig()
    p = OneLineParser(
        prog="python -m amp_core.train",
        description="One short mixed-precision training run, recorded for AMP Explorer.",
    )
    for name, rule in RULES.items():
        if not rule.flag:
            continue
        help_text = rule.help + (f" [{rule.workload}]" if rule.workload else "")
        if rule.kind == "bool":
            p.add_argument(flag(name), action="store_true", help=help_text)
        else:
            default = (
                None
                if name in _PER_WORKLOAD or name == "runs_dir"
                else ""
                if name == "inject_overflow"
                else getattr(d, name)
            )
            p.add_argument(flag(name), default=default, help=help_text)
    return p


def _typed(name: str, value: Any, kind: str) -> Any:
    if not isinstance(value, str) or kind not in ("int", "float"):
        return value
    try:
        return int(value) if kind == "int" else float(value)
    except ValueError:
        raise ConfigError(f"{name} must be {'an integer' if kind == 'int' else 'a number'}, got {value!r}") from None


def config_from_args(argv: list[str] | None) -> RunConfig:
    args = parser().parse_args(argv)
    values = {}
    for name, value in vars(args).items():
        if isinstance(value, list):  # argparse drops a value of '--' ("--lr=--"), leaving an empty list
            raise ConfigError(f"{flag(name)} needs a value, got '--'")
        values[name] = _typed(flag(name), value, RULES[name].kind)
    values["runs_dir"] = values["runs_dir"] or str(default_runs_dir())
    values["inject_overflow"] = tuple(
        _typed("--inject-overflow", x.strip(), "int") for x in values["inject_overflow"].split(",") if x.strip()
    )
    if values["workload"] is None:  # --model alone means your own model
        values["workload"] = "user" if values["model"] else RunConfig.workload
    known = isinstance(values["workload"], str) and values["workload"] in WORKLOADS  # else validate() refuses it
    defaults = defaults_for(values["workload"] if known else RunConfig.workload)
    values.update({name: defaults[name] for name in _PER_WORKLOAD if values[name] is None})
    return RunConfig(**values).validate()


def main(argv: list[str] | None = None) -> int:
    config = None
    try:
        config = config_from_args(argv)
        writer = run(config)
    except (ConfigError, RunRecordError, UsageError) as e:
        print(f"amp_core.train: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        from amp_core.training.preflight import failure_hint

        hint = failure_hint(config.precision, e) if config is not None else ""
        print(f"amp_core.train: the run failed: {type(e).__name__}: {e}".splitlines()[0] + hint, file=sys.stderr)
        return 1
    from amp_core.record import load_run, summarize
    from amp_core.training.run_loop import global_rank

    if global_rank() != 0:
        return 0  # rank 0 reports
    s = summarize(load_run(writer.path))
    scale = f"{s['final_loss_scale']:g}" if s["final_loss_scale"] is not None else "none"
    loss = f"{s['final_loss']:.4f}" if s["final_loss"] is not None else "n/a"
    print(
        f"{s['state']}: {s['steps']} steps at {s['precision']} on {s['accelerator']}, {s['skipped']} skipped, final loss scale {scale}, final loss {loss}"
    )
    print(writer.path)
    return 0 if s["state"] in ("completed", "stopped") else 1


if __name__ == "__main__":
    sys.exit(main())
