"""The dashboard's report is computed at most once a minute per view and kept warm in use."""

from __future__ import annotations

import re
import time

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker
from tests.api.helpers import BIG_MANUFACTURER, event
from tests.conftest import TEST_ADMIN_KEY, make_settings

from leadscore_api.app import create_app
from leadscore_api.service import reports
from leadscore_api.service.report_cache import ReportCache, default_view
from leadscore_api.service.rulesets import RulesetRegistry
from leadscore_api.storage.migrate import upgrade_database

from .test_pages import sign_in


def _cohort(page: str) -> int:
    found = re.search(r'<strong id="cohort">(\d+)</strong>', page)
    assert found, page[:500]
    return int(found.group(1))


def test_the_page_reuses_its_report_within_the_cache_time(database_url: str) -> None:
    upgrade_database(database_url)
    app = create_app(make_settings(database_url, dashboard_cache_seconds=60))
    admin = {"Authorization": f"Bearer {TEST_ADMIN_KEY}"}
    with TestClient(app, headers=admin) as client:
        _page_cache_case(app, client, TestClient(app))


def _page_cache_case(app: FastAPI, client: TestClient, anon_client: TestClient) -> None:
    cache: ReportCache = app.state.report_cache
    assert cache.ttl == 60
    client.post("/v1/events", json=event("form.submitted", attributes=BIG_MANUFACTURER))
    status, _cookie = sign_in(anon_client, TEST_ADMIN_KEY)
    assert status == 303
    # Another view than the default one, which the warming loop computes on its own.
    first = anon_client.get("/dashboard", params={"period": "365"})
    assert first.status_code == 200 and _cohort(first.text) == 1
    assert 'id="computed-at"' in first.text
    computed = cache.computed
    # A new lead arrives; within the minute the page shows the figures it computed before.
    client.post("/v1/events", json=event("form.submitted", email="second@x.it"))
    again = anon_client.get("/dashboard", params={"period": "365"})
    assert cache.computed == computed
    assert _cohort(again.text) == 1
    # Another view (another period) is computed on its own.
    other = anon_client.get("/dashboard", params={"period": "30"})
    assert cache.computed == computed + 1 and _cohort(other.text) == 2


def test_the_default_view_is_computed_before_anyone_asks(database_url: str) -> None:
    upgrade_database(database_url)
    app = create_app(make_settings(database_url, dashboard_cache_seconds=60))
    with TestClient(app):
        cache: ReportCache = app.state.report_cache
        deadline = time.monotonic() + 10
        while cache.computed == 0:
            assert time.monotonic() < deadline, "the default view was not computed at start"
            time.sleep(0.05)
        registry = app.state.registry.snapshot()
        key = cache.key(registry, default_view(registry))
        assert key in cache._entries


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_views_in_use_are_refreshed_before_they_expire_and_idle_ones_dropped(
    app: FastAPI, client: TestClient
) -> None:
    clock = _Clock()
    cache = ReportCache(60, keep_warm=600, clock=clock)
    registry: RulesetRegistry = app.state.registry.snapshot()
    factory: sessionmaker[Session] = app.state.read_session_factory
    query = reports.make_filter(registry, start=None, end=None, model=None, source=None, owner=None)
    with factory() as session:
        first = cache.report(session, registry, query)
    assert cache.computed == 1
    client.post("/v1/events", json=event("form.submitted", attributes=BIG_MANUFACTURER))

    clock.now += 30  # not yet due: nothing recomputed
    assert cache.refresh_due(factory, registry) == 0
    clock.now += 20  # three quarters of the minute passed: refreshed in the background
    assert cache.refresh_due(factory, registry) == 1
    with factory() as session:
        warm = cache.report(session, registry, query)
    assert cache.computed == 2  # served from the refresh, not computed on the request
    assert warm.computed_at > first.computed_at
    assert first.report.leads == 0 and warm.report.leads == 1

    clock.now += 601  # nobody looked for ten minutes: dropped, computed again when asked
    assert cache.refresh_due(factory, registry) == 0
    with factory() as session:
        cache.report(session, registry, query)
    assert cache.computed == 3


def test_no_cache_time_computes_every_load(app: FastAPI, client: TestClient) -> None:
    cache = ReportCache(0)
    registry: RulesetRegistry = app.state.registry.snapshot()
    factory: sessionmaker[Session] = app.state.read_session_factory
    query = reports.make_filter(registry, start=None, end=None, model=None, source=None, owner=None)
    with factory() as session:
        cache.report(session, registry, query)
        cache.report(session, registry, query)
    assert cache.computed == 2
    assert cache.refresh_due(factory, registry) == 0
