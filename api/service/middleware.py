"""ASGI middleware of the service: the request-body limits, which act before any route reads
the body (the API key is a dependency: `deps.require_api_key`).

The body limit counts the bytes actually received, so a chunked upload without Content-Length
is stopped too, not only an honest header; and the whole body must arrive within a deadline, so
a client trickling bytes cannot hold a connection (and the memory of what it sent) for ever.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` mid-body; an HTTPException, so FastAPI's body parsing passes
    it on unchanged and the app's handler answers 413."""

    def __init__(self, limit: int, setting: str = "CONVPLAN_MAX_BODY", what: str = "") -> None:
        super().__init__(413, f"the request body is larger than this server's limit of "
                              f"{limit} bytes{what} ({setting})")


class BodyTooSlow(HTTPException):
    """Raised from ``receive`` when the body has not arrived within its deadline (408)."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(408, f"the request body did not arrive within {timeout_s:g} s "
                              "(CONVPLAN_BODY_TIMEOUT)")


async def _send_json(send: Send, status: int, body: dict[str, Any],
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": data})


def _is_multipart(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"content-type":
            return value.split(b";")[0].strip().lower().startswith(b"multipart/")
    return False


class BodyLimitMiddleware:
    """413 for a body over its limit: at once from Content-Length, else while counting; 408
    for a body not received within ``timeout_s`` seconds of the request's start.

    A multipart body (an ONNX upload) may have ``limit`` bytes; any other body (JSON: a
    missing Content-Type is read as JSON) ``json_limit`` (default ``limit``), which is far
    smaller: a JSON body is parsed whole, into objects many times its size, before the
    route can count its layers."""

    def __init__(self, app: ASGIApp, limit: int, timeout_s: float | None = None,
                 json_limit: int | None = None) -> None:
        self.app = app
        self.limit = limit
        self.json_limit = limit if json_limit is None else json_limit
        self.timeout_s = timeout_s

    def _too_large(self, multipart: bool) -> BodyTooLarge:
        if multipart:
            return BodyTooLarge(self.limit)
        return BodyTooLarge(self.json_limit, "CONVPLAN_MAX_JSON_BODY",
                            " for a JSON body (a multipart ONNX upload may have "
                            f"{self.limit})")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        multipart = _is_multipart(scope["headers"])
        limit = self.limit if multipart else self.json_limit
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_json(send, 400, {"error": "bad_request",
                                                 "detail": "Content-Length is not a number"})
                    return
                if declared > limit:
                    await _send_json(send, 413, {"error": "body_too_large",
                                                 "detail": self._too_large(multipart).detail})
                    return
        received = 0
        started = False
        complete = False
        loop = asyncio.get_running_loop()
        deadline = None if self.timeout_s is None else loop.time() + self.timeout_s

        async def counted() -> Message:
            nonlocal received, complete
            if complete or deadline is None:    # (after the body: waiting for a disconnect)
                message = await receive()
            else:
                try:
                    async with asyncio.timeout_at(deadline):
                        message = await receive()
                except TimeoutError:
                    raise BodyTooSlow(self.timeout_s or 0) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise self._too_large(multipart)
                complete = not message.get("more_body", False)
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except BodyTooLarge as error:   # read outside a route (the app did not answer)
            if started:
                raise
            await _send_json(send, 413, {"error": "body_too_large", "detail": error.detail})
        except BodyTooSlow as error:
            if started:
                raise
            await _send_json(send, 408, {"error": "body_timeout", "detail": error.detail})
