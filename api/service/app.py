"""The HTTP service: `convplan serve`, or `uvicorn --factory convplan.api.service.app:create_app`
(the settings are read when the app is made, not when this module is imported). OpenAPI docs at
/docs.

Light requests (health, listings, job status) answer on the event loop; everything that plans,
measures or runs goes to worker processes through `WorkerPool`, whose admission gate answers
503 with Retry-After when saturated. This module only assembles the app: the error handlers
(`errors`), the body limits (`middleware`), the routers (`routers`) with their dependencies
(`deps`, the API key among them) and the life cycle (`lifespan`).
"""

from __future__ import annotations

from fastapi import FastAPI, Security

import convplan
from convplan.settings import ServiceSettings

from . import errors
from .deps import require_api_key
from .lifespan import lifespan
from .middleware import BodyLimitMiddleware
from .routers import catalogue, health, jobs, planning, running
from .workers import JobTable, WorkerPool


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """The app with ``settings`` (default: from the CONVPLAN_* environment variables). Building
    it starts nothing: the worker processes and the job table start with the server."""
    settings = settings or ServiceSettings.from_env()
    app = FastAPI(
        title="convplan", version=convplan.__version__, lifespan=lifespan,
        description="Choose a GEMM-based convolution algorithm per CNN layer under a peak-memory "
                    "cap, run the network and measure the memory promise.")
    app.state.settings = settings
    app.state.pool = WorkerPool.from_settings(settings)
    app.state.jobs = JobTable(settings)

    for kind, handler in errors.HANDLERS:
        app.add_exception_handler(kind, handler)
    app.add_middleware(BodyLimitMiddleware, limit=int(settings.max_body),
                       json_limit=settings.json_body_limit, timeout_s=settings.body_timeout)

    app.include_router(health.router)           # open: liveness needs no key
    keyed = settings.key is not None
    for area in (catalogue, planning, running, jobs):
        app.include_router(area.router,
                           dependencies=[Security(require_api_key)] if keyed else None,
                           responses=errors.UNAUTHORIZED if keyed else None)
    return app
