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
import functools
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from convplan.kernels import blas

from .fingerprint import fingerprint_id, machine_fingerprint
from .lock import lock_path, measuring_lock
from .measurement import Measurement
from .requests import CostRequest, measure_together
from .store import CostKey, CostStore, StoreError

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
    #: Of the measured: taken under load (`Measurement.under_load`), and noisy even after
    #: their re-timing (`Measurement.noisy`).
    loaded: int = 0
    noisy: int = 0
    #: Stored costs measured again because ``remeasure`` asked for it.
    remeasured: int = 0


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

    def budget_now(self, requests: int = 1) -> float | None:
        """The timing budget of ``requests`` measurements started now (timed together):
        ``budget_s`` each, cut to the time left before the deadline (never below
        `MIN_BUDGET_S`); None once the deadline is spent."""
        budget = self.budget_s * max(1, requests)
        if self.deadline is None:
            return budget
        left = self.deadline - time.monotonic()
        return None if left <= 0 else max(MIN_BUDGET_S, min(budget, left))


class MeasuringBackend(Protocol):
    """How a `Profiler` has the costs its store lacks measured."""

    def measure(self, requests: Sequence[CostRequest], job: MeasuringJob
                ) -> Generator[MeasuredBatch, None, None]:
        """Measure ``requests`` (distinct, none stored) as ``job`` says, yielding the measured
        ``(key, Measurement)`` pairs in batches as they are done; the profiler commits them and
        estimates what was not yielded. Called once per `Profiler.costs` that may measure, even
        with no requests (a backend may report on itself then, a cluster on its workers)."""
        ...


def layers(requests: Sequence[CostRequest]) -> list[list[CostRequest]]:
    """``requests`` grouped by what they are a cost of, ``(kind, key)`` (the candidates of one
    layer), in the order each group first appears."""
    groups: dict[tuple[str, str], list[CostRequest]] = {}
    for request in requests:
        groups.setdefault((request.kind, request.key), []).append(request)
    return list(groups.values())


class InProcess:
    """The default backend: measure here, one layer's candidates at a time, timed interleaved
    (`measure_together`) within their budgets together, each yielded alone."""

    def measure(self, requests: Sequence[CostRequest], job: MeasuringJob
                ) -> Generator[MeasuredBatch, None, None]:
        if not requests:
            return
        with blas.threads(job.threads):
            for group in layers(requests):
                budget = job.budget_now(len(group))
                if budget is None:      # spent: the profiler estimates the rest
                    return
                measured = measure_together(group, budget,
                                            functools.partial(job.budget_now, len(group)))
                for request, measurement in zip(group, measured, strict=True):
                    yield [(request_key(request), measurement)]


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

    @contextlib.contextmanager
    def _measuring(self, job: MeasuringJob, needed: bool) -> Iterator[bool]:
        """The store's measuring lock (`lock.measuring_lock`) while ``needed``: whether it is
        held (False: the job's deadline came first). Without a store there is nothing to
        share, so nothing to lock."""
        if not needed or self.store is None:
            yield True
            return
        try:
            lock = measuring_lock(self.store.path, job.deadline)
            with lock as held:
                yield held
        except OSError as error:
            raise StoreError(self.store.path, f"cannot take the measuring lock "
                                              f"{lock_path(self.store.path)}: "
                                              f"{error.strerror}") from None

    def costs(self, requests: Iterable[CostRequest], *, measure_missing: bool = True,
              progress: Progress | None = None,
              remeasure: Callable[[Measurement], bool] | None = None
              ) -> dict[CostKey, Measurement]:
        """The cost of every request, by (kind, key, candidate).

        Known costs come from the store; missing ones are measured by the backend
        (``measure_missing``) and committed every `batch_size` measurements, or else estimated
        (source "analytic", not stored). ``progress(done, total, request)`` follows each batch
        the backend measures; ``total`` counts the ones to measure. Once the total budget or
        the process's `measuring_deadline` is spent, what is left is estimated too, as is what
        the backend could not measure (both counted in ``unmeasured``). An exception
        (KeyboardInterrupt included) still commits every measurement finished before it.

        A stored cost for which ``remeasure(measurement)`` is true (`Measurement.flagged`, say)
        counts as missing: measured again, it replaces the stored one (or, not measured, the
        stored one is kept). Measuring holds the store's measuring lock, so no two processes
        measure on this machine at once; what another process measured while this one waited
        for the lock is read, not measured again. Waiting ends at the deadline: then nothing
        is measured.
        """
        started, job = time.perf_counter(), self._job()
        unique: dict[CostKey, CostRequest] = {}
        for request in requests:
            unique.setdefault(request_key(request), request)

        def kept(found: dict[CostKey, Measurement]) -> dict[CostKey, Measurement]:
            return {k: m for k, m in found.items() if remeasure is None or not remeasure(m)}

        stored = self._known(list(unique))
        result = kept(stored)
        redo = {k: m for k, m in stored.items() if k not in result}
        missing = {k: r for k, r in unique.items() if k not in result}
        measured = 0
        if measure_missing:
            with self._measuring(job, bool(missing)) as held:
                if held:
                    if missing and self.store is not None:   # measured while we waited
                        result.update(kept(self._known(list(missing))))
                        missing = {k: r for k, r in missing.items() if k not in result}
                    measured = self._measure(missing, job, result, progress)
        done = {k: result[k] for k in missing if k in result}     # measured now
        for key, old in redo.items():       # not measured again: the stored one stands
            result.setdefault(key, old)
        left = [r for k, r in missing.items() if k not in result]
        for request in left:
            result[request_key(request)] = request.estimate(self.threads)
        self.last_stats = ProfileStats(
            len(unique), len(unique) - len(done) - len(left), measured, len(left),
            time.perf_counter() - started, len(left) if measure_missing else 0,
            sum(m.under_load for m in done.values()), sum(m.noisy for m in done.values()),
            sum(k in redo for k in done))
        return result
