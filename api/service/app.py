"""The HTTP service: `uvicorn api.app:app` (or `convplan serve`). OpenAPI docs at /docs.

Light requests (health, listings, job status) answer on the event loop; everything that plans,
measures or runs goes to worker processes through `WorkerPool`, whose admission gate answers
503 with Retry-After when saturated. Every refusal is a JSON `ErrorBody`; unexpected errors are
logged and answered with a generic 500 that leaks nothing.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Annotated, Any

import anyio
from fastapi import Depends, FastAPI, Form, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from starlette.exceptions import HTTPException as StarletteHTTPException

from convplan.kernels import registry
from convplan.selector import zoo

from . import work as service
from .middleware import ApiKeyMiddleware, BodyLimitMiddleware
from .schemas import (
    AlgorithmInfo,
    CostOptions,
    ErrorBody,
    Health,
    Job,
    JobCreated,
    NetworkInfo,
    ParetoBody,
    ParetoResponse,
    PlanBody,
    PlanDocument,
    PlanOnnxForm,
    ProfileBody,
    RunBody,
    RunResponse,
)
from .work import ServiceError, Settings, Source
from .workers import JobTable, Saturated, WorkerPool, validate_task

log = logging.getLogger("convplan.service")

_ERROR_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found",
                405: "method_not_allowed", 408: "body_timeout", 413: "body_too_large",
                415: "unsupported_media_type", 422: "invalid_request", 503: "busy"}
_RETRY = {"Retry-After": {"description": "Seconds to wait before retrying.",
                          "schema": {"type": "string"}}}
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "A bad network, input or option."},
    404: {"model": ErrorBody, "description": "An unknown built-in network or job."},
    413: {"model": ErrorBody, "description": "The body is over the limit."},
    415: {"model": ErrorBody, "description": "The body is not JSON."},
    422: {"model": ErrorBody, "description": "A body that does not validate, a network over "
                                             "the limits, or a cap no plan fits."},
    503: {"model": ErrorBody, "description": "Busy, shutting down, or the worker died: retry "
                                             "later; or the server's cost store is unusable "
                                             "(cost_store: the server's problem, not the "
                                             "request's).", "headers": _RETRY},
    504: {"model": ErrorBody, "description": "The request overran its deadline "
                                             "(CONVPLAN_REQUEST_TIMEOUT); its worker was "
                                             "replaced."},
}


def _version() -> str:
    try:
        return importlib.metadata.version("convplan")
    except importlib.metadata.PackageNotFoundError:
        return "0"


def _error(status: int, code: str, detail: str, headers: dict[str, str] | None = None,
           errors: list[dict[str, Any]] | None = None) -> JSONResponse:
    body = ErrorBody(error=code, detail=detail, errors=errors)  # type: ignore[arg-type]
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


#: A 422 lists this many problems (then says how many more); each location part and message is
#: cut to these lengths, so a body with a huge key or many errors gets a small answer.
MAX_PROBLEMS = 10
MAX_LOC_PARTS = 16
MAX_LOC_CHARS = 64
MAX_MSG_CHARS = 256


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit - 3]}..."


def _validation_problems(errors: Sequence[Any]) -> tuple[str, list[dict[str, Any]]]:
    """(summary, problems) of pydantic's errors: the first `MAX_PROBLEMS`, each location part
    and message cut short (they may echo the request: an unknown key is its location)."""
    problems = []
    for e in errors[:MAX_PROBLEMS]:
        loc = list(e.get("loc", ()))
        parts: list[str | int] = [p if isinstance(p, int) else _clip(str(p), MAX_LOC_CHARS)
                                  for p in loc[:MAX_LOC_PARTS]]
        if len(loc) > MAX_LOC_PARTS:
            parts.append(f"... ({len(loc) - MAX_LOC_PARTS} more)")
        problems.append({"loc": parts, "msg": _clip(str(e.get("msg", "")), MAX_MSG_CHARS),
                         "type": _clip(str(e.get("type", "")), MAX_LOC_CHARS)})
    summary = "; ".join(f"{'.'.join(map(str, p['loc']))}: {p['msg']}" for p in problems[:5])
    more = len(errors) - min(len(errors), 5)
    if more:
        summary += f"; and {more} more"
    return summary or "invalid request", problems


def require_json(request: Request) -> None:
    """415 for a body declared as something other than JSON (a missing type is read as JSON)."""
    declared = request.headers.get("content-type")
    if declared is None:
        return
    kind = declared.split(";")[0].strip().lower()
    if kind != "application/json" and not (kind.startswith("application/")
                                           and kind.endswith("+json")):
        raise StarletteHTTPException(415, f"send the body as application/json, not {kind!r}")


def _source(network: Any) -> Source:
    if isinstance(network, str):
        return ("builtin", network)
    return ("description", network.model_dump())


def _network_rows() -> list[dict[str, str]]:
    rows = []
    for name in zoo.names():
        light = zoo.PAPER_NETWORKS.get(name, name.removeprefix("onnx:"))
        rows.append({"name": name, "source": "described in convplan (seeded weights)"
                     if light is None else f"onnx light model {light}"})
    return rows


@contextmanager
def _on_stop_signals(stop: Callable[[], None]) -> Iterator[None]:
    """Call ``stop`` (then the handler already installed: uvicorn's) on SIGTERM and SIGINT, so
    requests in flight end at once instead of holding the shutdown until their deadline."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    loop = asyncio.get_running_loop()
    saved = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)

        def handler(signum: int, frame: Any, previous: Any = previous) -> None:
            loop.call_soon_threadsafe(stop)
            if callable(previous):
                previous(signum, frame)
            elif previous != signal.SIG_IGN:    # the default: die of it, as without us
                signal.signal(signum, signal.SIG_DFL)
                signal.raise_signal(signum)

        saved[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, previous in saved.items():
            if signal.getsignal(sig) is not previous:   # leave a handler set since alone
                signal.signal(sig, previous)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The app with ``settings`` (default: from the CONVPLAN_* environment variables)."""
    settings = settings or Settings.from_env()
    pool = WorkerPool(settings.slots, settings.queue, settings.queue_timeout_s,
                      timeout_s=settings.request_timeout_s,
                      memory_bytes=settings.worker_memory_bytes or None,
                      grace_s=settings.kill_grace_s)
    jobs = JobTable(settings)
    retry = {"Retry-After": str(settings.retry_after_s)}

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        pool.start()
        jobs.start()
        try:
            with _on_stop_signals(pool.shut_down):
                yield
        finally:
            pool.stop()         # bounded: SIGTERM, SIGKILL after the grace
            await anyio.to_thread.run_sync(jobs.stop)

    app = FastAPI(
        title="convplan", version=_version(), lifespan=lifespan,
        description="Choose a GEMM-based convolution algorithm per CNN layer under a peak-memory "
                    "cap, run the network and measure the memory promise.")
    app.state.settings, app.state.pool, app.state.jobs = settings, pool, jobs
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes,
                       json_limit=settings.max_json_body_bytes,
                       timeout_s=settings.body_timeout_s)
    v1_security: list[Any] = []
    errors = ERRORS
    if settings.api_key:
        app.add_middleware(ApiKeyMiddleware, key=settings.api_key)   # outermost: checked first
        v1_security = [Security(APIKeyHeader(name="X-API-Key", auto_error=False))]
        errors = {**ERRORS, 401: {"model": ErrorBody, "description": "No valid X-API-Key."}}
    json_body = [Depends(require_json), *v1_security]

    # -- errors ----------------------------------------------------------------------------------
    @app.exception_handler(ServiceError)
    async def service_error(_: Request, error: ServiceError) -> JSONResponse:
        return _error(error.status, error.code, error.message,
                      retry if error.status in (503, 504) else None)

    @app.exception_handler(Saturated)
    async def saturated(_: Request, __: Saturated) -> JSONResponse:
        return _error(503, "busy", "the server is at its limit of concurrent heavy requests; "
                                   f"retry in {settings.retry_after_s} s", retry)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        summary, problems = _validation_problems(error.errors())
        return _error(422, "invalid_request", summary, errors=problems)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, error: StarletteHTTPException) -> JSONResponse:
        code = _ERROR_CODES.get(error.status_code, f"http_{error.status_code}")
        return _error(error.status_code, code, str(error.detail), error.headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        log.error("unhandled error on %s %s", request.method, request.url.path,
                  exc_info=error)
        return _error(500, "internal_error", "internal server error (logged on the server)")

    # -- light ---------------------------------------------------------------------------------
    @app.get("/healthz", response_model=Health, tags=["service"],
             responses={503: {"model": Health, "description": "Unhealthy: no worker can make "
                                                              "progress (`detail` says why).",
                              "headers": _RETRY}})
    async def healthz() -> Any:
        """Whether heavy requests can be served (some worker process alive and within its
        deadline), and how busy the slots are; never needs the API key, costs nothing."""
        healthy, why, counts = pool.health()
        health = Health(status="ok" if healthy else "unhealthy", version=app.version,
                        slots=pool.slots, busy=pool.busy, waiting=pool.waiting,
                        workers=counts, replaced=pool.replaced,  # type: ignore[arg-type]
                        error=None if healthy else "unhealthy", detail=None if healthy else why)
        return JSONResponse(health.model_dump(exclude_none=True),
                            status_code=200 if healthy else 503,
                            headers=None if healthy else retry)

    algorithm_rows = [a.describe() for a in registry.all_algorithms()]

    @app.get("/v1/algorithms", response_model=list[AlgorithmInfo], tags=["catalogue"],
             responses={k: v for k, v in errors.items() if k == 401},
             dependencies=v1_security)
    async def algorithms() -> list[dict[str, Any]]:
        """The registered convolution algorithms: layouts, limits, workspace formula."""
        return algorithm_rows

    network_rows = _network_rows()

    @app.get("/v1/networks", response_model=list[NetworkInfo], tags=["catalogue"],
             responses={k: v for k, v in errors.items() if k == 401},
             dependencies=v1_security)
    async def networks() -> list[dict[str, str]]:
        """The built-in networks (a request may also give a description or an ONNX file)."""
        return network_rows

    # -- heavy -----------------------------------------------------------------------------------
    @app.post("/v1/plan", response_model=PlanDocument, responses=errors, tags=["planning"],
              dependencies=json_body)
    async def plan(body: PlanBody) -> dict[str, Any]:
        """The fastest plan under the memory cap (an ILP), with every candidate and four
        baselines: the same document as `convplan plan --json`."""
        options = body.model_dump(exclude={"network"})
        return await pool.run(service.plan_task, _source(body.network), options, settings,
                              pass_deadline=True)

    @app.post("/v1/plan/onnx", response_model=PlanDocument, responses=errors,
              tags=["planning"], dependencies=v1_security)
    async def plan_onnx(form: Annotated[PlanOnnxForm, Form(media_type="multipart/form-data")]
                        ) -> dict[str, Any]:
        """As /v1/plan, for an uploaded ONNX file (multipart: `file` and the option fields)."""
        data = await form.file.read()
        return await pool.run(service.plan_task, ("onnx", data),
                              form.model_dump(exclude={"file"}), settings, pass_deadline=True)

    @app.post("/v1/pareto", response_model=ParetoResponse, responses=errors, tags=["planning"],
              dependencies=json_body)
    async def pareto(body: ParetoBody) -> dict[str, Any]:
        """The time / peak-memory frontier (fastest plan over a sweep of caps) and the
        baselines."""
        options = body.model_dump(exclude={"network", "points"})
        return await pool.run(service.pareto_task, _source(body.network), options,
                              body.points, settings, pass_deadline=True)

    @app.post("/v1/run", response_model=RunResponse, responses=errors, tags=["running"],
              dependencies=json_body)
    async def run(body: RunBody) -> dict[str, Any]:
        """Run a plan (or plan first under `memory_cap`): the output, the measured time and
        peak memory next to the predicted peak."""
        options = body.model_dump(exclude={"network", "plan"})
        if body.plan is not None:
            options["plan"] = {"network": body.plan.network, "assignment": body.plan.assignment,
                               "layouts": body.plan.layouts, "threads": body.plan.threads}
        return await pool.run(service.run_task, _source(body.network), options, settings,
                              pass_deadline=True)

    # -- jobs ------------------------------------------------------------------------------------
    @app.post("/v1/profile", status_code=202, response_model=JobCreated, tags=["jobs"],
              responses=errors, dependencies=json_body)
    async def profile(body: ProfileBody, request: Request, response: Response
                      ) -> dict[str, Any]:
        """Start measuring every cost a plan of the network needs (kept in the cost store);
        poll GET /v1/jobs/{id}. The network is built first (in a worker), so a bad one is
        refused here as /v1/plan refuses it, and takes no job."""
        if isinstance(body.network, str) and body.network not in zoo.names():
            raise ServiceError(404, "unknown_network", f"unknown network {body.network!r}; "
                               f"built in: {', '.join(zoo.names())}")
        service.plan_request(CostOptions(threads=body.threads).model_dump(), settings)
        source = _source(body.network)
        jobs.check_room()
        if source[0] != "builtin":      # (a built-in network is valid: its name was checked)
            await pool.run(validate_task, source, settings)
        job = jobs.submit("profile", (source, body.threads, body.budget_s))
        url = str(request.url_for("job", job_id=job.id).path)
        response.headers["Location"] = url
        return {"id": job.id, "status": job.status, "url": url}

    @app.get("/v1/jobs/{job_id}", response_model=Job, tags=["jobs"], name="job",
             responses={k: v for k, v in errors.items() if k in (401, 404, 422)},
             dependencies=v1_security)
    async def job(job_id: str) -> dict[str, Any]:
        """A job's status, progress and (when finished) its result or error."""
        found = jobs.get(job_id)
        if found is None:
            raise ServiceError(404, "unknown_job", f"no job {job_id!r} (jobs are kept in "
                               "memory; the oldest finished ones are dropped)")
        return found

    return app


app = create_app()
