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
        error = MethodNotAllowed(
            f"{request.method} is not allowed on {request.url.path}", headers=headers
        )
    else:
        error = _FrameworkError(exc.status_code, str(exc.detail), headers)
    return problem_response(request, error)


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


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """For a route's ``responses=``: documents its problem answers in the OpenAPI description."""
    return {
        status: {
            "model": ProblemDetail,
            "content": {PROBLEM_MEDIA_TYPE: {}},
            "description": HTTPStatus(status).phrase,
        }
        for status in statuses
    }
