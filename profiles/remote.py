"""Measuring on other processes or machines (Dask workers), without mixing machines up.

A measurement is only worth storing under this machine's fingerprint if it was taken on a machine
with the very same fingerprint (CPU, cores, BLAS build and kernels, threads, versions). So the
driver asks every worker for its fingerprint first, refuses the ones that differ (saying which
facts differ), sends chunks of requests only to the matching ones, and every chunk re-checks the
fingerprint where it runs before it measures anything. The measurements travel back as plain data
and the driver stores them, in its own cost store, one transaction per chunk.

Nothing here imports Dask: these are the plain functions a worker runs and the comparison the
driver makes; the driver lives in `api.batch`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .fingerprint import machine_fingerprint
from .measurement import Measurement
from .profiler import Profiler, request_key
from .requests import CostRequest
from .store import CostKey


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
    profiler = Profiler(None, threads, budget_s)
    differences = fingerprint_differences(expected, profiler.fingerprint)
    if differences:
        return ChunkResult(profiler.fingerprint_id, refused=differences)
    found = profiler.costs(requests)
    stats = profiler.last_stats
    return ChunkResult(profiler.fingerprint_id,
                       [(request_key(r), found[request_key(r)]) for r in requests],
                       seconds=stats.seconds if stats is not None else 0.0)

