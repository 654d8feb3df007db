"""The routes' dependencies: the settings, the worker pool and the job table of the app that
serves the request (set on ``app.state`` by `app.create_app`), and the two checks of a request
before its route runs: the API key and a JSON content type."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader

from convplan.settings import ServiceSettings

from .workers import JobTable, WorkerPool


def get_settings(request: Request) -> ServiceSettings:
    """The app's limits (CONVPLAN_*), read once when the app was built."""
    return request.app.state.settings


def get_pool(request: Request) -> WorkerPool:
    """The app's worker processes for heavy requests."""
    return request.app.state.pool


def get_jobs(request: Request) -> JobTable:
    """The app's table of profiling jobs."""
    return request.app.state.jobs


SettingsDep = Annotated[ServiceSettings, Depends(get_settings)]
PoolDep = Annotated[WorkerPool, Depends(get_pool)]
JobsDep = Annotated[JobTable, Depends(get_jobs)]

#: The header a client sends its key in; the security scheme /docs shows.
api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False)


def require_api_key(settings: SettingsDep,
                    given: Annotated[str | None, Security(api_key_header)]) -> None:
    """401 unless X-API-Key is the server's key (CONVPLAN_API_KEY), compared in constant
    time. The one API-key check: `create_app` puts it on every /v1 route when a key is set
    (and /healthz and the docs stay open)."""
    expected = settings.key
    if expected is None:
        return
    # the header's bytes as sent (Starlette decodes headers as latin-1), against the key's
    sent = (given or "").encode("latin-1", errors="replace")
    if not hmac.compare_digest(sent, expected.encode()):
        raise HTTPException(401, "a valid X-API-Key header is required",
                            headers={"WWW-Authenticate": "APIKey"})


def require_json(request: Request) -> None:
    """415 for a body declared as something other than JSON (a missing type is read as JSON)."""
    declared = request.headers.get("content-type")
    if declared is None:
        return
    kind = declared.split(";")[0].strip().lower()
    if kind != "application/json" and not (kind.startswith("application/")
                                           and kind.endswith("+json")):
        raise HTTPException(415, f"send the body as application/json, not {kind!r}")


JsonBody = Depends(require_json)
