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
import threading
from collections import deque
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
#: Events that must be waiting before a writer other than the first takes a group: a batch's
#: worth, never a handful of single events.
DEFAULT_PARALLEL_EVENTS = 100


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

    The first writer takes whatever is waiting whenever anything is. Further writers
    (``writers`` > 1) take a group only while at least ``parallel_events`` events wait: then
    the database works on one group while Python scores the next (on PostgreSQL, batches of 100
    ran 35–40 % faster with a second writer), but a stream of single
    events is never split into smaller groups, which cost more per event than they gained
    (docs/performance.md). Threads start with the first request, so an app that never ingests
    starts none.
    """

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        registry: RulesetRegistry,
        *,
        writers: int = 1,
        max_group_events: int = DEFAULT_MAX_GROUP_EVENTS,
        parallel_events: int = DEFAULT_PARALLEL_EVENTS,
        ingest: Callable[[Session, RulesetRegistry, Sequence[IngestItem]], list[EventResult]]
        | None = None,
    ) -> None:
        self.session_factory = session_factory
        self.registry = registry
        self.writers = max(1, writers)
        self.max_group_events = max(1, max_group_events)
        self.parallel_events = max(1, parallel_events)
        self._ingest = ingest or (
            lambda session, registry, items: ingest_events(session, registry, items)
        )
        self._waiting: deque[_Request] = deque()
        self._waiting_events = 0
        # One lock, two conditions: the first writer is woken by every request, the others
        # only once a batch's worth waits. Waking every writer for every single event cost
        # about a sixth more CPU per event (each woken thread asks for the interpreter lock).
        self._lock = threading.Lock()
        self._first_ready = threading.Condition(self._lock)
        self._more_ready = threading.Condition(self._lock)
        self._threads: list[threading.Thread] = []
        self._closed = False
        #: Figures for /metrics and the benchmarks: groups run, requests in them.
        self.groups = 0
        self.grouped_requests = 0

    async def submit(self, items: Sequence[IngestItem]) -> list[EventResult]:
        """Ingest ``items`` (one request's) and return once they are committed."""
        loop = asyncio.get_running_loop()
        request = _Request(items, loop, loop.create_future())
        with self._lock:
            if self._closed:
                raise RuntimeError("the ingest writer is closed")
            if len(self._threads) < self.writers:
                self._start()
            self._waiting.append(request)
            self._waiting_events += len(items)
            self._first_ready.notify()
            if self._waiting_events >= self.parallel_events:
                self._more_ready.notify()
        return await request.future

    def close(self) -> None:
        """Finish the queued requests, then stop the writers."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            threads = list(self._threads)
            self._first_ready.notify_all()
            self._more_ready.notify_all()
        for thread in threads:
            thread.join(timeout=30)

    def _start(self) -> None:
        """Start the writers (called with ``_lock`` held)."""
        while len(self._threads) < self.writers:
            first = not self._threads
            thread = threading.Thread(
                target=self._run,
                args=(first,),
                name=f"leadscore-ingest-{len(self._threads)}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    def _take(self, first: bool) -> list[_Request] | None:
        """The next group for a writer, waiting until there is one; None once closed and done."""
        ready = self._first_ready if first else self._more_ready
        with self._lock:
            while not (
                self._waiting
                and (first or self._closed or self._waiting_events >= self.parallel_events)
            ):
                if self._closed and not self._waiting:
                    return None
                ready.wait()
            group: list[_Request] = []
            size = 0
            while self._waiting and size < self.max_group_events:
                request = self._waiting.popleft()
                group.append(request)
                size += len(request.items)
            self._waiting_events -= size
            # Figures for /metrics, counted under the lock (several writers).
            self.groups += 1
            self.grouped_requests += len(group)
            return group

    def _run(self, first: bool) -> None:
        while (group := self._take(first)) is not None:
            self._run_group(group)

    def _run_group(self, group: list[_Request]) -> None:
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
