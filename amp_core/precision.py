"""Which precision does a run really train in, and why.

Two things decide it. First the project's seed rule, :func:`compute_effective_precision`, turns the user's
``use_amp`` / hardware switches into a ``precision`` value for the Trainer. Then Lightning normalises that value
(``'16'`` -> ``'16-mixed'``), may replace it (fp16 AMP on CPU becomes bf16 AMP) and picks a precision plugin
that decides autocast and gradient scaling.

:func:`resolve_precision` walks both steps and records every decision. It does not copy Lightning's tables: it
builds the Trainer's own accelerator connector and reads what came out, with Lightning's warnings and info lines
captured. A GPU target on a machine without CUDA is answered twice: the real error from this machine, and what
Lightning does on a CUDA machine, asked with CUDA availability simulated (``simulated=True``).

Lightning is imported lazily, so importing this module stays cheap.

CLI::

    python -m amp_core.precision --precision 16-mixed --use-amp true --cuda-available true --use-gpu true
    python -m amp_core.precision --table
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import itertools
import json
import sys
import threading
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = [
    "InvalidPrecisionError",
    "PrecisionResolution",
    "clear_cache",
    "compute_effective_precision",
    "format_table",
    "lightning_precision_values",
    "normalize_precision",
    "requested_precision_values",
    "resolve_precision",
    "shown",
    "truth_table",
]

# Warnings capture, the logging filter and the CUDA simulation all change process-wide state, and the Streamlit
# server calls in here from many sessions at once.
_LIGHTNING_LOCK = threading.Lock()

# Torch warnings that only exist because CUDA is simulated on a machine without it; a CUDA machine never says them.
_SIMULATION_ARTIFACTS = ("CUDA is not available",)


class InvalidPrecisionError(ValueError):
    """A precision value Lightning does not accept; the message lists the values it does."""


def compute_effective_precision(requested_precision, use_amp, cuda_available, use_gpu):
    """The project's seed rule: ``use_amp=None`` keeps the requested value; otherwise fp16 AMP only on a usable GPU."""
    if use_amp is None:
        return requested_precision
    if use_amp and cuda_available and use_gpu:
        return "16"
    return "32"


def lightning_precision_values(include_aliases: bool = True) -> tuple[str, ...]:
    """Lightning's accepted string values for ``Trainer(precision=...)``, read from Lightning's own type hints."""
    from typing import get_args

    from lightning_fabric.plugins.precision.precision import _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS

    aliases = get_args(_PRECISION_INPUT_STR_ALIAS) if include_aliases else ()
    return get_args(_PRECISION_INPUT_STR) + aliases


def requested_precision_values() -> tuple:
    """Every value the truth table tries: Lightning's strings, its legacy aliases and its legacy ints."""
    from typing import get_args

    from lightning_fabric.plugins.precision.precision import _PRECISION_INPUT_INT

    return lightning_precision_values() + get_args(_PRECISION_INPUT_INT)


def shown(value: Any, limit: int = 200) -> str:
    """repr() for an error message: never raises (an int of over 4300 digits has no repr) and stays short."""
    try:
        text = repr(value)
    except ValueError:
        text = f"<an integer of {value.bit_length()} bits>" if isinstance(value, int) else f"<a {type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def normalize_precision(value) -> str:
    """Lightning's own normalisation: ``'16'``/``16`` -> ``'16-mixed'``, ``'bf16'`` -> ``'bf16-mixed'``, ``None`` ->
    Lightning's default. Raises :class:`InvalidPrecisionError` for anything Lightning would reject."""
    from lightning_fabric.connector import _convert_precision_to_unified_args

    with _LIGHTNING_LOCK, warnings.catch_warnings():
        # Lightning's "supported for historical reasons" note is captured and reported by resolve_precision.
        warnings.simplefilter("ignore")
        try:
            unified = _convert_precision_to_unified_args(value)
        except ValueError as err:
            message = str(err)
            if "Allowed precision values" not in message:  # Lightning's own repr() failed (an int of over 4300 digits)
                message = (
                    f"Precision {shown(value)} is invalid. Allowed precision values: {requested_precision_values()}"
                )
            raise InvalidPrecisionError(message) from err
    if unified is None:
        # Only here: importing pytorch_lightning takes seconds, and the server validates every Start with this.
        from pytorch_lightning.plugins.precision import Precision

        return Precision.precision  # the base plugin's default, which is what Trainer(precision=None) gets
    # Lightning checks membership with ==, so 16.0 passes its check and comes out as '16.0', which it cannot use.
    if unified not in lightning_precision_values(include_aliases=False):
        raise InvalidPrecisionError(
            f"Precision {value!r} is invalid. Allowed precision values: {requested_precision_values()}"
        )
    return unified


@dataclasses.dataclass(frozen=True, kw_only=True)
class PrecisionResolution:
    """One full explanation: the inputs, the project's rule, then Lightning's decisions.

    Dtypes are strings such as ``'torch.float16'`` so the object is JSON-ready without torch.
    """

    requested: Any
    use_amp: bool | None
    cuda_available: bool
    use_gpu: bool
    rule_precision: Any  # compute_effective_precision's output, handed to Lightning as is
    accelerator: str  # the Trainer accelerator the run targets: 'cuda' or 'cpu'
    lightning_precision: str  # after Lightning's alias normalisation
    final_precision: str | None  # after Lightning's fallbacks; None when Lightning raised
    plugin: str | None  # class name of Lightning's precision plugin
    autocast_dtype: str | None  # None: no autocast, the model runs in weights_dtype
    weights_dtype: str | None  # parameter dtype after the plugin converts the model
    grad_scaler: bool
    warnings: tuple[str, ...]  # Lightning's warnings, verbatim
    info: tuple[str, ...]  # Lightning's info log lines, verbatim
    error: str | None  # Lightning's error on the target accelerator (simulated or not)
    simulated: bool  # answered with CUDA simulated, because this machine has none
    local_error: str | None  # when simulated: Lightning's error on this machine

    @property
    def fallback(self) -> bool:
        """True when Lightning replaced the precision it was given (16-mixed on CPU becomes bf16-mixed)."""
        return self.final_precision is not None and self.final_precision != self.lightning_precision

    def steps(self) -> list[tuple[str, str, str]]:
        """Ordered ``(step, value, explanation)`` lines, for a CLI or a web page."""
        steps = [
            ("requested", repr(self.requested), "precision the user asked for"),
            ("use_amp", repr(self.use_amp), _USE_AMP_NOTES[self.use_amp]),
            ("hardware", f"cuda_available={self.cuda_available}, use_gpu={self.use_gpu}", "as given"),
            ("project rule", repr(self.rule_precision), _rule_reason(self.use_amp, self.cuda_available, self.use_gpu)),
            ("accelerator", self.accelerator, _ACCELERATOR_NOTES[self.accelerator]),
        ]
        if self.simulated:
            steps.append(("simulated", "CUDA", f"this machine has no CUDA; Lightning here says: {self.local_error}"))
        steps += [
            ("alias", self.lightning_precision, _alias_reason(self.rule_precision, self.lightning_precision)),
        ]
        if self.error is None:
            steps += [
                ("fallback", self.final_precision, _fallback_reason(self)),
                ("plugin", self.plugin, "Lightning's precision plugin for this run"),
                ("autocast", str(self.autocast_dtype), _autocast_reason(self.autocast_dtype, self.weights_dtype)),
                ("weights", str(self.weights_dtype), "parameter dtype after the plugin converts the model"),
                ("grad scaler", "yes" if self.grad_scaler else "no", _SCALER_NOTES[self.grad_scaler]),
            ]
        steps += [("lightning warning", text, "captured from warnings") for text in self.warnings]
        steps += [("lightning info", text, "captured from Lightning's log") for text in self.info]
        if self.error is not None:
            steps.append(("lightning error", self.error, "Lightning cannot build this configuration"))
        return steps

    def as_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "fallback": self.fallback}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrecisionResolution:
        """The inverse of :meth:`as_dict` read back from JSON (lists become tuples; ``fallback`` is derived)."""
        fields = {k: v for k, v in data.items() if k != "fallback"}
        return cls(**{**fields, "warnings": tuple(fields["warnings"]), "info": tuple(fields["info"])})

    def __str__(self) -> str:
        width = max(len(name) for name, _, _ in self.steps())
        return "\n".join(f"{name:<{width}}  {value}  ({why})" for name, value, why in self.steps())


_USE_AMP_NOTES = {
    None: "not set: the project's rule keeps the requested precision",
    True: "on: the project's rule picks the precision from the hardware",
    False: "off: the project's rule picks full precision",
}
_ACCELERATOR_NOTES = {
    "cuda": "use_gpu and CUDA available: the run targets the GPU",
    "cpu": "no usable GPU (use_gpu or CUDA missing): the run targets the CPU",
}
_SCALER_NOTES = {
    True: "fp16 gradients can underflow, so losses are scaled before backward",
    False: "no loss scaling",
}


def _rule_reason(use_amp, cuda_available, use_gpu) -> str:
    if use_amp is None:
        return "use_amp is None: the requested value passes through unchanged"
    missing = [name for name, ok in (("use_amp", use_amp), ("CUDA", cuda_available), ("use_gpu", use_gpu)) if not ok]
    if not missing:
        return "use_amp, CUDA and use_gpu all hold, so fp16 AMP"
    return f"{' and '.join(missing)} not set, so full precision"


def _alias_reason(given, lightning_precision: str) -> str:
    if given is None:
        return "no precision given: Lightning's default"
    if given == lightning_precision:
        return "already one of Lightning's precision values"
    return f"Lightning normalises {given!r} to {lightning_precision!r}"


def _fallback_reason(resolution: PrecisionResolution) -> str:
    if resolution.fallback:
        return f"Lightning replaces {resolution.lightning_precision!r} on {resolution.accelerator}"
    return "Lightning keeps it"


def _autocast_reason(autocast_dtype, weights_dtype) -> str:
    if autocast_dtype is None:
        return f"no autocast: every op runs in {weights_dtype}"
    return f"ops that autocast allows run in {autocast_dtype}, weights stay {weights_dtype}"


@contextlib.contextmanager
def _captured_lightning_output() -> Iterator[tuple[list, list[str]]]:
    """Collect warnings and Lightning's rank-zero info lines (this thread's only), keeping them off the console."""
    from lightning_fabric.utilities.rank_zero import rank_zero_module

    logger = rank_zero_module.log  # the logger rank_zero_info writes to
    thread = threading.get_ident()
    info: list[str] = []

    def capture(record) -> bool:
        if record.thread != thread:
            return True
        info.append(record.getMessage())
        return False

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        logger.addFilter(capture)
        try:
            yield caught, info
        finally:
            logger.removeFilter(capture)


@contextlib.contextmanager
def _simulated_cuda() -> Iterator[None]:
    """Make Lightning believe one CUDA device exists: the accelerator's availability check, and the device count
    that ``_parse_gpu_ids`` validates ``devices=1`` against. Torch itself is left alone."""
    from unittest import mock

    from lightning_fabric.accelerators import cuda as fabric_cuda
    from pytorch_lightning.accelerators.cuda import CUDAAccelerator

    with mock.patch.object(CUDAAccelerator, "is_available", staticmethod(lambda: True)):
        with mock.patch.object(fabric_cuda, "num_cuda_devices", lambda: 1):
            yield


def _connect(precision, accelerator: str, simulate_cuda: bool = False) -> dict[str, Any]:
    """Build the Trainer's accelerator connector and read what it decided about precision."""
    import torch
    from pytorch_lightning.trainer.connectors.accelerator_connector import _AcceleratorConnector

    simulation = _simulated_cuda() if simulate_cuda else contextlib.nullcontext()
    with _LIGHTNING_LOCK, _captured_lightning_output() as (caught, info), simulation:
        try:
            plugin = _AcceleratorConnector(accelerator=accelerator, precision=precision, devices=1).precision_plugin
            error = None
        except Exception as err:  # noqa: BLE001 - any Lightning error is part of the answer
            plugin, error = None, f"{type(err).__name__}: {err}"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # probing autocast is our doing, not Lightning's
            autocast = getattr(plugin, "autocast_context_manager", None)
            autocast_dtype = str(autocast().fast_dtype) if autocast else None
            weights_dtype = str(plugin.convert_module(torch.nn.Linear(1, 1)).weight.dtype) if plugin else None
    artifacts = _SIMULATION_ARTIFACTS if simulate_cuda else ()
    return {
        "final_precision": getattr(plugin, "precision", None),
        "plugin": type(plugin).__name__ if plugin else None,
        "autocast_dtype": autocast_dtype,
        "weights_dtype": weights_dtype,
        "grad_scaler": getattr(plugin, "scaler", None) is not None,
        "warnings": tuple(str(w.message) for w in caught if not any(a in str(w.message) for a in artifacts)),
        "info": tuple(info),
        "error": error,
    }


@functools.lru_cache(maxsize=None, typed=True)
def _ask_lightning(precision, accelerator: str) -> dict[str, Any]:
    """Lightning's answer for one (precision, accelerator), read-only. Hardware does not change within a process,
    and the project's rule only ever hands Lightning a few values, so this cache stays small."""
    from pytorch_lightning.accelerators.cuda import CUDAAccelerator

    lightning_precision = normalize_precision(precision)
    here = _connect(precision, accelerator)
    if accelerator == "cuda" and not CUDAAccelerator.is_available():
        on_cuda = _connect(precision, accelerator, simulate_cuda=True)
        return {"lightning_precision": lightning_precision, **on_cuda, "simulated": True, "local_error": here["error"]}
    return {"lightning_precision": lightning_precision, **here, "simulated": False, "local_error": None}


@functools.lru_cache(maxsize=None, typed=True)
def _resolve(requested, use_amp: bool | None, cuda_available: bool, use_gpu: bool) -> PrecisionResolution:
    rule_precision = compute_effective_precision(requested, use_amp, cuda_available, use_gpu)
    accelerator = "cuda" if use_gpu and cuda_available else "cpu"
    return PrecisionResolution(
        requested=requested,
        use_amp=use_amp,
        cuda_available=cuda_available,
        use_gpu=use_gpu,
        rule_precision=rule_precision,
        accelerator=accelerator,
        **_ask_lightning(rule_precision, accelerator),
    )


def clear_cache() -> None:
    """Forget Lightning's answers, so the next resolution asks it again (a cold start, as in a new server)."""
    _resolve.cache_clear()
    _ask_lightning.cache_clear()


def resolve_precision(requested, use_amp=None, cuda_available=False, use_gpu=False) -> PrecisionResolution:
    """Explain the precision a run gets: the project's rule, then what Lightning does with its output.

    ``requested`` must be a value Lightning accepts (or None) even when the rule ignores it; otherwise
    :class:`InvalidPrecisionError`. ``use_amp`` is None/True/False (other values count by truthiness, as in the rule).
    """
    normalize_precision(requested)  # reject bad input before it reaches the cache (and unhashables with it)
    use_amp = None if use_amp is None else bool(use_amp)
    return _resolve(requested, use_amp, bool(cuda_available), bool(use_gpu))


def truth_table(requested_values: Iterable | None = None) -> list[PrecisionResolution]:
    """One resolution per (requested, use_amp, cuda_available, use_gpu); by default every value Lightning takes."""
    requested_values = requested_precision_values() if requested_values is None else tuple(requested_values)
    combinations = itertools.product(requested_values, (None, True, False), (True, False), (True, False))
    return [resolve_precision(*combination) for combination in combinations]


_TABLE_COLUMNS = (
    ("requested", lambda r: repr(r.requested)),
    ("use_amp", lambda r: str(r.use_amp)),
    ("cuda", lambda r: str(r.cuda_available)),
    ("gpu", lambda r: str(r.use_gpu)),
    ("rule", lambda r: repr(r.rule_precision)),
    ("accelerator", lambda r: r.accelerator + ("*" if r.simulated else "")),
    ("lightning", lambda r: r.lightning_precision),
    ("final", lambda r: str(r.final_precision)),
    ("plugin", lambda r: str(r.plugin)),
    ("autocast", lambda r: str(r.autocast_dtype)),
    ("weights", lambda r: str(r.weights_dtype)),
    ("scaler", lambda r: "yes" if r.grad_scaler else "no"),
    ("error", lambda r: (r.error or "")[:60]),
)


def format_table(rows: Iterable[PrecisionResolution]) -> str:
    """Plain-text truth table; ``*`` marks answers asked of Lightning with CUDA simulated."""
    cells = [[name for name, _ in _TABLE_COLUMNS]] + [[cell(row) for _, cell in _TABLE_COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(_TABLE_COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in cells)


_CLI_BOOLS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
_CLI_USE_AMP = {**_CLI_BOOLS, "none": None}


def _cli_choice(table: dict) -> Any:
    def parse(text: str):
        if text.lower() not in table:
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(table)}, got {text!r}")
        return table[text.lower()]

    return parse


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    parser = _OneLineParser(prog="python -m amp_core.precision", description=__doc__.split("\n\n")[0])
    parser.add_argument("--precision", help="requested Trainer precision, e.g. 16-mixed, bf16, 32")
    parser.add_argument("--use-amp", type=_cli_choice(_CLI_USE_AMP), default=None, help="none, true or false")
    parser.add_argument("--cuda-available", type=_cli_choice(_CLI_BOOLS), default=None, help="default: this machine")
    parser.add_argument("--use-gpu", type=_cli_choice(_CLI_BOOLS), default=None, help="default: --cuda-available")
    parser.add_argument("--table", action="store_true", help="print the truth table over every combination")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.add_argument(
        "--with-values", action="store_true", help="with --table --json: {values: Lightning's strings, rows: [...]}"
    )
    args = parser.parse_args(argv)
    if args.table == (args.precision is not None):
        parser.error("give either --precision or --table")
    if args.with_values and not (args.table and args.json):
        parser.error("--with-values goes with --table --json")

    try:
        if args.table:
            rows = truth_table()
            table = [row.as_dict() for row in rows]
            if args.with_values:  # everything the app's Precision page shows, from one process
                table = {"values": lightning_precision_values(), "rows": table}
            print(json.dumps(table, indent=1) if args.json else format_table(rows))
            return 0
        if args.cuda_available is None:
            import torch

            args.cuda_available = torch.cuda.is_available()
        use_gpu = args.cuda_available if args.use_gpu is None else args.use_gpu
        resolution = resolve_precision(args.precision, args.use_amp, args.cuda_available, use_gpu)
    except InvalidPrecisionError as err:
        parser.error(str(err))
    print(json.dumps(resolution.as_dict(), indent=1) if args.json else resolution)
    return 0


if __name__ == "__main__":
    sys.exit(main())
