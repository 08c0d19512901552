"""Pure ASGI middleware: body size limit and request metrics.

Pure ASGI (not ``BaseHTTPMiddleware``) so that the body is never buffered by the middleware
itself and streaming bodies are counted as they arrive.
"""

from __future__ import annotations

import json
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from leadscore_api.api.metrics import Metrics
from leadscore_api.api.problems import PROBLEM_MEDIA_TYPE, problem_body
from leadscore_api.errors import BadRequest, BodyTooLarge, LeadscoreError


class BodyLimitMiddleware:
    """Refuse bodies over ``limit`` bytes with 413, by Content-Length or while streaming.

    A declared Content-Length over the limit is refused before the app runs. Otherwise the
    ``receive`` channel counts bytes and raises ``BodyTooLarge`` when the limit is passed; the
    app's exception handler (or this middleware, if the response has not started) turns it into
    a 413 problem.
    """

    def __init__(self, app: ASGIApp, limit: int, path_limits: dict[str, int] | None = None) -> None:
        self.app = app
        self.default_limit = limit
        #: Paths that take bigger bodies (a spreadsheet upload), spooled by their route.
        self.path_limits = dict(path_limits or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.path_limits.get(scope.get("path", ""), self.default_limit)
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_problem(send, scope, BadRequest("Content-Length is not a number"))
                    return
                if declared > limit:
                    await _send_problem(send, scope, BodyTooLarge(limit))
                    return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if started:
                raise
            await _send_problem(send, scope, BodyTooLarge(limit))


async def _send_problem(send: Send, scope: Scope, error: LeadscoreError) -> None:
    """Answer before the app runs (no exception handler there), in the app's problem shape."""
    # Serialised as JSONResponse does, so these bodies look like every other problem.
    body = json.dumps(
        problem_body(error, scope.get("path")), ensure_ascii=False, separators=(",", ":")
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [
                (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class MetricsMiddleware:
    """Count requests and time them, labelled by the matched route's template (not the path).

    Templates keep the label set small (``/v1/leads/{lead_id}``, not one series per lead);
    requests that match no route are labelled ``unmatched``.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def capturing_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, capturing_send)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = str(scope.get("method", "GET"))
            self.metrics.requests.labels(route=template, method=method, status=str(status)).inc()
            self.metrics.latency.labels(route=template, method=method).observe(
                time.perf_counter() - start
            )
