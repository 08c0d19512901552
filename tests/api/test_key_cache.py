"""API keys are checked from a short-lived cache: cheap requests, and revocation still bites."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import event as sa_event
from tests.api.helpers import auth
from tests.conftest import TEST_ADMIN_KEY, make_settings

from leadscore_api.app import create_app
from leadscore_api.config import Settings
from leadscore_api.storage.migrate import upgrade_database

TTL = 0.6


@pytest.fixture
def two_replicas(database_url: str) -> Iterator[tuple[TestClient, TestClient, FastAPI]]:
    settings: Settings = make_settings(database_url, api_key_cache_seconds=TTL)
    upgrade_database(database_url)
    first, second = create_app(settings), create_app(settings)
    admin = {"Authorization": f"Bearer {TEST_ADMIN_KEY}"}
    with (
        TestClient(first, headers=admin, raise_server_exceptions=False) as a,
        TestClient(second, headers=admin, raise_server_exceptions=False) as b,
    ):
        yield a, b, second


def _new_key(client: TestClient) -> tuple[str, str]:
    response = client.post("/v1/api-keys", json={"name": "crm", "scopes": ["leads:read"]})
    assert response.status_code == 201, response.text
    body = response.json()
    return body["id"], body["key"]


def _leads(client: TestClient, key: str) -> int:
    return client.get("/v1/leads", headers=auth(key)).status_code


def test_a_known_key_is_not_looked_up_again_within_the_cache_time(
    two_replicas: tuple[TestClient, TestClient, FastAPI],
) -> None:
    a, b, second_app = two_replicas
    _key_id, key = _new_key(a)
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    engine = second_app.state.engine
    sa_event.listen(engine, "before_cursor_execute", record)
    try:
        assert _leads(b, key) == 200
        first_lookups = sum("api_keys" in s for s in statements)
        assert _leads(b, key) == 200
        assert _leads(b, key) == 200
    finally:
        sa_event.remove(engine, "before_cursor_execute", record)
    assert first_lookups == 1
    assert sum("api_keys" in s for s in statements) == 1


def test_revocation_is_immediate_here_and_within_the_cache_time_on_another_replica(
    two_replicas: tuple[TestClient, TestClient, FastAPI],
) -> None:
    a, b, _ = two_replicas
    key_id, key = _new_key(a)
    assert _leads(a, key) == 200
    assert _leads(b, key) == 200  # now cached on both replicas
    assert a.delete(f"/v1/api-keys/{key_id}").status_code == 204
    assert _leads(a, key) == 401  # the replica that revoked it forgets it at once
    deadline = time.monotonic() + TTL + 2
    while _leads(b, key) == 200:
        assert time.monotonic() < deadline, "the other replica kept a revoked key too long"
        time.sleep(0.05)
    assert _leads(b, key) == 401


def test_a_wrong_secret_for_a_cached_key_id_is_refused(
    two_replicas: tuple[TestClient, TestClient, FastAPI],
) -> None:
    a, _b, _ = two_replicas
    _key_id, key = _new_key(a)
    assert _leads(a, key) == 200
    forged = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    assert _leads(a, forged) == 401
