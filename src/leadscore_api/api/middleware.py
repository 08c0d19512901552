"""Pure ASGI middleware: request ids and the access log, body size limit, request metrics.

Pure ASGI (not ``BaseHTTPMiddleware``) so that the body is never buffered by the middleware
itself and streaming bodies are counted as they arrive.
"""

from __future__ import annotations

import json
import re
import time
import uuid

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from leadscore_api import logs
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


#: A request id a client or proxy may give: short, and nothing that could forge a log line.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
_access = logs.get_logger("leadscore.access")


class RequestContextMiddleware:
    """Give each request an id, bind it into every log line, return it, log the request.

    The id is the caller's ``X-Request-ID`` when it looks like one (a proxy's or a client's, so
    their logs and ours can be joined), otherwise a new one. The access line names the path and
    the route template, never the query string: emails and webhook tokens travel there.
    """

    def __init__(self, app: ASGIApp, access_log: bool = True) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = ""
        for name, value in scope.get("headers", ()):
            if name == b"x-request-id":
                text = value.decode("latin-1")
                if _REQUEST_ID.match(text):
                    request_id = text
                break
        request_id = request_id or uuid.uuid4().hex
        header = (b"x-request-id", request_id.encode("ascii"))
        start = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message = {**message, "headers": [*message.get("headers", []), header]}
            await send(message)

        with logs.bind_request(request_id):
            try:
                await self.app(scope, receive, send_with_id)
            finally:
                if self.access_log:
                    route = scope.get("route")
                    _access.info(
                        "request",
                        method=scope.get("method"),
                        path=scope.get("path"),
                        route=getattr(route, "path", None),
                        status=status,
                        duration_ms=round((time.perf_counter() - start) * 1000, 2),
                    )
