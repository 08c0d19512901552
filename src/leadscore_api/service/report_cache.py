"""The dashboard's reports, computed at most once per interval per view and kept warm.

Why: the first page's report is one grouped query over a quarter of history, about 250 ms of
CPU on 100,000 leads, and a wall screen or a sales team reloading the page would pay it on every
load. KPIs over 90 days do not change meaningfully within a minute, so each view (period,
filters, ruleset text) is computed at most once per ``ttl`` seconds per process and the page says
when its figures were computed. A background loop recomputes the views asked for recently before
they expire, so a page in use is always answered from memory; a view nobody asked for in
``keep_warm`` seconds is dropped. ``/v1/reports`` is not cached: the API answers exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from leadscore_api.service import reports
from leadscore_api.service.rulesets import RulesetRegistry
from leadscore_api.storage.base import utcnow

log = logging.getLogger("leadscore.reports")

#: A view nobody asked for in this many seconds is no longer kept warm.
KEEP_WARM_SECONDS = 600.0

CacheKey = tuple[reports.ReportFilter, str]


@dataclass
class _Entry:
    report: reports.Report
    computed_at: datetime
    computed_mono: float
    asked_mono: float


@dataclass(frozen=True)
class CachedReport:
    report: reports.Report
    #: When the figures were computed (the page shows it).
    computed_at: datetime


class ReportCache:
    """Reports by view, each at most ``ttl`` seconds old (``ttl`` 0: always computed)."""

    def __init__(
        self,
        ttl: float,
        *,
        keep_warm: float = KEEP_WARM_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl = ttl
        self.keep_warm = keep_warm
        self._clock = clock
        self._entries: dict[CacheKey, _Entry] = {}
        self._lock = threading.Lock()
        #: How many reports were computed (for tests and the curious).
        self.computed = 0

    @staticmethod
    def key(registry: RulesetRegistry, query: reports.ReportFilter) -> CacheKey:
        """A view: the filter, and the text of the ruleset it is computed with (an
        activation gives a new key, so nothing computed under the old rules is served)."""
        return query, registry.rulesets[query.model].sha256

    def report(
        self, session: Session, registry: RulesetRegistry, query: reports.ReportFilter
    ) -> CachedReport:
        key = self.key(registry, query)
        now = self._clock()
        entry = self._entries.get(key)
        if entry is not None and now - entry.computed_mono < self.ttl:
            entry.asked_mono = now
            return CachedReport(entry.report, entry.computed_at)
        return self._compute(session, registry, query, key, asked=now)

    def _compute(
        self,
        session: Session,
        registry: RulesetRegistry,
        query: reports.ReportFilter,
        key: CacheKey,
        *,
        asked: float | None,
    ) -> CachedReport:
        computed_at = utcnow()
        report = reports.build_report(session, registry, query, now=computed_at)
        now = self._clock()
        with self._lock:
            self.computed += 1
            previous = self._entries.get(key)
            last_asked = asked if asked is not None else (previous.asked_mono if previous else now)
            if self.ttl > 0:
                self._entries[key] = _Entry(report, computed_at, now, last_asked)
        return CachedReport(report, computed_at)

    def ensure(
        self,
        session_factory: sessionmaker[Session],
        registry: RulesetRegistry,
        query: reports.ReportFilter,
    ) -> bool:
        """Keep one view computed whether or not anyone asks (the dashboard's default page,
        so that even its first load after a start is answered from memory); True if computed."""
        if self.ttl <= 0:
            return False
        key = self.key(registry, query)
        now = self._clock()
        entry = self._entries.get(key)
        if entry is not None:
            entry.asked_mono = now
            if now - entry.computed_mono < self.ttl * 0.75:
                return False
        with session_factory() as session:
            self._compute(session, registry, query, key, asked=now)
        return True

    def refresh_due(self, session_factory: sessionmaker[Session], registry: RulesetRegistry) -> int:
        """Recompute the views asked for recently that are (nearly) due; drop the others.

        Runs in a thread of the warming loop; one view's failure is logged, not raised.
        """
        if self.ttl <= 0:
            return 0
        now = self._clock()
        done = 0
        with self._lock:
            entries = list(self._entries.items())
        for key, entry in entries:
            if now - entry.asked_mono > self.keep_warm:
                with self._lock:
                    self._entries.pop(key, None)
                continue
            query, sha256 = key
            loaded = registry.rulesets.get(query.model)
            if loaded is None or loaded.sha256 != sha256:
                with self._lock:
                    self._entries.pop(key, None)
                continue
            if now - entry.computed_mono < self.ttl * 0.75:
                continue
            try:
                with session_factory() as session:
                    self._compute(session, registry, query, key, asked=None)
                done += 1
            except Exception:
                log.exception("could not refresh a dashboard report; it is computed on demand")
        return done


def default_view(registry: RulesetRegistry) -> reports.ReportFilter:
    """The view the dashboard opens on: the last 90 days, no filters, the primary model."""
    return reports.make_filter(registry, start=None, end=None, model=None, source=None, owner=None)


async def keep_warm(
    cache: ReportCache,
    session_factory: sessionmaker[Session],
    registry: Callable[[], RulesetRegistry],
    stop: asyncio.Event,
) -> None:
    """Compute the default view at once, then refresh it and the views in use every quarter of
    the cache time until ``stop`` is set. A failure is logged; the page computes on demand."""
    interval = max(1.0, cache.ttl / 4)

    def round_() -> None:
        current = registry()
        try:
            cache.ensure(session_factory, current, default_view(current))
        except Exception:
            log.exception("could not compute the dashboard's default view")
        cache.refresh_due(session_factory, current)

    while not stop.is_set():
        if cache.ttl > 0:
            await asyncio.to_thread(round_)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=interval)
