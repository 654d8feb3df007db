"""The promise at the process level: how much resident memory a run really adds.

tracemalloc (the runner's measured peak) sees what Python and NumPy allocate; a deployer sees
the process's resident set. `ResidentPeak` measures the second: the peak resident set size
(VmHWM) over a stretch of work, as growth over the resident size just before it (VmRSS), with
the high-water mark restarted at the start through ``/proc/self/clear_refs`` (Linux). Where the
mark cannot restart (no /proc, or clear_refs not writable) the growth is only known when the
process has not been higher before; otherwise it is None, never a guess.

The footprint a run promises (`footprint_of`) is the memory model's peak plus the runtime's
allowance: what the process adds that no model of the program can see, measured and stated
here.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType

__all__ = ["BLAS_THREAD_BUFFER_BYTES", "RUNTIME_ALLOWANCE_BYTES", "ResidentPeak",
           "footprint_of", "resident_bytes"]

MiB = 2**20
#: What the process adds beyond the memory model's peak on one thread, whatever the network:
#: the BLAS's packing buffer as the GEMMs touch it (about 5 MiB for OpenBLAS), tracemalloc's
#: own tables while the first run is traced (about 7 MiB), malloc's slack and interpreter
#: objects. Measured in fresh `convplan run` processes: 5.1 MiB (VGG-16) to 12.8 MiB
#: (GoogLeNet) over the built-in and light models (tests/selector/test_resident.py).
RUNTIME_ALLOWANCE_BYTES = 16 * MiB
#: What each BLAS thread beyond the first adds: its own packing buffer, touched as the GEMMs
#: grow (measured at 2 threads: 1.1 MiB on SqueezeNet to 3.6 MiB on ResNet-50).
BLAS_THREAD_BUFFER_BYTES = 8 * MiB

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def footprint_of(predicted_peak_bytes: int, threads: int) -> int:
    """The whole footprint a run promises: the memory model's peak (weights, arena, inputs,
    the executor's tables) plus the runtime allowance for ``threads`` BLAS threads."""
    return (predicted_peak_bytes + RUNTIME_ALLOWANCE_BYTES
            + BLAS_THREAD_BUFFER_BYTES * max(0, threads - 1))


def resident_bytes() -> dict[str, int] | None:
    """The process's resident size now (``VmRSS``) and its high-water mark (``VmHWM``), in
    bytes; None where /proc does not tell."""
    try:
        text = _STATUS.read_text()
    except OSError:
        return None
    found = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) * 1024
    return found if len(found) == 2 else None


def _restart_high_water_mark() -> bool:
    """Restart VmHWM at the current resident size (clear_refs' "5"); whether it did."""
    if not os.access(_CLEAR_REFS, os.W_OK):
        return False
    try:
        with _CLEAR_REFS.open("w") as f:
            f.write("5")
    except OSError:
        return False
    return True


class ResidentPeak:
    """``with ResidentPeak() as peak: work()`` then ``peak.growth_bytes``: the most resident
    memory the work added at any moment (its peak RSS over the RSS before it), or None where
    that cannot be known. ``baseline_bytes``: the RSS it grew from."""

    def __init__(self) -> None:
        self.baseline_bytes: int | None = None
        self.growth_bytes: int | None = None
        self._valid = False

    def __enter__(self) -> ResidentPeak:
        restarted = _restart_high_water_mark()
        now = resident_bytes()
        if now is not None:
            self.baseline_bytes = now["VmRSS"]
            # without a restart the mark is only this work's if the process never stood higher
            self._valid = restarted or now["VmHWM"] <= now["VmRSS"]
        return self

    def stop(self) -> int | None:
        """End the measurement here (later work, such as a check against a reference engine,
        is not this run's) and give the growth; stopping twice keeps the first reading."""
        if self._valid:
            self._valid = False
            now = resident_bytes()
            if now is not None and self.baseline_bytes is not None:
                self.growth_bytes = max(0, now["VmHWM"] - self.baseline_bytes)
        return self.growth_bytes

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.stop()
