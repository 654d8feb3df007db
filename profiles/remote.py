"""Measuring on other processes or machines (Dask workers), without mixing machines up.

A measurement is only worth storing under this machine's fingerprint if it was taken on a machine
with the very same fingerprint (CPU, cores, BLAS build and kernels, threads, versions). So
`DaskBackend`, a `Profiler` backend, asks every worker for its fingerprint first, refuses the
ones that differ (saying which facts differ), sends chunks of requests only to the matching ones,
and every chunk re-checks the fingerprint where it runs before it measures anything
(`measure_chunk`). The measurements travel back as plain data, chunk by chunk as they finish,
and the profiler stores them in its own cost store under its own fingerprint.

Dask is imported only inside `DaskBackend` and the function a worker runs; the rest are the plain
functions a worker runs and the comparison the driver makes.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .fingerprint import fingerprint_id, machine_fingerprint
from .measurement import Measurement
from .profiler import InProcess, MeasuredBatch, MeasuringJob
from .requests import CostRequest
from .store import CostKey

if TYPE_CHECKING:
    from distributed import Client

#: Requests per task on a cluster: the unit of load balancing, and of one store transaction.
CHUNK_SIZE = 8


def _flatten(fp: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in fp.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def fingerprint_differences(here: Mapping[str, Any], there: Mapping[str, Any]) -> list[str]:
    """Why a worker's fingerprint ``there`` is not this machine's ``here``: one line per
    differing fact (``blas.corename: 'Katmai' on the worker, 'SkylakeX' here``); empty when they
    are the same machine as far as measurements go."""
    a, b = _flatten(here), _flatten(there)
    missing = object()
    lines = []
    for name in sorted(a.keys() | b.keys()):
        mine, theirs = a.get(name, missing), b.get(name, missing)
        if mine != theirs:
            lines.append(f"{name}: {'(absent)' if theirs is missing else repr(theirs)} on the "
                         f"worker, {'(absent)' if mine is missing else repr(mine)} here")
    return lines


def worker_fingerprint(threads: int) -> dict[str, Any]:
    """What a worker runs first: its own fingerprint under ``threads`` BLAS threads."""
    return machine_fingerprint(threads)


@dataclass
class ChunkResult:
    """What a worker sends back for one chunk: its fingerprint, and either the measurements or
    the reason it refused to measure."""

    fingerprint_id: str
    measurements: list[tuple[CostKey, Measurement]] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    seconds: float = 0.0


def measure_chunk(requests: Sequence[CostRequest], threads: int, budget_s: float,
                  expected: Mapping[str, Any]) -> ChunkResult:
    """Measure ``requests`` here (a worker) under ``threads`` BLAS threads, if and only if this
    machine's fingerprint is ``expected`` (the driver's); nothing is stored here: the driver
    stores what comes back under its own fingerprint."""
    started = time.perf_counter()
    here = machine_fingerprint(threads)
    differences = fingerprint_differences(expected, here)
    if differences:
        return ChunkResult(fingerprint_id(here), refused=differences)
    job = MeasuringJob(threads, budget_s, here)
    measured = [pair for batch in InProcess().measure(requests, job) for pair in batch]
    return ChunkResult(fingerprint_id(here), measured, seconds=time.perf_counter() - started)


def measure_on_worker(requests: list[CostRequest], threads: int, budget_s: float,
                      expected: dict[str, Any]) -> tuple[str, ChunkResult]:
    """`measure_chunk` on a Dask worker, saying which worker it was."""
    from distributed import get_worker

    return get_worker().address, measure_chunk(requests, threads, budget_s, expected)


@dataclass
class WorkerReport:
    """One worker of a distributed profile: used, or refused and why."""

    address: str
    fingerprint_id: str | None
    accepted: bool
    reasons: list[str] = field(default_factory=list)
    measured: int = 0


def check_workers(client: Client, here: Mapping[str, Any], threads: int) -> list[WorkerReport]:
    """Every worker's fingerprint under ``threads``, compared with this machine's ``here``."""
    found = client.run(worker_fingerprint, threads, on_error="return")
    reports = []
    for address, fp in sorted(found.items()):
        if isinstance(fp, BaseException):
            reports.append(WorkerReport(address, None, False,
                                        [f"cannot compute its fingerprint: {fp}"]))
            continue
        reasons = fingerprint_differences(here, fp)
        reports.append(WorkerReport(address, fingerprint_id(fp), not reasons, reasons))
    return reports


class DaskBackend:
    """A `Profiler` backend measuring on the workers of a Dask ``client`` whose fingerprint is
    the profiler's, ``chunk_size`` requests per task. After each `measure`, ``workers`` says
    which workers were used (and how much each measured) or refused and why, and ``failures``
    which chunks were not measured and why (the profiler estimates those)."""

    def __init__(self, client: Client, chunk_size: int = CHUNK_SIZE) -> None:
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.client = client
        self.chunk_size = chunk_size
        self.workers: list[WorkerReport] = []
        self.failures: list[str] = []

    @property
    def accepted(self) -> list[WorkerReport]:
        return [w for w in self.workers if w.accepted]

    def measure(self, requests: Sequence[CostRequest], job: MeasuringJob
                ) -> Generator[MeasuredBatch, None, None]:
        """Check the workers, then yield each chunk's measurements as it comes back. A chunk
        that fails (a lost worker) or is refused where it runs (its worker changed since the
        check) is recorded and the others still count; at ``job.deadline`` the chunks not back
        yet are cancelled."""
        from distributed import as_completed

        self.failures = []
        self.workers = check_workers(self.client, job.fingerprint, job.threads)
        by_address = {w.address: w for w in self.workers}
        accepted = [w.address for w in self.accepted]
        if not requests or job.budget_now() is None:
            return
        if not accepted:
            self.failures.append(f"{len(requests)} cost(s) not measured: no worker matches "
                                 "this machine's fingerprint")
            return
        chunks = [list(requests[i:i + self.chunk_size])
                  for i in range(0, len(requests), self.chunk_size)]
        run = uuid.uuid4().hex[:8]
        futures = {self.client.submit(measure_on_worker, chunk, job.threads, job.budget_s,
                                      dict(job.fingerprint), workers=accepted,
                                      allow_other_workers=False, pure=False,
                                      key=f"convplan-profile-{i}-{run}"): chunk
                   for i, chunk in enumerate(chunks)}
        wait_s = None if job.deadline is None else max(0.0, job.deadline - time.monotonic())
        try:
            for future in as_completed(list(futures), timeout=wait_s):
                chunk = futures[future]
                try:
                    address, done = future.result()
                except Exception as error:      # the other chunks still count
                    self.failures.append(f"{len(chunk)} cost(s) not measured: "
                                         f"{type(error).__name__}: {error}")
                    continue
                if done.refused:    # its fingerprint changed since the check
                    worker = by_address.setdefault(address, WorkerReport(address, None, False))
                    worker.accepted, worker.reasons = False, done.refused
                    worker.fingerprint_id = done.fingerprint_id
                    self.failures.append(f"{len(chunk)} cost(s) not measured: {address} no "
                                         "longer matches this machine")
                    continue
                by_address[address].measured += len(done.measurements)
                yield done.measurements
        except TimeoutError:        # the deadline: the profiler estimates the rest
            pass
        finally:
            self.client.cancel([f for f in futures if not f.done()])
            self.workers = sorted(by_address.values(), key=lambda w: w.address)
