"""The one exception hierarchy: every error a client can cause is a :class:`LeadscoreError`.

Each subclass says once which HTTP status, problem type and title it answers with, so the HTTP
layer renders any of them as ``application/problem+json`` (RFC 9457) in one handler, and no
route translates exceptions by hand. The module is plain Python on purpose: the platform
adapters raise these errors too, and they must not depend on the web framework.

Problem types are ``urn:leadscore:problem:<type>``; the list is in ``docs/errors.md``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Self, TypedDict


class FieldProblem(TypedDict):
    """One bad field of a request: ``{"field": "events[2].occurred_at", "message": "..."}``."""

    field: str
    message: str


class LeadscoreError(Exception):
    """Base of every error with a meaning for the caller (status, problem type, title)."""

    status: ClassVar[int] = 500
    problem_type: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal Server Error"

    def __init__(
        self,
        detail: str,
        *,
        errors: Sequence[FieldProblem] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors: list[FieldProblem] | None = list(errors) if errors is not None else None
        self.headers: dict[str, str] | None = dict(headers) if headers is not None else None


# -- 400 -------------------------------------------------------------------------------------


class BadRequest(LeadscoreError):
    status = 400
    problem_type = "bad-request"
    title = "Bad request"


class InvalidJson(BadRequest):
    problem_type = "invalid-json"
    title = "The body is not JSON"


class BadCursor(BadRequest):
    """A cursor this API did not issue (or issued for another list)."""

    problem_type = "bad-cursor"
    title = "Invalid cursor"

    def __init__(self, message: str = "is not a cursor issued by this API") -> None:
        super().__init__(f"cursor: {message}", errors=[{"field": "cursor", "message": message}])


class InvalidPayload(BadRequest):
    """A platform's webhook body that cannot be read as that platform's payload."""

    problem_type = "invalid-payload"
    title = "Unreadable webhook payload"


# -- 401 / 403 -------------------------------------------------------------------------------


class Unauthenticated(LeadscoreError):
    status = 401
    problem_type = "unauthenticated"
    title = "Unauthenticated"


class WebhookUnauthenticated(Unauthenticated):
    """A webhook request that does not prove it comes from the platform (signature, token)."""

    problem_type = "webhook-unauthenticated"
    title = "Webhook not authenticated"


class Forbidden(LeadscoreError):
    status = 403
    problem_type = "forbidden"
    title = "Forbidden"


class SourceNotConfigured(Forbidden):
    """An inbound webhook source without its secret: refused until the operator sets it."""

    problem_type = "source-not-configured"
    title = "Webhook source not configured"


# -- 404 -------------------------------------------------------------------------------------


class NotFound(LeadscoreError):
    """Every missing resource answers with the same problem type; the detail names it."""

    status = 404
    problem_type = "not-found"
    title = "Not found"


class LeadNotFound(NotFound):
    def __init__(self, lead_id: str) -> None:
        super().__init__(f"no lead with id {lead_id!r}")
        self.lead_id = lead_id


class MethodNotAllowed(LeadscoreError):
    status = 405
    problem_type = "method-not-allowed"
    title = "Method not allowed"


# -- 409 / 413 / 422 / 429 / 503 -------------------------------------------------------------


class Conflict(LeadscoreError):
    status = 409
    problem_type = "conflict"
    title = "Conflict with the resource's state"


class BodyTooLarge(LeadscoreError):
    status = 413
    problem_type = "body-too-large"
    title = "Request body too large"

    def __init__(self, limit: int) -> None:
        super().__init__(f"the request body is larger than the limit of {limit} bytes")
        self.limit = limit


class InvalidInput(LeadscoreError):
    """Input that parses but breaks a rule; ``errors`` names each bad field."""

    status = 422
    problem_type = "validation"
    title = "Invalid request"

    @classmethod
    def field(cls, field: str, message: str) -> Self:
        """One bad field, named alike in ``detail`` and ``errors`` (so are its subclasses')."""
        return cls(f"{field}: {message}", errors=[{"field": field, "message": message}])

    @classmethod
    def fields(cls, errors: Sequence[FieldProblem]) -> Self:
        return cls(summarise(errors), errors=errors)


class RateLimited(LeadscoreError):
    """Over a rate limit (``LEADSCORE_RATE_LIMIT_*``); ``Retry-After`` says when to come back."""

    status = 429
    problem_type = "rate-limited"
    title = "Too many requests"


class Unavailable(LeadscoreError):
    status = 503
    problem_type = "unavailable"
    title = "Service unavailable"


# -- validation messages ---------------------------------------------------------------------

#: Where FastAPI says an input came from; not part of the field's name for the client.
_REQUEST_LOCATIONS = frozenset({"body", "query", "path", "header", "cookie"})
#: Prefixes pydantic puts before messages of custom validators; they tell a client nothing.
_NOISE_PREFIXES = ("Value error, ", "Assertion failed, ")


def field_path(
    loc: Sequence[str | int], *, default: str = "body", from_request: bool = True
) -> str:
    """``("body", "events", 2, "lead", "email")`` → ``events[2].lead.email``.

    ``from_request`` says the location starts with where FastAPI found the input (``body``,
    ``query``...); a model validated by hand has no such prefix, and a field may be named so.
    """
    parts = list(loc)
    if from_request and parts and parts[0] in _REQUEST_LOCATIONS:
        parts = parts[1:]
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or default


def describe_validation(
    errors: Sequence[Mapping[str, Any]], *, default: str = "body", from_request: bool = True
) -> list[FieldProblem]:
    """Pydantic's error dicts as ``[{field, message}]``: the one formatter the service uses."""
    out: list[FieldProblem] = []
    for error in errors:
        message = str(error.get("msg", "is invalid"))
        for prefix in _NOISE_PREFIXES:
            message = message.removeprefix(prefix)
        if error.get("type") == "json_invalid":
            message = "is not valid JSON"
        loc = tuple(error.get("loc", ()))
        field = field_path(loc, default=default, from_request=from_request)
        # A validator that looked inside a value (ingest/storable.py) says where in it.
        cause = (error.get("ctx") or {}).get("error")
        inner = getattr(cause, "path", None)
        if isinstance(inner, str) and inner:
            field += inner if inner.startswith("[") else f".{inner}"
            message = str(getattr(cause, "message", message))
        out.append({"field": field, "message": message})
    return out


def summarise(errors: Sequence[FieldProblem]) -> str:
    return "; ".join(f"{e['field']}: {e['message']}" for e in errors)
