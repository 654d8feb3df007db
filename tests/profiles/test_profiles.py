"""The profiler and its backends, the requests it measures, the analytic fallback and the
machine fingerprint."""

from __future__ import annotations

import multiprocessing
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from convplan.kernels import ConvSpec, operators, registry
from convplan.profiles.fingerprint import fingerprint_id, machine_fingerprint
from convplan.profiles.measurement import Measurement
from convplan.profiles.profiler import (
    MIN_BUDGET_S,
    InProcess,
    MeasuringJob,
    Profiler,
    request_key,
)
from convplan.profiles.requests import ConvRequest, OpRequest, TransformRequest
from convplan.profiles.store import CostStore
from convplan.selector.network import Network
from convplan.selector.planning.candidates import conv_options, requests_for

BUDGET = 0.005
TINY = ConvSpec(n=1, c=4, h=8, w=8, m=4, kh=3, kw=3, padding=1)
MEASURED: list[tuple[str, str]] = []


@dataclass(frozen=True)
class CountedConv(ConvRequest):
    """A ConvRequest that records every real measurement it makes."""

    def measure(self, budget_s: float) -> Measurement:
        MEASURED.append((self.key, self.candidate))
        return super().measure(budget_s)


def conv_requests(spec: ConvSpec) -> list[ConvRequest]:
    """What a plan measures for one convolution: the planner's own enumeration."""
    return [option.request for option in conv_options(spec)]


def counted(spec: ConvSpec) -> list[CountedConv]:
    return [CountedConv(spec, a.name) for a in registry.applicable(spec)]


@pytest.fixture(autouse=True)
def _reset_counter() -> None:
    MEASURED.clear()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CostStore]:
    with CostStore(tmp_path / "costs.sqlite") as s:
        yield s


# -- fingerprint -----------------------------------------------------------------------------
def test_fingerprint_is_stable_and_depends_on_threads() -> None:
    one, again, two = machine_fingerprint(1), machine_fingerprint(1), machine_fingerprint(2)
    assert one == again and fingerprint_id(one) == fingerprint_id(again)
    assert fingerprint_id(one) != fingerprint_id(two)
    assert re.fullmatch(r"[0-9a-f]{16}", fingerprint_id(one))
    assert one["threads"] == 1 and one["logical_cores"] >= 1
    assert set(one["blas"]) == {"name", "version", "corename"}
    assert {"cpu", "convplan", "numpy"} <= set(one)
    # key order does not matter
    assert fingerprint_id(dict(reversed(list(one.items())))) == fingerprint_id(one)
    with pytest.raises(ValueError):
        machine_fingerprint(0)


# -- requests --------------------------------------------------------------------------------
def test_conv_request_names_and_validation() -> None:
    request = ConvRequest(TINY, "im2col")
    assert (request.kind, request.key, request.candidate) == ("conv", TINY.key(), "im2col")
    assert request == ConvRequest(ConvSpec(n=1, c=4, h=8, w=8, m=4, kh=3, kw=3, padding=1),
                                  "im2col")
    assert len({request, ConvRequest(TINY, "im2col")}) == 1
    with pytest.raises(ValueError, match="unknown algorithm"):
        ConvRequest(TINY, "fft")
    with pytest.raises(ValueError, match="does not support"):
        ConvRequest(ConvSpec(n=1, c=4, h=8, w=8, m=4, kh=1, kw=1), "winograd-2x2-3x3")


@pytest.mark.parametrize("spec", [
    TINY,
    ConvSpec(n=1, c=4, h=9, w=9, m=6, kh=3, kw=3, stride=2, padding=1, groups=2),
    ConvSpec(n=2, c=4, h=8, w=8, m=4, kh=3, kw=3, padding=1, groups=4),
    ConvSpec(n=1, c=4, h=8, w=8, m=8, kh=1, kw=1),
], ids=["3x3", "strided-grouped", "depthwise-batch2", "1x1"])
def test_measured_workspace_within_prediction(spec: ConvSpec) -> None:
    costs = Profiler(None, threads=1, budget_s=BUDGET).costs(conv_requests(spec))
    assert len(costs) == len(registry.applicable(spec))
    for (kind, key, name), m in costs.items():
        assert (kind, key, m.source) == ("conv", spec.key(), "measured")
        assert 0 < m.time_s < 1 and m.repeats >= 3 and m.spread >= 0
        assert 0 <= m.workspace_bytes <= registry.get(name).workspace_bytes(spec), name


def test_transform_request() -> None:
    request = TransformRequest((1, 4, 8, 8), "NCHW", "NHWC")
    assert (request.kind, request.key, request.candidate) == (
        "transform", "1x4x8x8_float32", "NCHW->NHWC")
    m = request.measure(BUDGET)
    assert m.source == "measured" and m.workspace_bytes == 4 * 8 * 8 * 4 and m.time_s > 0
    assert request.estimate().workspace_bytes == m.workspace_bytes
    with pytest.raises(ValueError, match="itself"):
        TransformRequest((1, 4, 8, 8), "NHWC", "NHWC")
    with pytest.raises(ValueError, match="4-D"):
        TransformRequest((4, 8, 8), "NCHW", "NHWC")
    with pytest.raises(ValueError, match="unknown layout"):
        TransformRequest((1, 4, 8, 8), "NCHW", "CHWN")  # type: ignore[arg-type]


def test_transform_requests_dedupe_and_skip_other_ranks() -> None:
    """Both transforms of every distinct 4-D shape a plan meets, and none of other ranks."""
    net = _network("t", [{"name": "r", "op": "relu", "inputs": ["x"]},
                         {"name": "pool", "op": "maxpool", "inputs": ["r"], "kernel": 2,
                          "stride": 2},
                         {"name": "flat", "op": "flatten", "inputs": ["pool"]}], channels=4)
    assert net.shapes["r"] == (1, 4, 8, 8) and len(net.shapes["flat"]) == 2
    requests = [r for r in requests_for(net) if r.kind == "transform"]
    assert [(r.shape, r.candidate) for r in requests] == [
        ((1, 4, 8, 8), "NCHW->NHWC"), ((1, 4, 8, 8), "NHWC->NCHW"),
        ((1, 4, 4, 4), "NCHW->NHWC"), ((1, 4, 4, 4), "NHWC->NCHW")]


@pytest.mark.parametrize("op, attrs, shapes, layout", [
    ("maxpool", {"kernel": 2, "stride": 2}, [(1, 4, 8, 8)], "NHWC"),
    ("avgpool", {"kernel": 3, "padding": 1}, [(1, 4, 8, 8)], "NCHW"),
    ("relu", {}, [(1, 4, 8, 8)], "NHWC"),
    ("add", {}, [(1, 4, 8, 8), (1, 4, 8, 8)], "NCHW"),
    ("gemm", {"out_features": 10}, [(2, 16)], "NCHW"),
    ("batchnorm", {}, [(1, 4, 8, 8)], "NHWC"),
    ("flatten", {}, [(1, 4, 2, 2)], "NCHW"),
])
def test_op_request(op: str, attrs: dict, shapes: list, layout: str) -> None:
    operator = operators.make(op, **attrs)
    request = OpRequest.of(operator, shapes, layout)  # type: ignore[arg-type]
    assert (request.kind, request.candidate) == ("op", layout)
    assert request.key.startswith(op) and request.key == OpRequest.of(
        operators.make(op, **attrs), shapes, layout).key  # type: ignore[arg-type]
    assert request == OpRequest(op, tuple(operator.attrs.items()), tuple(map(tuple, shapes)),
                                layout)  # type: ignore[arg-type]
    hash(request)
    m = request.measure(BUDGET)
    assert m.source == "measured" and m.time_s > 0
    assert m.workspace_bytes <= operator.workspace_bytes(shapes, 4)
    estimate = request.estimate()
    assert estimate.source == "analytic"
    assert estimate.workspace_bytes == operator.workspace_bytes(shapes, 4)


def test_op_request_validation() -> None:
    with pytest.raises(ValueError, match="unknown operator"):
        OpRequest("nope", (), ((1, 4, 8, 8),))
    with pytest.raises(ValueError, match="cannot run in NHWC"):
        OpRequest("lrn", (("size", 3),), ((1, 4, 8, 8),), "NHWC")
    with pytest.raises(ValueError):
        OpRequest("add", (), ((1, 4, 8, 8), (1, 3, 8, 8)))  # shapes that do not broadcast


def test_analytic_estimates_rank_sensibly() -> None:
    big = ConvSpec(n=1, c=64, h=56, w=56, m=64, kh=3, kw=3, padding=1)
    one = {a.name: ConvRequest(big, a.name).estimate(threads=1)
           for a in registry.applicable(big)}
    four = ConvRequest(big, "im2col").estimate(threads=4)
    for name, m in one.items():
        assert m.source == "analytic" and m.repeats == 0 and m.spread == 0
        assert m.workspace_bytes == registry.get(name).workspace_bytes(big)
    assert four.time_s < one["im2col"].time_s  # more threads, faster GEMM
    assert one["kn2row-aa"].time_s < one["kn2row"].time_s  # less workspace traffic
    # within a small factor of the GEMM-rate lower bound
    assert big.flops / 100e9 < one["im2col"].time_s < 3 * big.flops / 100e9


# -- profiler --------------------------------------------------------------------------------
def test_second_call_measures_nothing(store: CostStore) -> None:
    profiler = Profiler(store, threads=1, budget_s=BUDGET)
    requests = counted(TINY)
    first = profiler.costs(requests + requests)  # duplicates are measured once
    assert len(MEASURED) == len(requests) == len(first) == store.count()
    assert profiler.last_stats.measured == len(requests) and profiler.last_stats.cached == 0
    again = profiler.costs(requests)
    assert len(MEASURED) == len(requests)
    assert again == first
    assert profiler.last_stats.cached == len(requests) and profiler.last_stats.measured == 0
    # a new profiler on the same machine (another run) reads the same store
    assert Profiler(store, threads=1, budget_s=BUDGET).costs(requests) == first
    assert len(MEASURED) == len(requests)
    # another thread count is another machine fingerprint: measured afresh
    Profiler(store, threads=2, budget_s=BUDGET).costs(requests[:2])
    assert len(MEASURED) == len(requests) + 2


def test_without_a_store_costs_live_in_memory() -> None:
    profiler = Profiler(None, threads=1, budget_s=BUDGET)
    requests = counted(TINY)
    first = profiler.costs(requests)
    assert profiler.costs(requests) == first and len(MEASURED) == len(requests)
    Profiler(None, threads=1, budget_s=BUDGET).costs(requests)
    assert len(MEASURED) == 2 * len(requests)


def test_interruption_keeps_finished_measurements_and_a_rerun_resumes(store: CostStore
                                                                       ) -> None:
    requests = counted(TINY)
    calls: list[tuple[int, int]] = []

    def progress(done: int, total: int, request: ConvRequest) -> None:
        calls.append((done, total))
        if done == 6:
            raise KeyboardInterrupt

    profiler = Profiler(store, threads=1, budget_s=BUDGET, batch_size=4)
    with pytest.raises(KeyboardInterrupt):
        profiler.costs(requests, progress=progress)
    assert calls == [(i, len(requests)) for i in range(1, 7)]
    assert store.count(profiler.fingerprint_id) == 6
    MEASURED.clear()
    costs = Profiler(store, threads=1, budget_s=BUDGET, batch_size=4).costs(requests)
    assert len(costs) == len(requests)
    assert sorted(MEASURED) == sorted(request_key(r)[1:] for r in requests[6:])


def _profile_and_die(path: str, spec: ConvSpec, die_after: int) -> None:
    def progress(done: int, total: int, request: ConvRequest) -> None:
        if done == die_after:
            os._exit(3)  # killed: no exception handler, no cleanup

    with CostStore(path) as store:
        Profiler(store, threads=1, budget_s=BUDGET, batch_size=4).costs(
            conv_requests(spec), progress=progress)


def test_killed_run_keeps_committed_batches(tmp_path: Path) -> None:
    path = str(tmp_path / "costs.sqlite")
    process = multiprocessing.get_context("spawn").Process(
        target=_profile_and_die, args=(path, TINY, 6))
    process.start()
    process.join(timeout=120)
    assert process.exitcode == 3
    requests = counted(TINY)
    with CostStore(path) as store:
        assert store.count() == 4  # the one full batch committed before the kill
        costs = Profiler(store, threads=1, budget_s=BUDGET, batch_size=4).costs(requests)
        assert len(costs) == len(requests) and len(MEASURED) == len(requests) - 4


def test_measure_missing_false_estimates_and_stores_nothing(store: CostStore) -> None:
    profiler = Profiler(store, threads=1, budget_s=BUDGET)
    requests = counted(TINY)
    estimated = profiler.costs(requests, measure_missing=False)
    assert len(estimated) == len(requests) and not MEASURED and store.count() == 0
    assert {m.source for m in estimated.values()} == {"analytic"}
    assert profiler.last_stats.estimated == len(requests)
    profiler.costs(requests[:5])  # measure some: the rest stay estimates
    mixed = profiler.costs(requests, measure_missing=False)
    assert [mixed[request_key(r)].source for r in requests] == ["measured"] * 5 + [
        "analytic"] * (len(requests) - 5)
    assert store.count() == 5


# -- backends ------------------------------------------------------------------------------
class FirstHalf:
    """A backend that measures only the first half of what it is given, in one batch (as a
    cluster whose other chunks failed would), and notes that the profiler closed it."""

    def __init__(self) -> None:
        self.closed = False

    def measure(self, requests, job):
        try:
            half = requests[:len(requests) // 2]
            yield [pair for batch in InProcess().measure(half, job) for pair in batch]
        finally:
            self.closed = True


def test_the_profiler_estimates_what_its_backend_did_not_measure(store: CostStore) -> None:
    requests = counted(TINY)
    half = len(requests) // 2
    calls: list[tuple[int, int, str]] = []
    backend = FirstHalf()
    profiler = Profiler(store, threads=1, budget_s=BUDGET, backend=backend)
    costs = profiler.costs(requests, progress=lambda done, total, r: calls.append(
        (done, total, r.candidate)))
    assert [costs[request_key(r)].source for r in requests] == \
        ["measured"] * half + ["analytic"] * (len(requests) - half)
    assert calls == [(half, len(requests), requests[half - 1].candidate)]     # once a batch
    stats = profiler.last_stats
    assert (stats.measured, stats.unmeasured, stats.estimated) == \
        (half, len(requests) - half, len(requests) - half)
    assert store.count(profiler.fingerprint_id) == half == len(MEASURED)   # no estimate stored
    assert backend.closed


def test_an_interrupted_backend_is_closed_and_its_batch_kept(store: CostStore) -> None:
    def progress(done: int, total: int, request: ConvRequest) -> None:
        raise KeyboardInterrupt

    requests = counted(TINY)
    backend = FirstHalf()
    profiler = Profiler(store, threads=1, budget_s=BUDGET, batch_size=1000, backend=backend)
    with pytest.raises(KeyboardInterrupt):
        profiler.costs(requests, progress=progress)
    assert backend.closed and store.count() == len(requests) // 2


def test_a_job_cuts_each_measurement_to_the_time_left() -> None:
    fp = machine_fingerprint(1)
    assert MeasuringJob(1, 0.5, fp).budget_now() == 0.5
    assert MeasuringJob(1, 0.5, fp, time.monotonic() - 1).budget_now() is None
    assert MIN_BUDGET_S <= MeasuringJob(1, 0.5, fp, time.monotonic() + 0.1).budget_now() <= 0.1
    assert MeasuringJob(1, 0.5, fp, time.monotonic() + 1e-6).budget_now() in (None,
                                                                               MIN_BUDGET_S)
    spent = InProcess().measure(counted(TINY), MeasuringJob(1, BUDGET, fp, time.monotonic()))
    assert list(spent) == [] and MEASURED == []


def _network(name: str, layers: list[dict], channels: int) -> Network:
    return Network.from_description({"name": name, "inputs": [
        {"name": "x", "shape": [1, channels, 8, 8]}], "layers": layers})


def test_identical_specs_share_keys_across_networks(store: CostStore) -> None:
    shared = {"op": "conv", "out_channels": 4, "kernel": 3, "padding": 1}
    a = _network("a", [{"name": "first", **shared, "inputs": ["x"]},
                       {"name": "relu", "op": "relu", "inputs": ["first"]},
                       {"name": "squeeze", "op": "conv", "inputs": ["relu"], "out_channels": 2,
                        "kernel": 1}], channels=4)
    b = _network("b", [{"name": "stem", "op": "conv", "inputs": ["x"], "out_channels": 4,
                        "kernel": 1},
                       {"name": "other_name", **shared, "inputs": ["stem"]}], channels=3)
    spec_a = a.conv_spec(a.node("first"))
    assert spec_a == b.conv_spec(b.node("other_name"))
    keys_a = {request_key(r) for r in requests_for(a) if r.kind == "conv"}
    keys_b = {request_key(r) for r in requests_for(b) if r.kind == "conv"}
    assert keys_a & keys_b == {
        ("conv", spec_a.key(), alg.name) for alg in registry.applicable(spec_a)}
    profiler = Profiler(store, threads=1, budget_s=BUDGET)
    profiler.costs([r for n in a.conv_nodes for r in counted(a.conv_spec(n))])
    MEASURED.clear()
    profiler.costs([r for n in b.conv_nodes for r in counted(b.conv_spec(n))])
    assert {key for key, _ in MEASURED} == {b.conv_spec(b.node("stem")).key()}
