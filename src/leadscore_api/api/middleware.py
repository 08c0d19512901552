"""Pure ASGI middleware: request ids and the access log, body size limit, unstorable input,
request metrics.

Pure ASGI (not ``BaseHTTPMiddleware``) so that streaming bodies are counted as they arrive; only
the input guard reads a body whole, an API body under the body limit, before its route does.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import secrets
import time
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from leadscore_api import logs
from leadscore_api.api.metrics import Metrics
from leadscore_api.api.problems import (
    PROBLEM_MEDIA_TYPE,
    path_templates,
    problem_body,
    problem_response,
)
from leadscore_api.errors import BadRequest, BodyTooLarge, InvalidInput, LeadscoreError, NotFound
from leadscore_api.ingest.storable import (
    SUSPICIOUS_JSON,
    find_problem,
    identifier_problem,
    text_problem,
)


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


class InputGuardMiddleware:
    """Refuse what no database can store before a route sees it (docs/errors.md).

    Routes read paths, query strings and JSON bodies through the framework, which hands them
    on as text: a NUL or a lone surrogate there reaches a SQL parameter and fails there (a 500
    on PostgreSQL). Checking here, once, covers every API route under ``prefix``, new ones
    included; the dashboard's HTML pages answer hostile input with pages of their own. Paths in
    ``per_item_prefixes`` (``POST /v1/events`` and the webhooks) are left to their routes,
    which reject one bad event of a batch alone (``ingest/events.py``) rather than the batch.

    Form bodies are checked like query strings. A request pays only
    a byte test unless its query string or form has escapes or its JSON body has ``\\u``
    escapes or a long exponent (``SUSPICIOUS_JSON``); then it is decoded and walked.
    """

    def __init__(
        self, app: ASGIApp, prefix: str = "/v1/", per_item_prefixes: tuple[str, ...] = ()
    ) -> None:
        self.app = app
        self.prefix = prefix
        self.per_item_prefixes = per_item_prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith(self.prefix):
            await self.app(scope, receive, send)
            return
        if identifier_problem(path):
            await _problem_app(scope, _path_problem(scope, path))(scope, receive, send)
            return
        query: bytes = scope.get("query_string", b"")
        if query and (b"%" in query or not query.isascii()):
            error = _query_problem(query)
            if error is not None:
                await _problem_app(scope, error)(scope, receive, send)
                return
        if scope.get("method") not in ("POST", "PUT", "PATCH") or path.startswith(
            self.per_item_prefixes
        ):
            await self.app(scope, receive, send)
            return
        content_type = ""
        for name, value in scope.get("headers", ()):
            if name == b"content-type":
                content_type = value.decode("latin-1").split(";", 1)[0].strip().lower()
        is_form = content_type == "application/x-www-form-urlencoded"
        if not is_form and not _is_json(content_type):
            await self.app(scope, receive, send)
            return
        body, more = await _read_body(receive)
        error = None
        if is_form:
            if b"%" in body or not body.isascii():
                error = _query_problem(body, "body")
        elif SUSPICIOUS_JSON.search(body):
            error = _body_problem(body)
        if error is not None:
            await _problem_app(scope, error)(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive() if more else {"type": "http.disconnect"}

        await self.app(scope, replay, send)


def _is_json(content_type: str) -> bool:
    """FastAPI reads a body without a media type as JSON too."""
    return not content_type or content_type == "application/json" or content_type.endswith("+json")


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    """The whole body (under the body limit, which wraps ``receive``); whether the client left."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"".join(chunks), False
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks), True


def _path_problem(scope: Scope, path: str) -> LeadscoreError:
    """A path with a control character: 422 naming the parameter that holds it, else 404."""
    app = scope.get("app")
    if app is not None:
        for pattern, _methods in path_templates(app):
            matched = pattern.match(path)
            if matched is None:
                continue
            for name, value in matched.groupdict().items():
                if problem := identifier_problem(value):
                    return InvalidInput.field(name, problem)
    return NotFound(f"no route matches {path!r}")


def _query_problem(query: bytes, where: str = "query") -> LeadscoreError | None:
    """A query string or form body whose names or values cannot be stored, naming the field
    (``where`` when the name itself is the problem)."""
    try:
        pairs = parse_qsl(
            query.decode("latin-1"), keep_blank_values=True, encoding="utf-8", errors="strict"
        )
    except UnicodeDecodeError:
        return InvalidInput.field(where, "is not UTF-8 text")
    for name, value in pairs:
        if problem := text_problem(name):
            return InvalidInput.field(where, f"a parameter name {problem}")
        if problem := text_problem(value):
            return InvalidInput.field(name, problem)
    return None


def _body_problem(body: bytes) -> LeadscoreError | None:
    try:
        # The standard parser, as FastAPI's: it reads NaN and Infinity, which are then refused.
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None  # not JSON: the route answers that itself
    found = find_problem(value)
    if found is None:
        return None
    return InvalidInput.field(found[0] or "body", found[1])


def _problem_app(scope: Scope, error: LeadscoreError) -> ASGIApp:
    """The problem answer as an ASGI app (the app's exception handlers are not reached here)."""
    return problem_response(Request(scope), error)


#: A request id a client or proxy may give: short, and nothing that could forge a log line.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")
_access = logs.get_logger("leadscore.access")


class _RequestIds:
    """32 hex digits per request, unique across processes: a random prefix made once per
    process and a counter. ``uuid4`` would read the kernel's random source on every request, a
    system call that hands the interpreter lock to the writer thread and then waits up to a
    switch interval to get it back."""

    def __init__(self) -> None:
        self.reset()
        # A forked child must not repeat its parent's ids.
        os.register_at_fork(after_in_child=self.reset)

    def reset(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count()

    def __call__(self) -> str:
        return f"{self._prefix}{next(self._counter) & 0xFFFFFFFFFFFFFFFF:016x}"


_new_request_id = _RequestIds()


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
        request_id = request_id or _new_request_id()
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
