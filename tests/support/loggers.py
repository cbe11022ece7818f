"""A real Lightning logger that keeps what it is given in memory: the tests' capture, the benchmarks' bare side."""

from __future__ import annotations

from pytorch_lightning.loggers.logger import Logger


class MemoryLogger(Logger):
    """Keeps every `log_metrics` call in `calls`; with `keep=False` it drops them (a bare run needs a logger too)."""

    def __init__(self, keep: bool = True):
        super().__init__()
        self.keep = keep
        self.calls: list[tuple[int | None, dict]] = []

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> str:
        return "0"

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        if self.keep:
            self.calls.append((step, dict(metrics)))

    def monitor_records(self) -> list[tuple[int, dict]]:
        """The calls that came from `LossScaleMonitor` (they carry `amp/loss`)."""
        return [(step, m) for step, m in self.calls if "amp/loss" in m]
