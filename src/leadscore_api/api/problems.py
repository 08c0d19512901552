"""Errors as ``application/problem+json`` (RFC 9457), whatever raised them.

Clients get one shape for every failure: ``type``, ``title``, ``status``, ``detail``,
``instance`` and, for invalid input, ``errors: [{field, message}]`` naming each bad field. Every
error a client can cause is a :class:`~leadscore_api.errors.LeadscoreError` and is rendered by
one handler here; FastAPI's own validation and routing errors are mapped onto the same types.
An unexpected exception becomes a bare 500 problem: the traceback goes to the log, never to the
caller.
"""

from __future__ import annotations

import logging
import re
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException

from leadscore_api.errors import (
    InvalidInput,
    InvalidJson,
    LeadscoreError,
    MethodNotAllowed,
    NotFound,
    describe_validation,
)
from leadscore_api.storage.db import DatabaseUnavailable, is_unavailable

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "urn:leadscore:problem:"

log = logging.getLogger("leadscore.api")


class FieldError(BaseModel):
    field: str = Field(description="Where the problem is, e.g. `events[2].occurred_at`.")
    message: str


class ProblemDetail(BaseModel):
    """The body of every error answer."""

    type: str = Field(examples=["urn:leadscore:problem:validation"])
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[FieldError] | None = None


def problem_body(error: LeadscoreError, instance: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + error.problem_type,
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
        "instance": instance,
    }
    if error.errors is not None:
        body["errors"] = list(error.errors)
    return body


def problem_response(request: Request, error: LeadscoreError) -> JSONResponse:
    return JSONResponse(
        problem_body(error, request.url.path),
        status_code=error.status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=error.headers,
    )


async def _on_leadscore_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, LeadscoreError)
    return problem_response(request, exc)


async def _on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's own answers (no such route, wrong method) in the same shape."""
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers) if exc.headers else None
    error: LeadscoreError
    if exc.status_code == 404:
        error = NotFound(f"no route matches {request.method} {request.url.path}")
    elif exc.status_code == 405:
        allowed = allowed_methods(request, (headers or {}).get("Allow"))
        error = MethodNotAllowed(
            f"{request.method} is not allowed on {request.url.path}; allowed: {allowed}",
            headers={**(headers or {}), "Allow": allowed},
        )
    else:
        error = _FrameworkError(exc.status_code, str(exc.detail), headers)
    return problem_response(request, error)


def path_templates(app: Any) -> list[tuple[re.Pattern[str], set[str]]]:
    """Each path of the app's OpenAPI document as a pattern (one named group per parameter)
    with its methods; built once per app. The document lists every route, included routers'
    too, which Starlette's route list (lazily included in FastAPI 0.165) does not."""
    templates: list[tuple[re.Pattern[str], set[str]]] | None = getattr(
        app.state, "path_templates", None
    )
    if templates is None:
        templates = [
            (
                re.compile(re.sub(r"\\{([^/}]+)\\}", r"(?P<\1>[^/]+)", re.escape(path)) + "$"),
                {method.upper() for method in item if method in _OPERATIONS},
            )
            for path, item in app.openapi().get("paths", {}).items()
        ]
        app.state.path_templates = templates
    return templates


def allowed_methods(request: Request, named: str | None) -> str:
    """Every method some route takes on this path (RFC 9110: ``Allow`` lists them all).

    Starlette names only the methods of the first route whose path matched, and this app
    declares GET and POST of one path as two routes; the OpenAPI document knows them all.
    """
    methods = {m.strip().upper() for m in (named or "").split(",") if m.strip()}
    for pattern, path_methods in path_templates(request.app):
        if pattern.match(request.url.path):
            methods |= path_methods
    if "GET" in methods:
        methods.add("HEAD")
    return ", ".join(sorted(methods))


class _FrameworkError(LeadscoreError):
    """Any other status Starlette raises itself; kept as it is, in the problem shape."""

    problem_type = "http-error"

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None) -> None:
        super().__init__(detail, headers=headers)
        self.status = status  # type: ignore[misc]
        self.title = HTTPStatus(status).phrase  # type: ignore[misc]


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if any(error.get("type") == "json_invalid" for error in errors):
        return problem_response(request, InvalidJson("the request body is not valid JSON"))
    return problem_response(request, InvalidInput.fields(describe_validation(errors)))


async def _on_unhandled(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.errors.labels(kind=type(exc).__name__).inc()
    return problem_response(
        request, LeadscoreError("the server failed to handle this request; it has been logged")
    )


async def _on_database_error(request: Request, exc: Exception) -> JSONResponse:
    """A database that is away is a 503 with Retry-After (clients and load balancers retry),
    not a 500; any other database error is a bug and goes to the unhandled path."""
    if not is_unavailable(exc):
        return await _on_unhandled(request, exc)
    log.warning(
        "database unavailable on %s %s: %s", request.method, request.url.path, type(exc).__name__
    )
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.errors.labels(kind="DatabaseUnavailable").inc()
    return problem_response(request, DatabaseUnavailable())


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(LeadscoreError, _on_leadscore_error)
    app.add_exception_handler(DBAPIError, _on_database_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(Exception, _on_unhandled)


_PROBLEM_CONTENT = {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/ProblemDetail"}}}
_OPERATIONS = frozenset({"get", "put", "post", "delete", "patch", "head", "options"})


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """For a route's ``responses=``: documents its problem answers in the OpenAPI description."""
    return {
        status: {"content": dict(_PROBLEM_CONTENT), "description": HTTPStatus(status).phrase}
        for status in statuses
    }


def common_problems(path: str, method: str, operation: dict[str, Any]) -> set[int]:
    """The problem statuses any operation of this shape can answer, whatever its route says.

    They come from layers every route shares: the body limit (413) and the JSON parser (400)
    for a body, validation (422) for parameters and bodies, the input guard (404) for a path
    with parameters, authentication (401, 403) and rate limits (429), and the database (503).
    """
    statuses = {503}
    parameters = operation.get("parameters", [])
    if "requestBody" in operation:
        statuses |= {400, 413, 422}
    if parameters:
        statuses.add(422)
    if any(parameter.get("in") == "path" for parameter in parameters):
        statuses.add(404)
    if operation.get("security"):
        statuses |= {401, 403, 429}
    if path.startswith("/v1/webhooks/") and method == "post":
        statuses.add(429)
    return statuses


def document_problems(schema: dict[str, Any]) -> None:
    """Make the OpenAPI description say what the service really answers on failure.

    Every 4xx/5xx body is ``application/problem+json`` with the ``ProblemDetail`` schema
    (FastAPI would document its own ``application/json`` validation error), and every
    operation lists the statuses of :func:`common_problems`.
    """
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            if method not in _OPERATIONS:
                continue
            responses = operation.setdefault("responses", {})
            for status in common_problems(path, method, operation):
                responses.setdefault(str(status), {"description": HTTPStatus(status).phrase})
            for status, response in responses.items():
                if status[0] in "45":
                    response["content"] = dict(_PROBLEM_CONTENT)
            operation["responses"] = dict(sorted(responses.items()))
    components = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
