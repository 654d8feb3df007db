"""ASGI middleware of the service: the request-body limit and the optional API key.

Both act before any route reads the body. The body limit counts the bytes actually received,
so a chunked upload without Content-Length is stopped too, not only an honest header.
"""

from __future__ import annotations

import hmac
import json
from typing import Any

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Paths that never need the API key: liveness and the documentation.
OPEN_PATHS = frozenset({"/healthz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` mid-body; an HTTPException, so FastAPI's body parsing passes
    it on unchanged and the app's handler answers 413."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than this server's limit of "
                              f"{limit} bytes (CONVPLAN_MAX_BODY)")


async def _send_json(send: Send, status: int, body: dict[str, Any],
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": data})


class BodyLimitMiddleware:
    """413 for a body over ``limit`` bytes: at once from Content-Length, else while counting."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_json(send, 400, {"error": "bad_request",
                                                 "detail": "Content-Length is not a number"})
                    return
                if declared > self.limit:
                    await _send_json(send, 413, {"error": "body_too_large",
                                                 "detail": BodyTooLarge(self.limit).detail})
                    return
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
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


class ApiKeyMiddleware:
    """401 unless the X-API-Key header matches (compared in constant time)."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self.key = key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope["headers"] if k == b"x-api-key"), b"")
        if not hmac.compare_digest(given, self.key):
            await _send_json(send, 401, {"error": "unauthorized",
                                         "detail": "a valid X-API-Key header is required"},
                             [(b"www-authenticate", b"APIKey")])
            return
        await self.app(scope, receive, send)
