"""Structured logs: one JSON object a line, with the request id and lead id of what it is about.

Configured once per process (``leadscore serve``, ``leadscore worker``) by :func:`configure`.
Everything goes through the standard ``logging`` module, so the lines of uvicorn, SQLAlchemy,
Alembic and our own ``logging.getLogger`` calls come out in the same format as the
``structlog`` loggers, and every line carries what is bound in the context: the middleware binds
``request_id`` for the length of a request (``bind_request``), so each line written while
serving it names it.

Privacy: a log line names leads by id, never by email. Request lines carry the path, never the
query string (``?email=...``, a webhook ``?token=...`` and the dashboard's ``?token=<key>`` live
there); :func:`safe_url` strips credentials and the query from a URL before it is logged.
Whatever slips through (a database error quoting the row it refused) has its email addresses
replaced by ``<email>`` as the line is written.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import IO, Any, Literal
from urllib.parse import urlsplit, urlunsplit

import structlog

LogFormat = Literal["json", "console"]

#: Processors every line goes through, ours and those of plain ``logging`` calls.
_SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
]
#: The handler :func:`configure` installed on the root logger (replaced when called again).
_HANDLER_NAME = "leadscore"


#: An email address, ASCII or not, as it may appear inside any text (a database error's detail
#: quotes the row it refused, an exception message its input).
_EMAIL = re.compile(r"[^\s@\"'<>(),;:\[\]=/]+@[^\s@\"'<>(),;:\[\]=/]+\.[^\s@\"'<>(),;:\[\]=/]+")


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return _EMAIL.sub("<email>", value) if "@" in value else value
    if isinstance(value, list | tuple):
        return [_scrub(item) for item in value]
    if isinstance(value, dict):
        return {key: _scrub(item) for key, item in value.items()}
    return value


def _scrub_emails(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """The last line of defence: whatever a message or traceback quotes, no email leaves.

    Our own lines name leads by id; this catches what we do not write ourselves, such as
    PostgreSQL's ``DETAIL: Key (kind, value)=(email, anna@...) already exists``.
    """
    for key, value in event.items():
        event[key] = _scrub(value)
    return event


def _drop_copies(
    _logger: Any, _name: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """A plain ``logging`` record's text is already ``event``; uvicorn's coloured copy is noise."""
    event.pop("message", None)
    event.pop("color_message", None)
    return event


def route_to_stdlib() -> None:
    """Make ``structlog.get_logger`` write through ``logging`` (idempotent; no handler added).

    ``create_app`` calls it, so that an app in tests or embedded elsewhere logs wherever its
    host's ``logging`` is set up to, and ``configure`` decides the format for our commands.
    """
    if structlog.is_configured():
        return
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_SHARED,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )


def configure(fmt: LogFormat = "json", level: str = "INFO", stream: IO[str] | None = None) -> None:
    """Send every log line of the process to ``stream`` (stderr) as JSON or readable text."""
    route_to_stdlib()
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[*_SHARED, structlog.stdlib.ExtraAdder(), _drop_copies],
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            _scrub_emails,
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # httpx and httpcore log each request's full URL (a subscriber's ``?token=`` included) at
    # INFO and its headers at DEBUG: only their warnings are wanted.
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # uvicorn's own loggers write through the root handler, in the same format.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


def unconfigure() -> None:
    """Remove the handler :func:`configure` installed (tests configure and restore)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)


@contextmanager
def bind_request(request_id: str) -> Iterator[None]:
    """``request_id`` on every line logged in this context (the request's task and threads)."""
    tokens = structlog.contextvars.bind_contextvars(request_id=request_id)
    try:
        yield
    finally:
        structlog.contextvars.reset_contextvars(**tokens)


def safe_url(url: str) -> str:
    """A URL as it may be logged: no ``user:password@``, no query string, no fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparseable url>"
    netloc = f"[{host}]{port}" if ":" in host else f"{host}{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def get_logger(name: str) -> Any:
    """A structlog logger: ``log.info("event", lead_id=...)``; key-value pairs become fields."""
    return structlog.get_logger(name)
