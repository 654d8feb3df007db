"""How the service answers what goes wrong: every refusal is a JSON `ErrorBody` (`error`, a
short code, and `detail`, in words); unexpected errors are logged and answered with a generic
500 that leaks nothing. `ERRORS` documents the answers in the OpenAPI schema."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from .schemas import ErrorBody
from .work import ServiceError
from .workers import Saturated

log = logging.getLogger("convplan.service")

_ERROR_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found",
                405: "method_not_allowed", 408: "body_timeout", 413: "body_too_large",
                415: "unsupported_media_type", 422: "invalid_request", 503: "busy"}
RETRY = {"Retry-After": {"description": "Seconds to wait before retrying.",
                         "schema": {"type": "string"}}}
#: The error answers of a heavy route (a route documents the subset it can give).
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
                                             "request's).", "headers": RETRY},
    504: {"model": ErrorBody, "description": "The request overran its deadline "
                                             "(CONVPLAN_REQUEST_TIMEOUT); its worker was "
                                             "replaced."},
}
#: Added to every /v1 route when the server has an API key.
UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "No valid X-API-Key."}}

#: A 422 lists this many problems (then says how many more); each location part and message is
#: cut to these lengths, so a body with a huge key or many errors gets a small answer.
MAX_PROBLEMS = 10
MAX_LOC_PARTS = 16
MAX_LOC_CHARS = 64
MAX_MSG_CHARS = 256


def error_response(status: int, code: str, detail: str, headers: dict[str, str] | None = None,
                   errors: list[dict[str, Any]] | None = None) -> JSONResponse:
    """The JSON answer of every refusal."""
    body = ErrorBody(error=code, detail=detail, errors=errors)  # type: ignore[arg-type]
    return JSONResponse(body.model_dump(exclude_none=True), status_code=status, headers=headers)


def retry_after(request: Request) -> dict[str, str]:
    """The Retry-After header of a 503 or 504 (CONVPLAN_RETRY_AFTER)."""
    return {"Retry-After": str(request.app.state.settings.retry_after)}


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else f"{text[:limit - 3]}..."


def validation_problems(errors: Sequence[Any]) -> tuple[str, list[dict[str, Any]]]:
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


# -- the handlers (`app.create_app` installs them) ---------------------------------------------
async def service_error(request: Request, error: Exception) -> JSONResponse:
    """A refusal of the service's own (`ServiceError`): its status, code and message."""
    assert isinstance(error, ServiceError)
    return error_response(error.status, error.code, error.message,
                          retry_after(request) if error.status in (503, 504) else None)


async def saturated(request: Request, _: Exception) -> JSONResponse:
    """No slot and no room to wait: 503 busy with Retry-After."""
    wait = request.app.state.settings.retry_after
    return error_response(503, "busy", "the server is at its limit of concurrent heavy "
                                       f"requests; retry in {wait} s", retry_after(request))


async def invalid(_: Request, error: Exception) -> JSONResponse:
    """A body that does not validate: 422 with the (clipped) problems."""
    assert isinstance(error, RequestValidationError)
    summary, problems = validation_problems(error.errors())
    return error_response(422, "invalid_request", summary, errors=problems)


async def http_error(_: Request, error: Exception) -> JSONResponse:
    """Starlette's and FastAPI's own refusals (404, 405, 413 ...) in the same JSON shape."""
    assert isinstance(error, StarletteHTTPException)
    code = _ERROR_CODES.get(error.status_code, f"http_{error.status_code}")
    return error_response(error.status_code, code, str(error.detail), error.headers)


async def unexpected(request: Request, error: Exception) -> JSONResponse:
    """Anything else: logged here, a generic 500 there."""
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=error)
    return error_response(500, "internal_error", "internal server error (logged on the server)")


#: (exception class, handler), in the order `create_app` installs them.
HANDLERS = ((ServiceError, service_error), (Saturated, saturated),
            (RequestValidationError, invalid), (StarletteHTTPException, http_error),
            (Exception, unexpected))
