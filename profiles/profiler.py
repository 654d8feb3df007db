"""The profiler: the cost of every request on this machine, measured once and then remembered.

It reads what the store already holds for this machine's fingerprint, has the rest measured
(under the requested BLAS thread count) and commits them in small batches, so an interrupted run
keeps what it finished and the next run resumes where it stopped. Without permission to measure
it fills the gaps with the analytic model instead, and never stores those estimates.

*How* the missing costs are measured is the profiler's backend: `InProcess` (the default)
measures them here, one after another; `convplan.profiles.remote.DaskBackend` on the Dask
workers that are this machine. Either way the profiler keeps the rest: dedupe, the store, the
deadline and the commits, and it estimates whatever the backend did not measure.

Measuring is bounded for real: a profiler given a total budget (``total_budget_s``), or running
under a `measuring_deadline` (a service request's or a batch network's deadline), stops
measuring once it is spent and estimates what is left, so it overruns by at most one
measurement, itself given no more than the time left.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from convplan.kernels import blas

from .fingerprint import fingerprint_id, machine_fingerprint
from .measurement import Measurement
from .requests import CostRequest
from .store import CostKey, CostStore

#: Measurements per committed transaction: small enough that an interruption loses little.
BATCH_SIZE = 8

Progress = Callable[[int, int, CostRequest], None]
#: Measured costs, as a backend hands them to the profiler.
MeasuredBatch = list[tuple[CostKey, Measurement]]

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
    #: Estimated because the budget or the deadline was spent, or the backend could not
    #: measure them (a cluster's failed chunk).
    unmeasured: int = 0


def request_key(request: CostRequest) -> CostKey:
    return (request.kind, request.key, request.candidate)


@dataclass(frozen=True)
class MeasuringJob:
    """What a backend is asked to honour: measure under ``threads`` BLAS threads, each request
    within ``budget_s``, on a machine whose fingerprint is ``fingerprint`` (the profiler's),
    starting nothing after ``deadline`` (a `time.monotonic` instant; None: none)."""

    threads: int
    budget_s: float
    fingerprint: Mapping[str, Any]
    deadline: float | None = None

    def budget_now(self) -> float | None:
        """The timing budget of a measurement started now: ``budget_s``, cut to the time left
        before the deadline (never below `MIN_BUDGET_S`); None once the deadline is spent."""
        if self.deadline is None:
            return self.budget_s
        left = self.deadline - time.monotonic()
        return None if left <= 0 else max(MIN_BUDGET_S, min(self.budget_s, left))


class MeasuringBackend(Protocol):
    """How a `Profiler` has the costs its store lacks measured."""

    def measure(self, requests: Sequence[CostRequest], job: MeasuringJob
                ) -> Generator[MeasuredBatch, None, None]:
        """Measure ``requests`` (distinct, none stored) as ``job`` says, yielding the measured
        ``(key, Measurement)`` pairs in batches as they are done; the profiler commits them and
        estimates what was not yielded. Called once per `Profiler.costs` that may measure, even
        with no requests (a backend may report on itself then, a cluster on its workers)."""
        ...


class InProcess:
    """The default backend: measure here, one request after another, each yielded alone."""

    def measure(self, requests: Sequence[CostRequest], job: MeasuringJob
                ) -> Generator[MeasuredBatch, None, None]:
        if not requests:
            return
        with blas.threads(job.threads):
            for request in requests:
                budget = job.budget_now()
                if budget is None:      # spent: the profiler estimates the rest
                    return
                yield [(request_key(request), request.measure(budget))]


class Profiler:
    """Costs of requests on this machine under ``threads`` BLAS threads, kept in ``store``
    (None: in memory only, for this profiler's lifetime). ``budget_s`` is the timing budget of
    one measurement; ``total_budget_s`` (None: none) bounds one `costs` call's measuring;
    ``backend`` (default `InProcess`) measures what is missing."""

    def __init__(self, store: CostStore | None, threads: int, budget_s: float = 0.5, *,
                 batch_size: int = BATCH_SIZE, total_budget_s: float | None = None,
                 backend: MeasuringBackend | None = None) -> None:
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
        self.backend: MeasuringBackend = backend if backend is not None else InProcess()
        self.fingerprint: dict[str, Any] = machine_fingerprint(threads)
        self.fingerprint_id = fingerprint_id(self.fingerprint)
        self.last_stats: ProfileStats | None = None
        self._memory: dict[CostKey, Measurement] = {}

    def _known(self, keys: Sequence[CostKey]) -> dict[CostKey, Measurement]:
        if self.store is None:
            return {k: self._memory[k] for k in keys if k in self._memory}
        return self.store.get_many(self.fingerprint_id, keys)

    def _save(self, batch: MeasuredBatch) -> None:
        if self.store is None:
            self._memory.update(batch)
        else:
            self.store.put_many(self.fingerprint, [(*k, m) for k, m in batch])
        batch.clear()

    def _job(self) -> MeasuringJob:
        """A `costs` call's job, from now: the process's `measuring_deadline`, or the total
        budget's own if sooner."""
        deadline = _deadline
        if self.total_budget_s is not None:
            own = time.monotonic() + self.total_budget_s
            deadline = own if deadline is None else min(deadline, own)
        return MeasuringJob(self.threads, self.budget_s, self.fingerprint, deadline)

    def _measure(self, missing: Mapping[CostKey, CostRequest], job: MeasuringJob,
                 result: dict[CostKey, Measurement], progress: Progress | None) -> int:
        """Have the backend measure ``missing`` into ``result``, committing once `batch_size`
        measurements are waiting (a backend's batch whole); how many were measured."""
        pending: MeasuredBatch = []
        done = 0
        batches = self.backend.measure(list(missing.values()), job)
        try:
            with contextlib.closing(batches):   # a cluster's work is cancelled, too
                for batch in batches:
                    if not batch:
                        continue
                    result.update(batch)
                    pending.extend(batch)
                    done += len(batch)
                    if len(pending) >= self.batch_size:
                        self._save(pending)
                    if progress is not None:
                        progress(done, len(missing), missing[batch[-1][0]])
        except BaseException:
            if pending:  # finished measurements are good: keep them, then re-raise
                with contextlib.suppress(Exception):  # the original error matters more
                    self._save(pending)
            raise
        if pending:
            self._save(pending)
        return done

    def costs(self, requests: Iterable[CostRequest], *, measure_missing: bool = True,
              progress: Progress | None = None) -> dict[CostKey, Measurement]:
        """The cost of every request, by (kind, key, candidate).

        Known costs come from the store; missing ones are measured by the backend
        (``measure_missing``) and committed every `batch_size` measurements, or else estimated
        (source "analytic", not stored). ``progress(done, total, request)`` follows each batch
        the backend measures; ``total`` counts the ones to measure. Once the total budget or
        the process's `measuring_deadline` is spent, what is left is estimated too, as is what
        the backend could not measure (both counted in ``unmeasured``). An exception
        (KeyboardInterrupt included) still commits every measurement finished before it.
        """
        started, job = time.perf_counter(), self._job()
        unique: dict[CostKey, CostRequest] = {}
        for request in requests:
            unique.setdefault(request_key(request), request)
        result = self._known(list(unique))
        cached = len(result)
        missing = {k: r for k, r in unique.items() if k not in result}
        measured = self._measure(missing, job, result, progress) if measure_missing else 0
        left = [r for k, r in missing.items() if k not in result]
        for request in left:
            result[request_key(request)] = request.estimate(self.threads)
        unmeasured = len(left) if measure_missing else 0
        self.last_stats = ProfileStats(len(unique), cached, measured, len(left),
                                       time.perf_counter() - started, unmeasured)
        return result
