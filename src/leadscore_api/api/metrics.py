"""Prometheus metrics, one registry per application.

A per-app ``CollectorRegistry`` (instead of the process-global default) lets several apps live
in one process, as they do in the test suite, without "duplicated timeseries" errors.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from leadscore_api.ingest.events import KNOWN_EVENT_TYPES


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "leadscore_http_requests_total",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "leadscore_http_request_duration_seconds",
            "HTTP request latency by route template and method.",
            ["route", "method"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=self.registry,
        )
        self.events = Counter(
            "leadscore_events_total",
            "Ingested events by source (`api` or the webhook's platform), type (unknown types as"
            " `other`) and status (accepted, duplicate, rejected, ignored).",
            ["source", "type", "status"],
            registry=self.registry,
        )
        self.transitions = Counter(
            "leadscore_transitions_total",
            "Lead transitions (lead.mql, lead.tier_changed, ...) by type.",
            ["type"],
            registry=self.registry,
        )
        self.errors = Counter(
            "leadscore_errors_total",
            "Unhandled errors by exception class.",
            ["kind"],
            registry=self.registry,
        )

    def watch_group_commit(self, counts: Callable[[], tuple[int, int]]) -> None:
        """Expose the ingest writer's groups and the requests they held (read at scrape time):
        requests ÷ groups is how many requests shared each commit."""
        registry = self.registry

        class _GroupCommit(Collector):
            def collect(self) -> Iterator[Metric]:
                groups, requests = counts()
                yield CounterMetricFamily(
                    "leadscore_ingest_groups",
                    "Shared ingest transactions (group commits) run.",
                    value=groups,
                )
                yield CounterMetricFamily(
                    "leadscore_ingest_grouped_requests",
                    "POST /v1/events requests run in those transactions.",
                    value=requests,
                )

        registry.register(_GroupCommit())

    def watch_outbox(self, stats: Callable[[], tuple[int, float]]) -> None:
        """Expose the outbound queue, read from the database at scrape time (two indexed
        queries): how many messages wait, and how late the oldest due one is."""
        registry = self.registry
        log = logging.getLogger("leadscore.metrics")

        class _Outbox(Collector):
            def describe(self) -> Iterator[Metric]:
                # Registering asks for the names; without this it would collect, and so query
                # a database that may not exist yet (the OpenAPI document builds an app too).
                yield GaugeMetricFamily("leadscore_outbox_pending", "")
                yield GaugeMetricFamily("leadscore_outbox_lag_seconds", "")

            def collect(self) -> Iterator[Metric]:
                try:
                    depth, lag = stats()
                except Exception:  # a scrape must answer even when the database does not
                    log.warning("could not read the outbox for /metrics", exc_info=True)
                    return
                yield GaugeMetricFamily(
                    "leadscore_outbox_pending",
                    "Outbound webhook messages waiting to be delivered (status pending).",
                    value=depth,
                )
                yield GaugeMetricFamily(
                    "leadscore_outbox_lag_seconds",
                    "How long the oldest due pending message has been waiting past its time"
                    " (0 when none is due): delivery is falling behind when this grows.",
                    value=lag,
                )

        registry.register(_Outbox())

    def record_ingest(self, results: Iterable[object], source: str = "api") -> None:
        """Count events and transitions from ``EventResult``-like objects."""
        for result in results:
            event_type = getattr(result, "type", None)
            label = event_type if event_type in KNOWN_EVENT_TYPES else "other"
            status = str(getattr(result, "status", "?"))
            self.events.labels(source=source, type=label, status=status).inc()
            for transition in getattr(result, "transitions", ()) or ():
                self.transitions.labels(type=str(transition)).inc()
