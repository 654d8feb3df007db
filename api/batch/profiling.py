"""Profiling on a Dask cluster: the `Profiler` with the `DaskBackend`, and its report.

The measurements are spread over the workers whose machine fingerprint is this machine's (see
`convplan.profiles.remote`) and stored here, under this machine's fingerprint.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from convplan.profiles.profiler import Profiler
from convplan.profiles.remote import CHUNK_SIZE, DaskBackend, WorkerReport

__all__ = ["ClusterProfile", "WorkerReport", "profile_on_cluster"]
from convplan.profiles.requests import CostRequest
from convplan.profiles.store import CostStore

if TYPE_CHECKING:
    from distributed import Client


@dataclass
class ClusterProfile:
    """What `profile_on_cluster` did."""

    fingerprint_id: str
    requested: int
    cached: int
    measured: int
    seconds: float
    workers: list[WorkerReport]
    #: Chunks that could not be measured (a refusal at run time, a lost worker), with the reason.
    failures: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> list[WorkerReport]:
        return [w for w in self.workers if w.accepted]

    def as_dict(self) -> dict[str, Any]:
        return {"workers": [asdict(w) for w in self.workers], "failures": list(self.failures)}


def profile_on_cluster(client: Client, requests: Sequence[CostRequest], store: CostStore,
                       threads: int, budget_s: float,
                       progress: Callable[[int, int, CostRequest], None] | None = None,
                       chunk_size: int = CHUNK_SIZE) -> ClusterProfile:
    """Measure what ``store`` lacks of ``requests`` (for this machine under ``threads``) on the
    workers whose fingerprint equals this machine's, and store it here under this machine's
    fingerprint, one transaction per chunk as chunks come back (an interruption keeps them).
    Workers that differ are refused and measure nothing. ``progress(done, total, request)``
    after each chunk."""
    backend = DaskBackend(client, chunk_size)
    # batch_size=1: every chunk is committed on its own, as it comes
    profiler = Profiler(store, threads, budget_s, batch_size=1, backend=backend)
    profiler.costs(requests, progress=progress)
    stats = profiler.last_stats
    assert stats is not None
    return ClusterProfile(profiler.fingerprint_id, stats.requested, stats.cached, stats.measured,
                          stats.seconds, backend.workers, backend.failures)
