"""Errors as ``application/problem+json`` (RFC 9457), whatever raised them.

Clients get one shape for every failure: ``type``, ``title``, ``status``, ``detail``,
``instance`` and, for invalid input, ``errors: [{field, message}]`` naming each bad field. An
unexpected exception becomes a bare 500 problem: the traceback goes to the log, never to the
caller.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from leadscore_api.service.ingest import Contention

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


class Problem(Exception):
    """Raise anywhere in a request to answer with a problem document."""

    def __init__(
        self,
        status: int,
        detail: str | None = None,
        *,
        slug: str | None = None,
        title: str | None = None,
        errors: Sequence[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail or title or str(status))
        self.status = status
        self.detail = detail
        self.slug = slug
        self.title = title
        self.errors = list(errors) if errors is not None else None
        self.headers = headers


class BodyTooLarge(Exception):
    """The request body passed ``max_body_bytes`` while it was being read."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body larger than {limit} bytes")
        self.limit = limit


def problem_body(
    status: int,
    detail: str | None = None,
    *,
    slug: str | None = None,
    title: str | None = None,
    instance: str | None = None,
    errors: Sequence[dict[str, str]] | None = None,
) -> dict[str, Any]:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + slug if slug else "about:blank",
        "title": title or phrase,
        "status": status,
        "detail": detail,
        "instance": instance,
    }
    if errors is not None:
        body["errors"] = list(errors)
    return body


def problem_response(
    request: Request | None,
    status: int,
    detail: str | None = None,
    *,
    slug: str | None = None,
    title: str | None = None,
    errors: Sequence[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    instance = request.url.path if request is not None else None
    return JSONResponse(
        problem_body(status, detail, slug=slug, title=title, instance=instance, errors=errors),
        status_code=status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


def field_path(loc: Sequence[str | int]) -> str:
    """``("body", "events", 2, "lead", "email")`` → ``events[2].lead.email``."""
    parts = list(loc)
    if parts and parts[0] in ("body", "query", "path", "header", "cookie"):
        parts = parts[1:]
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "body"


def plain_message(error: Any) -> str:
    """Pydantic's message without its "Value error, " prefix, which tells a client nothing."""
    message = str(error.get("msg", "is invalid"))
    for prefix in ("Value error, ", "Assertion failed, "):
        if message.startswith(prefix):
            return message[len(prefix) :]
    return message


def validation_errors(errors: Sequence[Any]) -> list[dict[str, str]]:
    """Pydantic/FastAPI error dicts → ``[{field, message}]``."""
    out: list[dict[str, str]] = []
    for error in errors:
        loc = tuple(error.get("loc", ()))
        message = plain_message(error)
        if error.get("type") == "json_invalid":
            message = "is not valid JSON"
        out.append({"field": field_path(loc), "message": message})
    return out


def summarise(errors: Sequence[dict[str, str]]) -> str:
    return "; ".join(f"{e['field']}: {e['message']}" for e in errors)


async def _on_problem(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Problem)
    return problem_response(
        request,
        exc.status,
        exc.detail,
        slug=exc.slug,
        title=exc.title,
        errors=exc.errors,
        headers=exc.headers,
    )


async def _on_http_exception(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else None
    if exc.status_code == 404 and detail == "Not Found":
        detail = f"no route matches {request.method} {request.url.path}"
    if exc.status_code == 405:
        detail = f"{request.method} is not allowed on {request.url.path}"
    headers = dict(exc.headers) if exc.headers else None
    return problem_response(request, exc.status_code, detail, headers=headers)


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = validation_errors(exc.errors())
    return problem_response(
        request,
        422,
        summarise(errors),
        slug="validation",
        title="Invalid request",
        errors=errors,
    )


async def _on_body_too_large(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, BodyTooLarge)
    return problem_response(
        request,
        413,
        f"the request body is larger than the limit of {exc.limit} bytes",
        slug="body-too-large",
    )


async def _on_contention(request: Request, exc: Exception) -> JSONResponse:
    return problem_response(
        request,
        503,
        f"{exc}; nothing was written, send the request again",
        slug="contention",
        headers={"Retry-After": "1"},
    )


async def _on_unhandled(request: Request, exc: Exception) -> JSONResponse:
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.errors.labels(kind=type(exc).__name__).inc()
    return problem_response(
        request, 500, "the server failed to handle this request; it has been logged"
    )


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(Problem, _on_problem)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(RequestValidationError, _on_validation)
    app.add_exception_handler(BodyTooLarge, _on_body_too_large)
    app.add_exception_handler(Contention, _on_contention)
    app.add_exception_handler(Exception, _on_unhandled)


#: For route ``responses=``: documents the problem answers in the OpenAPI description.
def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {
        status: {
            "model": ProblemDetail,
            "content": {PROBLEM_MEDIA_TYPE: {}},
            "description": HTTPStatus(status).phrase,
        }
        for status in statuses
    }
