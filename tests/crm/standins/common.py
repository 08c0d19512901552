"""What every CRM stand-in shares: the call log and the way it is served on loopback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from tests.server import Server


@dataclass(frozen=True)
class Call:
    """One request the connector made, as the CRM received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: Any  # parsed JSON, or the text (form bodies, XML), or None

    @property
    def line(self) -> str:
        """``METHOD /path`` — what tests compare to list the calls in order."""
        return f"{self.method} {self.path}"


@dataclass
class CallLog:
    calls: list[Call] = field(default_factory=list)

    async def record(self, request: Request) -> Call:
        raw = await request.body()
        body: Any
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        call = Call(
            method=request.method,
            path=request.url.path,
            query=dict(request.query_params),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body,
        )
        self.calls.append(call)
        return call

    def lines(self) -> list[str]:
        return [call.line for call in self.calls]

    def clear(self) -> None:
        self.calls.clear()


@contextmanager
def serve(app: FastAPI) -> Iterator[str]:
    """Serve a stand-in app with real uvicorn on 127.0.0.1; yields its base URL."""
    with Server(app) as base_url:
        yield base_url
