"""The memory a run itself uses on the CPU: resident memory it adds over what the process held before.

A process's lifetime peak RSS (`ru_maxrss`) is mostly Python, torch, Lightning and W&B being imported:
hundreds of MiB that are the same for every run, so it cannot tell two runs apart. What a run adds is
its weights, gradients, optimizer state and activations (and whatever fit allocates besides). It is
measured as the peak RSS between `start()` and `stop()` minus the RSS at `start()`, in one of two ways:

- `clear_refs`: writing "5" to /proc/self/clear_refs resets the kernel's high-water mark of the
  process's RSS (VmHWM in /proc/self/status) to its current RSS; VmHWM at `stop()` is then the exact
  peak of the run. Linux only, and a sandbox may refuse the write.
- `sampled`: a thread reads the RSS (/proc/self/statm) every few milliseconds; the peak of those
  samples is a lower bound (a peak shorter than the interval is missed).

Where neither can be read (no /proc), nothing is measured and the record says so. On a GPU the run
records the CUDA allocator's peak besides (torch.cuda.max_memory_allocated); that is the figure a
comparison uses there.

Freed heap memory that the allocator keeps is reused without raising the RSS: a run in a process that
already trained (tests, an in-process worker) can show less than it uses. The app's runs each get a
fresh process. Standard library only.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

CLEAR_REFS = Path("/proc/self/clear_refs")
STATUS = Path("/proc/self/status")
STATM = Path("/proc/self/statm")
RESET_PEAK_RSS = "5"  # clear_refs: "reset the peak resident set size ('high water mark') to the current value"
SAMPLE_EVERY_S = 0.002
# After a reset, VmHWM may already exceed the VmRSS read just before it by what was touched in
# between; more than this means the write was accepted but did not reset the mark.
RESET_SLACK_KIB = 4096
METHODS = {
    "clear_refs": "peak RSS of the run (the kernel's high-water mark, reset through /proc/self/clear_refs) minus the RSS before it",
    "sampled": f"peak of RSS samples taken every {SAMPLE_EVERY_S * 1e3:g} ms during the run minus the RSS before it (a lower bound)",
}


def status_kib(field: str) -> int | None:
    """A `kB` field of /proc/self/status (VmRSS, VmHWM), or None where there is none."""
    try:
        for line in STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _statm_rss_kib() -> int | None:
    """Resident pages from /proc/self/statm (cheaper to read than status: one short line)."""
    try:
        return int(STATM.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except (OSError, ValueError, IndexError):
        return None


def reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark to the current RSS; False where that is not possible."""
    try:
        with open(CLEAR_REFS, "w") as f:
            f.write(RESET_PEAK_RSS)
    except OSError:  # not Linux, no /proc, or a sandbox that forbids it (EACCES, EPERM, EINVAL)
        return False
    rss, hwm = status_kib("VmRSS"), status_kib("VmHWM")
    return rss is not None and hwm is not None and hwm - rss <= RESET_SLACK_KIB


class RunMemory:
    """Measures the RSS one run adds: `start()` before the run's model is built, `stop()` after fit.

    `stop()` returns the fields a run record's status gets; it may be called more than once (the
    first call measures) and stops the sampling thread, so call it in a `finally` as well.
    """

    def __init__(self, method: str = "auto"):
        if method not in ("auto", *METHODS):
            raise ValueError(f"method must be auto or one of {', '.join(METHODS)}, got {method!r}")
        self.requested = method
        self.method: str | None = None
        self.baseline_kib: int | None = None
        self._peak_kib = 0
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._result: dict | None = None

    def start(self) -> RunMemory:
        self.baseline_kib = status_kib("VmRSS")
        if self.baseline_kib is None:
            return self  # nothing to read: stop() says so
        if self.requested in ("auto", "clear_refs") and reset_peak_rss():
            self.method = "clear_refs"
        elif _statm_rss_kib() is not None:
            self.method = "sampled"
            self._peak_kib = self.baseline_kib
            self._thread = threading.Thread(target=self._sample, name="amp-rss-sampler", daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._done.wait(SAMPLE_EVERY_S):
            rss = _statm_rss_kib()
            if rss is not None and rss > self._peak_kib:
                self._peak_kib = rss

    def stop(self) -> dict:
        if self._result is not None:
            return self._result
        self._done.set()
        if self._thread is not None:
            self._thread.join()
        peak = (
            status_kib("VmHWM")
            if self.method == "clear_refs"
            else max(self._peak_kib, _statm_rss_kib() or 0)
            if self.method
            else None
        )
        if peak is None or self.baseline_kib is None:
            self._result = {"run_memory_mib": None, "run_memory_method": None}
        else:
            self._result = {
                "run_memory_mib": max(0, peak - self.baseline_kib) / 1024,
                "run_memory_method": self.method,
                "rss_before_run_mib": self.baseline_kib / 1024,
            }
        return self._result
