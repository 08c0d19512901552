"""Group commit: concurrent ingest requests of one process share a writer and a transaction.

Why: every request paying its own transaction meant, on SQLite, sixteen request threads
queueing on the one write lock, each paying a ``BEGIN IMMEDIATE``, a dozen statements and a
commit for a single event; on PostgreSQL, a commit (a WAL flush) and a round trip per
statement per event. A writer thread instead takes whatever requests are waiting, runs them
as one batch in one transaction (one statement per table for all of them) and answers each
request only after that transaction has committed: each request's effects are still atomic
and durable before it is answered, they just share the commit with their neighbours.

A request never pays for another's bad input: when a shared transaction fails, each of its
requests is run again alone, so the failure reaches only the request that caused it. The
request's coroutine waits on a future the writer resolves, so a request holds no thread while
it waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session, sessionmaker

from leadscore_api.ingest.parsing import IngestItem
from leadscore_api.service.ingestion import EventResult, ingest_events
from leadscore_api.service.rulesets import RulesetRegistry
from leadscore_api.storage.unit_of_work import in_transaction

log = logging.getLogger("leadscore.ingest")

#: Events one shared transaction takes at most; a request is never split across two.
DEFAULT_MAX_GROUP_EVENTS = 1000


@dataclass(eq=False)
class _Request:
    items: Sequence[IngestItem]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[EventResult]]


_Outcome = tuple[_Request, list[EventResult] | None, BaseException | None]


def _settle(outcomes: list[_Outcome]) -> None:
    for request, results, error in outcomes:
        if request.future.done():  # the client went away and the request was cancelled
            continue
        if error is not None:
            request.future.set_exception(error)
        else:
            assert results is not None
            request.future.set_result(results)


def _resolve(outcomes: list[_Outcome]) -> None:
    """Hand the outcomes to their requests' event loops (a future is not thread-safe).

    One call per loop for the whole group: each ``call_soon_threadsafe`` wakes the loop, and a
    group of single events answered one by one paid a wake-up per request.
    """
    by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].loop, []).append(outcome)
    for loop, settled in by_loop.items():
        # A closed loop (RuntimeError) means nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_settle, settled)


class GroupCommitter:
    """Writer threads that run waiting ingest requests together, one transaction per group.

    ``writers`` threads take groups from one queue. One is the default: SQLite has a single
    writer anyway, and on PostgreSQL two measured slower. Threads start with the first request,
    so an app that never ingests starts none.
    """

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        registry: RulesetRegistry,
        *,
        writers: int = 1,
        max_group_events: int = DEFAULT_MAX_GROUP_EVENTS,
        ingest: Callable[[Session, RulesetRegistry, Sequence[IngestItem]], list[EventResult]]
        | None = None,
    ) -> None:
        self.session_factory = session_factory
        self.registry = registry
        self.writers = max(1, writers)
        self.max_group_events = max(1, max_group_events)
        self._ingest = ingest or (
            lambda session, registry, items: ingest_events(session, registry, items)
        )
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False
        #: Figures for /metrics and the benchmarks: groups run, requests in them.
        self.groups = 0
        self.grouped_requests = 0

    async def submit(self, items: Sequence[IngestItem]) -> list[EventResult]:
        """Ingest ``items`` (one request's) and return once they are committed."""
        loop = asyncio.get_running_loop()
        request = _Request(items, loop, loop.create_future())
        self._start()
        self._queue.put(request)
        return await request.future

    def close(self) -> None:
        """Finish the queued requests, then stop the writers."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            threads = list(self._threads)
        for _ in threads:
            self._queue.put(None)
        for thread in threads:
            thread.join(timeout=30)

    def _start(self) -> None:
        if len(self._threads) >= self.writers:
            return
        with self._lock:
            if self._closed:
                raise RuntimeError("the ingest writer is closed")
            while len(self._threads) < self.writers:
                thread = threading.Thread(
                    target=self._run, name=f"leadscore-ingest-{len(self._threads)}", daemon=True
                )
                thread.start()
                self._threads.append(thread)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            size = len(first.items)
            stop = False
            while size < self.max_group_events:
                try:
                    following = self._queue.get_nowait()
                except queue.Empty:
                    break
                if following is None:
                    stop = True
                    break
                group.append(following)
                size += len(following.items)
            self._run_group(group)
            if stop:
                return

    def _run_group(self, group: list[_Request]) -> None:
        self.groups += 1
        self.grouped_requests += len(group)
        # One frozen set of rulesets per group: an activation on another replica (followed in
        # the background) never changes the rules in the middle of a batch.
        registry = self.registry.snapshot()
        if len(group) == 1:
            _resolve([self._run_alone(group[0], registry)])
            return
        items: list[IngestItem] = [item for request in group for item in request.items]
        try:
            results = in_transaction(
                self.session_factory, lambda session: self._ingest(session, registry, items)
            )
        except Exception as exc:  # one request's problem must not fail its neighbours
            log.info(
                "a shared transaction of %d requests failed (%s); running them one by one",
                len(group),
                type(exc).__name__,
            )
            for request in group:  # each answered as soon as it is done
                _resolve([self._run_alone(request, registry)])
            return
        outcomes: list[_Outcome] = []
        start = 0
        for request in group:
            end = start + len(request.items)
            outcomes.append((request, results[start:end], None))
            start = end
        _resolve(outcomes)

    def _run_alone(self, request: _Request, registry: RulesetRegistry) -> _Outcome:
        try:
            results = in_transaction(
                self.session_factory,
                lambda session: self._ingest(session, registry, request.items),
            )
        except BaseException as exc:
            return (request, None, exc)
        return (request, results, None)
