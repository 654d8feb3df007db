"""What the HTTP service does, as plain functions that run in worker processes.

Every task here is CPU-bound and measures memory with `tracemalloc`, which is process-global:
a traced run sharing a process with other requests would count their allocations too. So the
app runs these functions in worker processes (`workers`), one task per process at a time, and
never on the event loop. Tasks take plain data and return picklable documents (the planner's
`Plan` and `Frontier`, the service's `schemas`); a bad request becomes a `ServiceError` carrying
its HTTP status, so the app maps errors in one place.
"""

from __future__ import annotations

import base64
import binascii
import gc
import hashlib
import io
import json
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal

import numpy as np

from convplan.kernels import registry
from convplan.profiles.store import StoreError
from convplan.selector.inputs import random_inputs, read_inputs
from convplan.selector.network import (
    InputShapes,
    LimitError,
    Limits,
    Network,
    NetworkError,
    zoo,
)
from convplan.selector.planning import (
    Frontier,
    Plan,
    PlanError,
    PlanningError,
    PlanRequest,
    PlanSpec,
    check_plan,
    pareto_network,
    plan_network,
    plan_spec,
    profiler_for,
    requests_for,
)
from convplan.selector.runner import (
    RunReport,
    run_network,
    run_plan,
    run_session,
)
from convplan.selector.session import Session
from convplan.settings import ServiceSettings

from .schemas import ProfileResult


# -- errors --------------------------------------------------------------------------------------
class ServiceError(Exception):
    """A request the service refuses: HTTP status, a short code, and the message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(status, code, message)
        self.status, self.code, self.message = status, code, message

    def __str__(self) -> str:
        return self.message


@contextmanager
def client_errors() -> Iterator[None]:
    """The library's errors, as the HTTP errors they are: every one is a ValueError (a limit
    crossed: 422; a bad plan, network or value: 400), never a 500; but a `StoreError` (the
    server's cost store is damaged, foreign or read-only) is the server's problem, not the
    request's: 503 cost_store, with the store's message."""
    try:
        yield
    except ServiceError:
        raise
    except StoreError as error:         # before ValueError, of which it is one
        raise ServiceError(503, "cost_store", str(error)[:2000]) from None
    except LimitError as error:         # valid, but more than this server takes
        raise ServiceError(422, "network_too_large", str(error)) from None
    except PlanError as error:
        raise ServiceError(400, "invalid_plan", str(error)) from None
    except NetworkError as error:
        raise ServiceError(400, "invalid_network", str(error)) from None
    except PlanningError as error:      # infeasible cap (states the smallest peak), solver
        raise ServiceError(422, "planning_failed", str(error)) from None
    except ValueError as error:         # bad sizes, algorithms, layouts, options
        raise ServiceError(400, "invalid_value", str(error)[:2000]) from None
    except RecursionError:
        raise ServiceError(400, "invalid_value", "the request nests too deeply") from None
    except MemoryError:
        raise ServiceError(422, "too_large", "the request needs more memory than this server "
                                             "has; use a smaller network or input") from None


# -- networks ------------------------------------------------------------------------------------
#: Where a network comes from: a built-in name, a description (dict) or ONNX file bytes, and
#: optionally the `InputShapes` to load it for.
Source = tuple[Literal["builtin"], str] | tuple[Literal["description"], dict] | \
    tuple[Literal["onnx"], bytes] | tuple[str, Any, InputShapes | None]


def source(network: Any, shapes: InputShapes | None = None) -> Source:
    """A request body's network as a `Source`: a built-in name, or a description as plain
    data (what a worker process is sent), with the shapes asked for (they travel with it)."""
    if isinstance(network, str):
        return ("builtin", network, shapes)
    return ("description", network.model_dump(), shapes)


def limits(settings: ServiceSettings) -> Limits:
    """The server's bounds on a network: layers, one tensor, all weights, and the whole
    request (weights plus every activation, an upper bound of what a run holds at once)."""
    tensor, weights = int(settings.max_tensor_bytes), int(settings.max_weight_bytes)
    return Limits(max_layers=settings.max_layers, max_tensor_bytes=tensor,
                  max_weight_bytes=weights, max_total_bytes=tensor + weights)


def load(source: Source, settings: ServiceSettings, *, owned: bool = False) -> Network:
    """The network a request names, for the shapes it asks for; never a path on the server
    (names are built-ins only). Descriptions and ONNX files are checked against the limits
    (for those shapes) before weights exist. ``owned``: the request's run will drop the
    weights, so a built-in ONNX model is imported for it alone, not shared with the cache."""
    kind, value, *rest = source
    shapes = rest[0] if rest else None
    bounds = limits(settings)
    with client_errors():
        if kind == "builtin":
            assert isinstance(value, str)
            if value not in zoo.names():
                raise ServiceError(404, "unknown_network", f"unknown network {value[:100]!r}; "
                                   f"built in: {', '.join(zoo.names())} (or give a description "
                                   "object)")
            if shapes:
                return zoo.load_network(value, bounds, input_shapes=shapes)
            return zoo.check_limits(zoo.builtin(value, fresh=owned), bounds)
        if kind == "description":
            assert isinstance(value, dict)
            return zoo.description_network(value, bounds, shapes)
        assert isinstance(value, bytes)
        return zoo.onnx_network(value, bounds, input_shapes=shapes)


# -- planning ------------------------------------------------------------------------------------
def plan_request(options: Mapping[str, Any], settings: ServiceSettings) -> PlanRequest:
    """A `PlanRequest` from the body's options, the server's caps applied."""
    cap = options.get("memory_cap")
    if isinstance(cap, str) and not cap.strip():
        cap = None
    threads = options.get("threads")
    cores = os.cpu_count() or 1
    if threads is not None and threads > cores:
        raise ServiceError(422, "invalid_value", f"threads must be at most {cores} (the "
                           f"server's cores), got {threads}")
    arena_cap = options.get("arena_cap")
    if isinstance(arena_cap, str) and not arena_cap.strip():
        arena_cap = None
    return PlanRequest(
        cap=cap, arena_cap=arena_cap, threads=threads, solver=options.get("solver", "cbc"),
        time_limit_s=min(float(options.get("time_limit_s", 60.0)), settings.max_time_limit),
        measure=bool(options.get("measure", True)),
        budget_s=min(float(options.get("budget_s", 0.3)), settings.max_budget))


#: ILP solves of a plan (the plan, the lowest-memory baseline, a refused cap's lowest peak).
PLAN_SOLVES = 3


def _within_deadline(request: PlanRequest, deadline: float | None, solves: int,
                     share: float = 0.5, measure_share: float = 1.0
                     ) -> tuple[PlanRequest, float | None]:
    """A task's deadline (a `time.monotonic` instant; None: none) split between measuring and
    solving: the solver limit shrinks so ``solves`` solves fit in at most ``share`` of what is
    left, and measuring must stop before them and within ``measure_share`` of what is left
    (the instant returned, `plan_network`'s ``measure_until``); costs not measured by
    then are estimated."""
    import time

    if deadline is None:
        return request, None
    left = deadline - time.monotonic()
    if left <= 0:
        raise ServiceError(504, "deadline_exceeded", "the request's deadline passed before "
                           "planning could start (CONVPLAN_REQUEST_TIMEOUT)")
    solving = min(request.time_limit_s * solves, left * share)
    limit = min(request.time_limit_s, max(0.05, solving / solves))
    measure_until = min(deadline - solving, time.monotonic() + left * measure_share)
    return request.model_copy(update={"time_limit_s": limit}), measure_until


def plan_task(source: Source, options: dict[str, Any], settings: ServiceSettings,
              deadline: float | None = None) -> Plan:
    """POST /v1/plan: the `Plan`. With a ``deadline`` (`time.monotonic`), measuring
    stops in time for the solver, whose limit fits what is left (the costs are then "mixed")."""
    with client_errors():
        request = plan_request(options, settings)
        network = load(source, settings)
        request, measure_until = _within_deadline(request, deadline, PLAN_SOLVES)
        return plan_network(network, request, measure_until=measure_until)


def pareto_task(source: Source, options: dict[str, Any], points: int, settings: ServiceSettings,
                deadline: float | None = None) -> Frontier:
    """POST /v1/pareto: the `Frontier` (the baselines with no cap); a ``deadline`` bounds
    measuring and solving as for `plan_task`."""
    with client_errors():
        request = plan_request({**options, "memory_cap": None}, settings)
        network = load(source, settings)
        request, measure_until = _within_deadline(request, deadline, points + 3)
        return pareto_network(network, request, points, measure_until=measure_until)


# -- running -------------------------------------------------------------------------------------
def decode_inputs(text: str, network: Network | Mapping[str, tuple[int, ...]],
                  settings: ServiceSettings) -> dict[str, np.ndarray]:
    """Base64 of an .npy (one input) or an .npz (by input name); every array's header (name,
    shape, numeric dtype, data present) is checked against the network before it is read."""
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ServiceError(400, "invalid_input", "input is not base64 (of an .npy or .npz "
                                                 "file)") from None
    try:
        return read_inputs(data, network, what="the input")
    except NetworkError as error:
        raise ServiceError(400, "invalid_input", str(error)) from None


def encode_outputs(outputs: Mapping[str, np.ndarray]) -> tuple[str, str]:
    """(base64, "npy" | "npz"): one output as .npy, several as .npz (as `convplan run`)."""
    buffer = io.BytesIO()
    if len(outputs) == 1:
        np.save(buffer, next(iter(outputs.values())), allow_pickle=False)
        kind = "npy"
    else:
        np.savez(buffer, **outputs)
        kind = "npz"
    return base64.b64encode(buffer.getvalue()).decode("ascii"), kind


def run_task(source: Source, body: dict[str, Any], settings: ServiceSettings,
             deadline: float | None = None) -> dict[str, Any]:
    """POST /v1/run: run a plan (or plan first), report time and peak next to the prediction.
    A ``deadline`` bounds planning first to half the time left (the run itself cannot stop
    early: the pool kills it at the deadline). A plan or an algorithm given, without
    ``check``, runs in a cached `Session` (`SESSIONS`) when the worker keeps one."""
    with client_errors():
        plan, algorithm = body.get("plan"), body.get("algorithm")
        threads = plan_request({"threads": body.get("threads")}, settings).threads
        repeat = min(int(body.get("repeat", 1)), settings.max_repeat)
        check = bool(body.get("check", False))
        reused, document = False, None
        if settings.session_cache and not check and (plan is None) != (algorithm is None):
            report, reused = _cached_run(source, body, settings, threads, repeat)
        else:
            report, document = _fresh_run(source, body, settings, threads, repeat, check,
                                          deadline)
    # what schemas.RunResponse (a RunReport) adds; the arrays travel encoded, not pickled
    out = report.model_dump(exclude={"outputs"})
    out["output"], out["output_format"] = encode_outputs(report.outputs)
    out["output_shapes"] = {k: list(v.shape) for k, v in report.outputs.items()}
    out["within_prediction"] = report.measured_peak_bytes <= report.predicted_peak_bytes
    out["plan"] = document
    out["session_reused"] = reused
    return out


def _inputs(body: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]],
            settings: ServiceSettings) -> dict[str, np.ndarray]:
    text = body.get("input")
    return (decode_inputs(text, shapes, settings) if text is not None
            else random_inputs(shapes, int(body.get("seed", 0))))


def _fresh_run(source: Source, body: dict[str, Any], settings: ServiceSettings,
               threads: int | None, repeat: int, check: bool, deadline: float | None
               ) -> tuple[RunReport, Plan | None]:
    """A run of a network loaded for this request alone: (its report, the plan made first)."""
    network = load(source, settings, owned=True)
    plan, algorithm = body.get("plan"), body.get("algorithm")
    if plan is not None:        # made for this network and the shapes it is loaded for
        spec = plan_spec(plan)
        check_plan(network, spec.assignment, spec.layouts, made_for=spec.network,
                   inputs=spec.inputs)
    document = None
    if plan is not None and algorithm is not None:
        raise ServiceError(400, "invalid_value", "give a plan or an algorithm, not both")
    if algorithm is not None:
        registry.get(algorithm)          # an unknown name is a clear error, not a fallback
    elif plan is None:
        request, measure_until = _within_deadline(  # half of the time left for the run
            plan_request(body, settings), deadline, PLAN_SOLVES, 0.25, 0.25)
        plan = document = plan_network(network, request, measure_until=measure_until)
    inputs = _inputs(body, network.inputs, settings)
    if plan is not None:     # made for this network, its threads within ours: run_plan
        report = run_plan(network, plan, inputs, threads=threads, repeat=repeat,
                          check=check, owned=True)      # loaded for this request alone
    else:
        report = run_network(network, inputs, algorithm=algorithm, threads=threads,
                             repeat=repeat, check=check, owned=True)
    return report, document


class SessionCache:
    """The sessions a worker process keeps between /v1/run requests, least recently used
    first, at most ``CONVPLAN_SESSION_CACHE``. Each belongs to this process alone (a worker
    runs one task at a time), holds its prepared weights and arena, and dies with it."""

    def __init__(self) -> None:
        self._sessions: OrderedDict[tuple, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, key: tuple) -> Session | None:
        session = self._sessions.get(key)
        if session is not None:
            self._sessions.move_to_end(key)
        return session

    def make_room(self, size: int) -> None:
        """Close the least recently used sessions until one more fits in ``size``."""
        while self._sessions and len(self._sessions) >= size:
            self._sessions.popitem(last=False)[1].close()

    def put(self, key: tuple, session: Session, size: int) -> None:
        self.make_room(size)
        self._sessions[key] = session

    def clear(self) -> None:
        while self._sessions:
            self._sessions.popitem(last=False)[1].close()
        gc.collect()


#: This process's sessions (a worker's; the server process runs no task).
SESSIONS = SessionCache()


def _source_key(source: Source, settings: ServiceSettings) -> tuple:
    """What makes two requests' networks the same: the built-in name, or a digest of the
    description or file, the shapes, and the limits it was loaded under."""
    kind, value, *rest = source
    shapes = rest[0] if rest else None
    if kind == "builtin":
        what = value
    else:
        data = value if isinstance(value, bytes) else json.dumps(
            value, sort_keys=True, separators=(",", ":")).encode()
        what = hashlib.sha256(data).hexdigest()
    return (kind, what, shapes.model_dump_json() if shapes else None, repr(limits(settings)))


def _cached_run(source: Source, body: dict[str, Any], settings: ServiceSettings,
                threads: int | None, repeat: int) -> tuple[RunReport, bool]:
    """A run of a plan or an algorithm in the session an earlier request of the same
    network, plan, shapes and threads left in this worker, else in a new one, kept after:
    (the report, whether the session was reused). A reused session is already prepared, so
    its traced run holds the weights and arena from before (the measured peak then leaves
    preparing out; the prediction still counts it). The inputs are checked against the
    session's shapes as against a network's. A new session that runs out of memory beside
    the cached ones gets the whole worker: the cache is emptied and it tries once more."""
    plan, algorithm = body.get("plan"), body.get("algorithm")
    spec = plan_spec(plan) if plan is not None else None
    if spec is not None:
        threads = spec.run_threads(threads)
        choice: tuple = ("plan", spec.model_dump_json())
    else:
        registry.get(algorithm)          # an unknown name is a clear error, not a fallback
        choice = ("algorithm", algorithm)
    key = (_source_key(source, settings), choice, threads)
    session = SESSIONS.get(key)
    if session is not None:
        return run_session(session, _inputs(body, session.inputs, settings), repeat=repeat), \
            True
    size = settings.session_cache
    try:
        SESSIONS.make_room(size)
        return _new_session_run(source, body, settings, spec, threads, repeat, key), False
    except (MemoryError, ServiceError) as error:     # (`load` answers MemoryError as 422)
        if not len(SESSIONS) or (isinstance(error, ServiceError) and error.code != "too_large"):
            raise
    SESSIONS.clear()
    return _new_session_run(source, body, settings, spec, threads, repeat, key), False


def _new_session_run(source: Source, body: dict[str, Any], settings: ServiceSettings,
                     spec: PlanSpec | None, threads: int | None, repeat: int, key: tuple
                     ) -> RunReport:
    network = load(source, settings, owned=True)
    if spec is not None:        # made for this network and the shapes it is loaded for
        check_plan(network, spec.assignment, spec.layouts, made_for=spec.network,
                   inputs=spec.inputs)
    inputs = _inputs(body, network.inputs, settings)    # before anything is prepared
    session = Session.from_network(
        network, spec.assignment if spec else None, algorithm=body.get("algorithm"),
        layouts=spec.layouts if spec else None, strict=spec is not None, owned=True,
        threads=threads, prepare=False)     # prepared in the traced run, as run_network does
    del network
    try:
        report = run_session(session, inputs, repeat=repeat)
    except BaseException:
        session.close()
        raise
    SESSIONS.put(key, session, settings.session_cache)
    return report


# -- profiling -----------------------------------------------------------------------------------
def profile_task(source: Source, threads: int | None, budget_s: float, settings: ServiceSettings,
                 progress: Callable[[int, int], None] | None = None,
                 deadline: float | None = None) -> ProfileResult:
    """A profile job: measure (and store) every cost a plan of the network needs; measuring
    stops at ``deadline`` (`time.monotonic`; what is left is counted in ``unmeasured``)."""
    from convplan.profiles.profiler import measuring_deadline

    with client_errors():
        network = load(source, settings)
        request = plan_request({"threads": threads, "budget_s": budget_s, "measure": True},
                               settings)
        requests = requests_for(network)
        profiler = profiler_for(request)
        try:
            with measuring_deadline(deadline):
                profiler.costs(requests, progress=(lambda done, total, _:
                                                   progress(done, total)) if progress else None)
        finally:
            if profiler.store is not None:
                profiler.store.close()
    stats = profiler.last_stats
    assert stats is not None
    return ProfileResult(
        network=network.name, fingerprint_id=profiler.fingerprint_id, threads=profiler.threads,
        conv_specs=len({network.conv_spec(n) for n in network.conv_nodes}),
        conv_requests=sum(r.kind == "conv" for r in requests),
        transform_requests=sum(r.kind == "transform" for r in requests),
        op_requests=sum(r.kind == "op" for r in requests),
        requested=stats.requested, measured=stats.measured, cached=stats.cached,
        unmeasured=stats.unmeasured, seconds=round(stats.seconds, 3))


def warm_up() -> int:
    """Run once in each worker at start-up so the first request does not pay for imports."""
    return os.getpid()
