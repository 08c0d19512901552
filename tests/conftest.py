"""Shared fixtures: one database per test, on SQLite and (when configured) on PostgreSQL.

Every test that takes ``database_url`` (directly or through ``settings``/``app``/``client``) runs
once per backend: a fresh SQLite file, and, when ``LEADSCORE_TEST_DATABASE_URL`` is set, the
PostgreSQL database it names with its ``public`` schema dropped and recreated first. The suite
runs in two processes (pytest-xdist, ``-n 2`` in ``pyproject.toml``), each on a PostgreSQL
database of its own (``_worker_database``).

Fixtures other suites rely on: ``database_url``, ``settings``, ``app``, ``client`` (admin key),
``make_api_key`` (a key with chosen scopes), ``auth`` (the header for a key), ``session_factory``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from leadscore_api.app import create_app
from leadscore_api.config import BUNDLED_RULES_DIR, Settings
from leadscore_api.storage.migrate import upgrade_database

TEST_ADMIN_KEY = "test-admin-key"


def _worker_database(url: str | None) -> str | None:
    """Under pytest-xdist, a database of each worker's own next to the configured one.

    Tests reset schema ``public`` of the database they are given: two workers on one database
    would drop each other's tables. Each worker gets ``<database>_<worker>`` (created when it is
    missing, on the same server and with the same user), and the variable is pointed at it so
    that servers started in subprocesses use it too.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not url or not worker:
        return url
    parsed = make_url(url)
    name = f"{parsed.database}_{worker}"
    engine = create_engine(parsed, poolclass=NullPool, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            exists = conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name})
            if not exists:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        engine.dispose()
    own = parsed.set(database=name).render_as_string(hide_password=False)
    os.environ["LEADSCORE_TEST_DATABASE_URL"] = own
    return own


PG_URL = _worker_database(os.environ.get("LEADSCORE_TEST_DATABASE_URL") or None)

_BACKENDS = ["sqlite"] + (["postgresql"] if PG_URL else [])


def reset_postgres(url: str) -> None:
    """Give a PostgreSQL test a database with nothing in it (schema ``public`` recreated)."""
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
    finally:
        engine.dispose()


@pytest.fixture(params=_BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A clean, not yet migrated database: a temp SQLite file, or the test PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'leadscore-test.db'}"
    assert PG_URL is not None
    reset_postgres(PG_URL)
    return PG_URL


@pytest.fixture
def pg_url() -> str:
    """The PostgreSQL test database, clean; tests that need PostgreSQL itself are skipped without it."""
    if not PG_URL:
        pytest.skip("LEADSCORE_TEST_DATABASE_URL is not set")
    reset_postgres(PG_URL)
    return PG_URL


def make_settings(database_url: str, **overrides: Any) -> Settings:
    """Settings for tests: nothing read from the environment or a ``.env`` file."""
    # Any, as in ``load_settings``: each value is whatever Settings accepts for that field, and
    # pydantic checks it.
    values: dict[str, Any] = {
        "database_url": database_url,
        "rules_dir": BUNDLED_RULES_DIR,
        "admin_api_key": TEST_ADMIN_KEY,
        "webhook_allow_private_targets": True,
        "run_worker": False,
        # The bundled example reps would take the leads of every test; tests that want the
        # directory file synced say so.
        "sync_rep_directory": False,
        # Tests read the figures they have just written; the dashboard's one-minute report
        # cache is tested on its own (tests/dashboard/test_report_cache.py).
        "dashboard_cache_seconds": 0,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url)


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    """The application on a migrated database (lifespan not started: use ``client``)."""
    upgrade_database(settings.database_url)
    return create_app(settings)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    """A client with the admin key, lifespan started (rulesets recorded, hooks running)."""
    with TestClient(
        app,
        base_url="http://testserver",
        headers={"Authorization": f"Bearer {TEST_ADMIN_KEY}"},
        raise_server_exceptions=False,
    ) as test_client:
        yield test_client


@pytest.fixture
def anon_client(app: FastAPI, client: TestClient) -> TestClient:
    """A client without credentials on the same (started) app."""
    return TestClient(app, base_url="http://testserver", raise_server_exceptions=False)


@pytest.fixture
def session_factory(app: FastAPI, client: TestClient) -> sessionmaker[Session]:
    """The app's own session factory, to look at (or arrange) rows directly."""
    factory: sessionmaker[Session] = app.state.session_factory
    return factory


def auth(key: str) -> dict[str, str]:
    """The Authorization header for ``key``."""
    return {"Authorization": f"Bearer {key}"}


class MakeApiKey(Protocol):
    """The ``make_api_key`` fixture: scopes in, a new secret key out."""

    def __call__(self, *scopes: str, name: str = ...) -> str: ...


@pytest.fixture
def make_api_key(client: TestClient) -> MakeApiKey:
    """``make_api_key("leads:read", ..., name="x")`` → a new secret key with exactly those scopes."""

    def _make(*scopes: str, name: str = "test key") -> str:
        response = client.post("/v1/api-keys", json={"name": name, "scopes": list(scopes)})
        assert response.status_code == 201, response.text
        key: str = response.json()["key"]
        return key

    return _make
