"""A small recording webhook receiver on loopback, for tests, the benchmark and local trials.

It is a real HTTP server (``http.server`` in a thread, HTTP/1.1 keep-alive) that records every
request and answers from a programmable plan: a status, a delay, headers. Tests use it to play a
receiver that fails, is slow, answers 410 or is down; ``bench/delivery.py`` uses it as the
far end. It is not meant to face the internet.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class Reply:
    """One planned answer."""

    status: int = 200
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"


@dataclass(frozen=True)
class Received:
    """One request as it arrived, with the status it was answered."""

    path: str
    headers: dict[str, str]
    body: bytes
    received_at: float
    status: int

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    #: The default backlog (5) resets connections when a worker opens dozens at once.
    request_queue_size = 256
    receiver: Receiver


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    #: Headers and body are separate writes: without TCP_NODELAY, Nagle's algorithm and the
    #: peer's delayed ACK add about 40 ms to every keep-alive request.
    disable_nagle_algorithm = True
    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        arrived = time.time()
        receiver = self.server.receiver
        webhook_id = self.headers.get("webhook-id", "")
        overlap = receiver._begin(webhook_id)
        try:
            reply = receiver._next_reply()
            if reply.delay:
                time.sleep(reply.delay)
            received = Received(
                path=self.path,
                headers={k.lower(): v for k, v in self.headers.items()},
                body=body,
                received_at=arrived,
                status=reply.status,
            )
            receiver._record(received)
            # Logged before the answer: a receiver killed after this line but before answering
            # makes the sender try again (a duplicate), never a delivery missing from the log.
            receiver._log(received, overlap)
            try:
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)
            except OSError:
                self.close_connection = True  # the sender gave up (timeout): nothing to answer
        finally:
            receiver._end(webhook_id)

    def do_GET(self) -> None:
        """``GET /_stats?after=N``: what arrived after the N first requests, as JSON.

        For a receiver running in another process (the benchmark); ``count`` is the total.
        """
        requests = self.server.receiver.requests
        query = parse_qs(urlsplit(self.path).query)
        after = int(query.get("after", ["0"])[0] or 0)
        body = json.dumps(
            {
                "count": len(requests),
                "requests": [
                    {"webhook_id": r.webhook_id, "received_at": r.received_at, "status": r.status}
                    for r in requests[after:]
                ],
            }
        ).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep test and bench output quiet."""


class Receiver:
    """``with Receiver() as r: ... r.url ... r.wait_for(3)``; ``r.plan(Reply(500), Reply(500))``."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self.port = port
        self.default = Reply()
        self._plan: deque[Reply] = deque()
        self._requests: list[Received] = []
        self._cond = threading.Condition()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        #: Requests being handled now, per ``webhook-id``; a second one of the same message
        #: while the first is in flight is an overlap (the sender delivered it twice at once).
        self._in_flight: dict[str, int] = {}
        self.overlaps: list[str] = []
        #: JSON lines, one per request, appended and flushed as they arrive (``--log``): the
        #: record outlives the process, so a receiver killed and restarted keeps its history.
        self.log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/hook"

    def start(self) -> Receiver:
        server = _Server((self.host, self.port), _Handler)
        server.receiver = self
        self.port = server.server_address[1]
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening: connections are refused from now on (the port stays known)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def plan(self, *replies: Reply) -> None:
        """Answer the next requests with ``replies``, then with :attr:`default`."""
        with self._cond:
            self._plan.extend(replies)

    def _begin(self, webhook_id: str) -> bool:
        """Count a request of ``webhook_id`` in; True when another one is still in flight."""
        with self._cond:
            count = self._in_flight.get(webhook_id, 0) + 1
            self._in_flight[webhook_id] = count
            if count > 1 and webhook_id:
                self.overlaps.append(webhook_id)
            return count > 1 and bool(webhook_id)

    def _end(self, webhook_id: str) -> None:
        with self._cond:
            count = self._in_flight.get(webhook_id, 1) - 1
            if count:
                self._in_flight[webhook_id] = count
            else:
                self._in_flight.pop(webhook_id, None)

    def _log(self, request: Received, overlap: bool) -> None:
        if self.log_path is None:
            return
        line = json.dumps(
            {
                "webhook_id": request.webhook_id,
                "type": request.headers.get("webhook-type") or _event_type(request.body),
                "received_at": request.received_at,
                "logged_at": time.time(),
                "status": request.status,
                "overlap": overlap,
            }
        )
        with self._cond, self.log_path.open("a", encoding="utf-8") as out:
            out.write(line + "\n")

    def _next_reply(self) -> Reply:
        with self._cond:
            return self._plan.popleft() if self._plan else self.default

    def _record(self, request: Received) -> None:
        with self._cond:
            self._requests.append(request)
            self._cond.notify_all()

    @property
    def requests(self) -> list[Received]:
        with self._cond:
            return list(self._requests)

    def delivered(self) -> list[Received]:
        """The requests answered 2xx."""
        return [r for r in self.requests if 200 <= r.status < 300]

    def wait_for(self, count: int, timeout: float = 10.0, *, delivered: bool = False) -> bool:
        """Wait until ``count`` requests (2xx-answered ones with ``delivered``) have arrived."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                seen = self._requests
                if delivered:
                    seen = [r for r in seen if 200 <= r.status < 300]
                if len(seen) >= count:
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)


def _event_type(body: bytes) -> str | None:
    try:
        payload = json.loads(body)
    except ValueError:
        return None
    kind = payload.get("type") if isinstance(payload, dict) else None
    return kind if isinstance(kind, str) else None


@contextmanager
def receiving(host: str = "127.0.0.1", port: int = 0) -> Iterator[Receiver]:
    """A started :class:`Receiver`, stopped on exit."""
    receiver = Receiver(host, port).start()
    try:
        yield receiver
    finally:
        receiver.stop()


def main(argv: list[str] | None = None) -> None:
    """``python -m tests.receiver --port 9000``: run one until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--status", type=int, default=200, help="status of every answer")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each answer")
    parser.add_argument("--log", type=Path, default=None, help="append one JSON line a request")
    args = parser.parse_args(argv)
    receiver = Receiver(args.host, args.port)
    receiver.default = Reply(args.status, delay=args.delay)
    receiver.log_path = args.log
    receiver.start()
    print(receiver.url, flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        receiver.stop()
        sys.exit(0)


if __name__ == "__main__":
    main()
