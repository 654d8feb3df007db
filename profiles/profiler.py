"""The profiler: the cost of every request on this machine, measured once and then remembered.

It reads what the store already holds for this machine's fingerprint, measures only the rest
(under the requested BLAS thread count) and commits them in small batches, so an interrupted run
keeps what it finished and the next run resumes where it stopped. Without permission to measure
it fills the gaps with the analytic model instead, and never stores those estimates.

Measuring is bounded for real: a profiler given a total budget (``total_budget_s``), or running
under a `measuring_deadline` (a service request's or a batch network's deadline), stops
measuring once it is spent and estimates what is left, so it overruns by at most one
measurement, itself given no more than the time left.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from convplan.kernels import blas

from .fingerprint import fingerprint_id, machine_fingerprint
from .measurement import Measurement
from .requests import CostRequest
from .store import CostKey, CostStore

#: Measurements per committed transaction: small enough that an interruption loses little.
BATCH_SIZE = 8

Progress = Callable[[int, int, CostRequest], None]

#: The `time.monotonic` instant after which no profiler in this process starts a measurement
#: (None: no deadline); set by `measuring_deadline`.
_deadline: float | None = None
#: The shortest timing budget a measurement is given when little time is left.
MIN_BUDGET_S = 0.001


@contextlib.contextmanager
def measuring_deadline(deadline: float | None) -> Iterator[None]:
    """Within the block, every `Profiler.costs` of this process stops measuring at
    ``deadline`` (a `time.monotonic` instant; None: no change) and estimates the rest."""
    global _deadline
    saved = _deadline
    if deadline is not None:
        _deadline = deadline if saved is None else min(saved, deadline)
    try:
        yield
    finally:
        _deadline = saved


@dataclass(frozen=True)
class ProfileStats:
    """What the last `Profiler.costs` call did."""

    requested: int   # distinct requests
    cached: int      # found in the store (or in memory)
    measured: int    # measured now
    estimated: int   # filled in by the analytic model
    seconds: float
    unmeasured: int = 0     # estimated because the budget or the deadline was spent


def request_key(request: CostRequest) -> CostKey:
    return (request.kind, request.key, request.candidate)


class Profiler:
    """Costs of requests on this machine under ``threads`` BLAS threads, kept in ``store``
    (None: in memory only, for this profiler's lifetime). ``budget_s`` is the timing budget of
    one measurement; ``total_budget_s`` (None: none) bounds one `costs` call's measuring."""

    def __init__(self, store: CostStore | None, threads: int, budget_s: float = 0.5, *,
                 batch_size: int = BATCH_SIZE, total_budget_s: float | None = None) -> None:
        if budget_s <= 0:
            raise ValueError(f"the time budget must be positive, got {budget_s}")
        if total_budget_s is not None and not total_budget_s > 0:
            raise ValueError(f"the total budget must be positive, got {total_budget_s}")
        self.total_budget_s = total_budget_s
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.store = store
        self.threads = threads
        self.budget_s = budget_s
        self.batch_size = batch_size
        self.fingerprint: dict[str, Any] = machine_fingerprint(threads)
        self.fingerprint_id = fingerprint_id(self.fingerprint)
        self.last_stats: ProfileStats | None = None
        self._memory: dict[CostKey, Measurement] = {}

    def _known(self, keys: Sequence[CostKey]) -> dict[CostKey, Measurement]:
        if self.store is None:
            return {k: self._memory[k] for k in keys if k in self._memory}
        return self.store.get_many(self.fingerprint_id, keys)

    def _save(self, batch: list[tuple[CostKey, Measurement]]) -> None:
        if self.store is None:
            self._memory.update(batch)
        else:
            self.store.put_many(self.fingerprint, [(*k, m) for k, m in batch])
        batch.clear()

    def costs(self, requests: Iterable[CostRequest], *, measure_missing: bool = True,
              progress: Progress | None = None) -> dict[CostKey, Measurement]:
        """The cost of every request, by (kind, key, candidate).

        Known costs come from the store; missing ones are measured (``measure_missing``) and
        committed every `batch_size` measurements, or else estimated (source "analytic", not
        stored). ``progress(done, total, request)`` follows each measurement; ``total`` counts
        the ones to measure. Once the total budget or the process's `measuring_deadline` is
        spent, what is left is estimated too (counted in ``unmeasured``). An exception
        (KeyboardInterrupt included) still commits every measurement finished before it.
        """
        started = time.perf_counter()
        stop_at = _deadline
        if self.total_budget_s is not None:
            own = time.monotonic() + self.total_budget_s
            stop_at = own if stop_at is None else min(stop_at, own)
        unique: dict[CostKey, CostRequest] = {}
        for request in requests:
            unique.setdefault(request_key(request), request)
        result = self._known(list(unique))
        cached = len(result)
        missing = [r for k, r in unique.items() if k not in result]
        measured = estimated = unmeasured = 0
        if not measure_missing:
            for request in missing:
                result[request_key(request)] = request.estimate(self.threads)
            estimated = len(missing)
        elif missing:
            batch: list[tuple[CostKey, Measurement]] = []
            try:
                with blas.threads(self.threads):
                    for done, request in enumerate(missing, 1):
                        budget = self.budget_s
                        if stop_at is not None:
                            left = stop_at - time.monotonic()
                            if left <= 0:   # spent: estimate the rest, store nothing of it
                                rest = missing[done - 1:]
                                for other in rest:
                                    result[request_key(other)] = other.estimate(self.threads)
                                unmeasured = len(rest)
                                break
                            budget = max(MIN_BUDGET_S, min(budget, left))
                        m = request.measure(budget)
                        result[request_key(request)] = m
                        batch.append((request_key(request), m))
                        measured = done
                        if len(batch) >= self.batch_size:
                            self._save(batch)
                        if progress is not None:
                            progress(done, len(missing), request)
            except BaseException:
                if batch:  # finished measurements are good: keep them, then re-raise
                    with contextlib.suppress(Exception):  # the original error matters more
                        self._save(batch)
                raise
            if batch:
                self._save(batch)
        self.last_stats = ProfileStats(len(unique), cached, measured, estimated + unmeasured,
                                       time.perf_counter() - started, unmeasured)
        return result

