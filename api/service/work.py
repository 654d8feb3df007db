"""What the HTTP service does, as plain functions that run in worker processes.

Every task here is CPU-bound and measures memory with `tracemalloc`, which is process-global:
a traced run sharing a process with other requests would count their allocations too. So the
app (`api.app`) runs these functions in worker processes, one task per process at a time, and
never on the event loop. Tasks take and return plain (picklable) data; a bad request becomes a
`ServiceError` carrying its HTTP status, so the app maps errors in one place.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from convplan.kernels import registry
from convplan.profiles.store import StoreError
from convplan.selector import zoo
from convplan.selector.ilp import PlanningError
from convplan.selector.network import LimitError, Limits, Network, NetworkError
from convplan.selector.planning import (
    PlanError,
    PlanRequest,
    baselines,
    build_problem,
    check_plan,
    cost_function,
    parse_bytes,
    plan_network,
    profiler_for,
    requests_for,
)
from convplan.selector.planning import pareto as pareto_frontier
from convplan.selector.runner import npy_header, random_inputs, read_inputs, run_network

MiB = 1 << 20
GiB = 1 << 30
#: What the default JSON body limit allows a layer of a network description.
JSON_BYTES_PER_LAYER = 4 << 10


# -- settings ------------------------------------------------------------------------------------
def _env_bytes(env: Mapping[str, str], name: str, default: int) -> int:
    text = env.get(name)
    if not text:
        return default
    try:
        return parse_bytes(text)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None


def _env_number(env: Mapping[str, str], name: str, default: float, kind: type = float,
                minimum: float = 0) -> Any:
    text = env.get(name)
    if not text:
        return default
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"{name} must be a {kind.__name__}, got {text!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {text!r}")
    return value


def _default_slots() -> int:
    return max(1, min(4, os.cpu_count() or 1))


@dataclass(frozen=True)
class Settings:
    """The service's limits; `from_env` reads them from CONVPLAN_* environment variables."""

    max_body_bytes: int = 64 * MiB          # CONVPLAN_MAX_BODY
    max_layers: int = 1000                  # CONVPLAN_MAX_LAYERS
    max_tensor_bytes: int = 1 * GiB         # CONVPLAN_MAX_TENSOR_BYTES (one activation/input)
    max_weight_bytes: int = 1 * GiB         # CONVPLAN_MAX_WEIGHT_BYTES (a description's weights)
    max_time_limit_s: float = 60.0          # CONVPLAN_MAX_TIME_LIMIT (solver seconds)
    max_budget_s: float = 2.0               # CONVPLAN_MAX_BUDGET (measuring, per candidate)
    max_repeat: int = 10                    # CONVPLAN_MAX_REPEAT (timed runs of /v1/run)
    slots: int = field(default_factory=_default_slots)  # CONVPLAN_CONCURRENCY
    queue: int = 32                         # CONVPLAN_QUEUE (requests waiting for a slot)
    queue_timeout_s: float = 10.0           # CONVPLAN_QUEUE_TIMEOUT
    max_jobs: int = 64                      # CONVPLAN_MAX_JOBS (job table entries)
    max_pending_jobs: int = 4               # CONVPLAN_MAX_PENDING_JOBS (queued + running)
    retry_after_s: int = 2                  # CONVPLAN_RETRY_AFTER
    api_key: str | None = field(default=None, repr=False)   # CONVPLAN_API_KEY
    request_timeout_s: float = 120.0        # CONVPLAN_REQUEST_TIMEOUT (a heavy request, all in)
    job_timeout_s: float = 900.0            # CONVPLAN_JOB_TIMEOUT (a profiling job)
    #: CONVPLAN_WORKER_MEMORY: address space of a worker process (RLIMIT_AS); None: derived
    #: from the tensor and weight limits (`default_worker_memory`); 0: no limit.
    worker_memory_bytes: int | None = None
    kill_grace_s: float = 1.0               # CONVPLAN_KILL_GRACE (SIGTERM, then SIGKILL)
    body_timeout_s: float = 60.0            # CONVPLAN_BODY_TIMEOUT (receiving a request body)
    #: CONVPLAN_MAX_JSON_BODY: a body that is not a multipart upload (a JSON request); None:
    #: derived from the layer limit (`default_json_body`), so a description of far more layers
    #: than the server takes is refused (413) before it is parsed.
    max_json_body_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.worker_memory_bytes is None:
            object.__setattr__(self, "worker_memory_bytes", self.default_worker_memory())
        if self.max_json_body_bytes is None:
            object.__setattr__(self, "max_json_body_bytes", self.default_json_body())

    def default_json_body(self) -> int:
        """4 KiB a layer (a described layer takes 50 to 300 bytes of JSON) and 1 MiB for the
        options and a run's input (base64), within CONVPLAN_MAX_BODY."""
        return min(self.max_body_bytes, self.max_layers * JSON_BYTES_PER_LAYER + MiB)

    def default_worker_memory(self) -> int:
        """What a worker may map: a measured baseline with headroom (an idle worker maps about
        0.2 GiB, one that planned and ran GoogLeNet with --check 0.75 GiB), the BLAS buffers
        of every core, and two of the largest tensors plus the largest weights a request may
        have."""
        cores = os.cpu_count() or 1
        return 2 * GiB + 64 * MiB * cores + 2 * self.max_tensor_bytes + self.max_weight_bytes

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from the environment; ValueError naming the variable that is wrong."""
        env = os.environ if env is None else env
        d = cls()
        return cls(
            max_body_bytes=_env_bytes(env, "CONVPLAN_MAX_BODY", d.max_body_bytes),
            max_layers=_env_number(env, "CONVPLAN_MAX_LAYERS", d.max_layers, int, 1),
            max_tensor_bytes=_env_bytes(env, "CONVPLAN_MAX_TENSOR_BYTES", d.max_tensor_bytes),
            max_weight_bytes=_env_bytes(env, "CONVPLAN_MAX_WEIGHT_BYTES", d.max_weight_bytes),
            max_time_limit_s=_env_number(env, "CONVPLAN_MAX_TIME_LIMIT", d.max_time_limit_s,
                                         float, 0.01),
            max_budget_s=_env_number(env, "CONVPLAN_MAX_BUDGET", d.max_budget_s, float, 0.001),
            max_repeat=_env_number(env, "CONVPLAN_MAX_REPEAT", d.max_repeat, int, 1),
            slots=_env_number(env, "CONVPLAN_CONCURRENCY", d.slots, int, 1),
            queue=_env_number(env, "CONVPLAN_QUEUE", d.queue, int, 0),
            queue_timeout_s=_env_number(env, "CONVPLAN_QUEUE_TIMEOUT", d.queue_timeout_s),
            max_jobs=_env_number(env, "CONVPLAN_MAX_JOBS", d.max_jobs, int, 1),
            max_pending_jobs=_env_number(env, "CONVPLAN_MAX_PENDING_JOBS",
                                         d.max_pending_jobs, int, 1),
            retry_after_s=_env_number(env, "CONVPLAN_RETRY_AFTER", d.retry_after_s, int, 1),
            api_key=env.get("CONVPLAN_API_KEY") or None,
            request_timeout_s=_env_number(env, "CONVPLAN_REQUEST_TIMEOUT", d.request_timeout_s,
                                          float, 0.1),
            job_timeout_s=_env_number(env, "CONVPLAN_JOB_TIMEOUT", d.job_timeout_s, float, 0.1),
            worker_memory_bytes=0 if env.get("CONVPLAN_WORKER_MEMORY", "").strip().lower()
            in ("0", "none", "off") else _env_bytes(env, "CONVPLAN_WORKER_MEMORY",
                                                    None),  # type: ignore[arg-type]
            kill_grace_s=_env_number(env, "CONVPLAN_KILL_GRACE", d.kill_grace_s, float, 0),
            body_timeout_s=_env_number(env, "CONVPLAN_BODY_TIMEOUT", d.body_timeout_s, float,
                                       0.1),
            max_json_body_bytes=_env_bytes(env, "CONVPLAN_MAX_JSON_BODY",
                                           None),  # type: ignore[arg-type]
        )


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
#: Where a network comes from: a built-in name, a description (dict) or ONNX file bytes.
Source = tuple[Literal["builtin"], str] | tuple[Literal["description"], dict] | \
    tuple[Literal["onnx"], bytes]


def _nbytes(shape: Any) -> int:
    return 4 * math.prod(int(d) for d in shape)


def preflight(description: Mapping[str, Any], settings: Settings) -> Network:
    """The description built under the server's limits (`limits`): the layers are counted
    before they are validated, and every layer's shapes, weight shapes and sizes are checked
    before the first weight is drawn (`Network.from_description`)."""
    return Network.from_description(description, limits=limits(settings))


def limits(settings: Settings) -> Limits:
    """The server's bounds on a network: layers, one tensor, all weights, and the whole
    request (weights plus every activation, an upper bound of what a run holds at once)."""
    total = getattr(settings, "max_request_bytes", None) or (
        settings.max_weight_bytes + settings.max_tensor_bytes)
    return Limits(max_layers=settings.max_layers, max_tensor_bytes=settings.max_tensor_bytes,
                  max_weight_bytes=settings.max_weight_bytes, max_total_bytes=total)


def check_network(network: Network, settings: Settings) -> None:
    """The same bounds on a network built elsewhere (built-ins, ONNX imports)."""
    with client_errors():
        zoo.check_limits(network, limits(settings))


def load(source: Source, settings: Settings) -> Network:
    """The network a request names; never a path on the server (names are built-ins only).
    Descriptions and ONNX files are checked against the limits before weights exist."""
    kind, value = source
    with client_errors():
        if kind == "builtin":
            assert isinstance(value, str)
            if value not in zoo.names():
                raise ServiceError(404, "unknown_network", f"unknown network {value[:100]!r}; "
                                   f"built in: {', '.join(zoo.names())} (or give a description "
                                   "object)")
            network = zoo.builtin(value)
        elif kind == "description":
            assert isinstance(value, dict)
            network = preflight(value, settings)
        else:
            assert isinstance(value, bytes)
            network = zoo.onnx_network(value, limits(settings))
    check_network(network, settings)
    return network


# -- planning ------------------------------------------------------------------------------------
def plan_request(options: Mapping[str, Any], settings: Settings) -> PlanRequest:
    """A `PlanRequest` from the body's options, the server's caps applied."""
    cap = options.get("memory_cap")
    if isinstance(cap, str) and not cap.strip():
        cap = None
    threads = options.get("threads")
    cores = os.cpu_count() or 1
    if threads is not None and threads > cores:
        raise ServiceError(422, "invalid_value", f"threads must be at most {cores} (the "
                           f"server's cores), got {threads}")
    return PlanRequest(
        cap=parse_bytes(cap) if cap is not None else None, threads=threads,
        solver=options.get("solver", "cbc"),
        time_limit_s=min(float(options.get("time_limit_s", 60.0)), settings.max_time_limit_s),
        measure=bool(options.get("measure", True)),
        budget_s=min(float(options.get("budget_s", 0.3)), settings.max_budget_s))


#: ILP solves of a plan (the plan, the lowest-memory baseline, a refused cap's lowest peak).
PLAN_SOLVES = 3


def _within_deadline(request: PlanRequest, deadline: float | None, solves: int,
                     share: float = 0.5, measure_share: float = 1.0
                     ) -> tuple[PlanRequest, float | None]:
    """A task's deadline (a `time.monotonic` instant; None: none) split between measuring and
    solving: the solver limit shrinks so ``solves`` solves fit in at most ``share`` of what is
    left, and measuring must stop before them and within ``measure_share`` of what is left
    (the instant returned, for `profiles.profiler.measuring_deadline`); costs not measured by
    then are estimated."""
    import dataclasses
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
    return dataclasses.replace(request, time_limit_s=limit), measure_until


def plan_task(source: Source, options: dict[str, Any], settings: Settings,
              deadline: float | None = None) -> dict[str, Any]:
    """POST /v1/plan: the plan document. With a ``deadline`` (`time.monotonic`), measuring
    stops in time for the solver, whose limit fits what is left (the costs are then "mixed")."""
    from convplan.profiles.profiler import measuring_deadline

    with client_errors():
        request = plan_request(options, settings)
        network = load(source, settings)
        request, measure_until = _within_deadline(request, deadline, PLAN_SOLVES)
        with measuring_deadline(measure_until):
            return plan_network(network, request)


#: The `costs` of a plan or frontier whose costs all have one source (else "mixed").
COST_SOURCES = ("measured", "imported", "analytic")


def _costs_label(sources: set[str]) -> str:
    """The label of costs from ``sources``: the one source they all have, else "mixed"."""
    if len(sources) == 1 and next(iter(sources)) in COST_SOURCES:
        return next(iter(sources))
    return "mixed"


def pareto_task(source: Source, options: dict[str, Any], points: int, settings: Settings,
                deadline: float | None = None) -> dict[str, Any]:
    """POST /v1/pareto: the time / peak-memory frontier and the baselines (no cap); a
    ``deadline`` bounds measuring and solving as for `plan_task`."""
    from convplan.profiles.profiler import measuring_deadline

    with client_errors():
        request = plan_request({**options, "memory_cap": None}, settings)
        network = load(source, settings)
        request, measure_until = _within_deadline(request, deadline, points + 3)
        profiler = profiler_for(request)
        try:
            with measuring_deadline(measure_until):
                problem = build_problem(network, cost_function(profiler, request.measure))
        finally:
            if profiler.store is not None:
                profiler.store.close()
        frontier = pareto_frontier(problem, points, solver=request.solver,
                                   time_limit_s=request.time_limit_s)
        marks = baselines(problem, None, solver=request.solver,
                          time_limit_s=request.time_limit_s)
    return {"network": network.name, "threads": profiler.threads,
            "costs": _costs_label(problem.sources),
            "points": [{k: v for k, v in p.items() if k != "choice"} for p in frontier],
            "baselines": marks}


# -- running -------------------------------------------------------------------------------------
def _npy_shape(data: bytes) -> tuple[int, ...]:
    """The shape an .npy header declares (read before NumPy allocates anything)."""
    return npy_header(io.BytesIO(data))[0]


def decode_inputs(text: str, network: Network, settings: Settings) -> dict[str, np.ndarray]:
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


def run_task(source: Source, body: dict[str, Any], settings: Settings,
             deadline: float | None = None) -> dict[str, Any]:
    """POST /v1/run: run a plan (or plan first), report time and peak next to the prediction.
    A ``deadline`` bounds planning first to half the time left (the run itself cannot stop
    early: the pool kills it at the deadline)."""
    from convplan.profiles.profiler import measuring_deadline

    with client_errors():
        network = load(source, settings)
        plan = body.get("plan")
        threads = plan_request({"threads": body.get("threads")}, settings).threads
        document = None
        assignment = layouts = algorithm = None
        if plan is not None and body.get("algorithm") is not None:
            raise ServiceError(400, "invalid_value", "give a plan or an algorithm, not both")
        if plan is not None:
            assignment, layouts = plan["assignment"], plan.get("layouts") or {}
            # made for this network (when the plan names its own), as `convplan run --plan`
            check_plan(network, assignment, layouts, made_for=plan.get("network"))
            threads = threads or plan.get("threads")
        elif body.get("algorithm") is not None:
            algorithm = body["algorithm"]
            registry.get(algorithm)          # an unknown name is a clear error, not a fallback
        else:
            request, measure_until = _within_deadline(  # half of the time left for the run
                plan_request(body, settings), deadline, PLAN_SOLVES, 0.25, 0.25)
            with measuring_deadline(measure_until):
                document = plan_network(network, request)
            assignment, layouts = document["assignment"], document["layouts"]
            threads = threads or document["threads"]
        if threads is not None and threads > (os.cpu_count() or 1):
            threads = os.cpu_count() or 1       # a plan made on a machine with more cores
        text = body.get("input")
        inputs = (decode_inputs(text, network, settings) if text is not None
                  else random_inputs(network, int(body.get("seed", 0))))
        report = run_network(network, inputs, assignment=assignment, layouts=layouts,
                             algorithm=algorithm, strict=assignment is not None,
                             threads=threads, repeat=min(int(body.get("repeat", 1)),
                                                         settings.max_repeat),
                             check=bool(body.get("check", False)))
    out = report.as_dict()
    out["output"], out["output_format"] = encode_outputs(report.outputs)
    out["output_shapes"] = out.pop("outputs")
    out["within_prediction"] = report.measured_peak_bytes <= report.predicted_peak_bytes
    out["plan"] = document
    return out


# -- profiling -----------------------------------------------------------------------------------
def profile_task(source: Source, threads: int | None, budget_s: float, settings: Settings,
                 progress: Callable[[int, int], None] | None = None,
                 deadline: float | None = None) -> dict[str, Any]:
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
    return {"network": network.name, "fingerprint_id": profiler.fingerprint_id,
            "threads": profiler.threads,
            "conv_specs": len({network.conv_spec(n) for n in network.conv_nodes}),
            "conv_requests": sum(r.kind == "conv" for r in requests),
            "transform_requests": sum(r.kind == "transform" for r in requests),
            "op_requests": sum(r.kind == "op" for r in requests),
            "requested": stats.requested, "measured": stats.measured, "cached": stats.cached,
            "unmeasured": stats.unmeasured, "seconds": round(stats.seconds, 3)}


def warm_up() -> int:
    """Run once in each worker at start-up so the first request does not pay for imports."""
    return os.getpid()
