"""Rate limits per API key and per webhook source: 429 problem with Retry-After, counted in
Redis across replicas (the machine's Redis at 127.0.0.1:6379, a fresh key prefix per test) or
in the process, and served uncounted when Redis is down."""

from __future__ import annotations

import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from tests.conftest import TEST_ADMIN_KEY, auth, make_settings
from tests.server import free_port

from leadscore_api.app import create_app
from leadscore_api.config import SettingsError, load_settings
from leadscore_api.storage.migrate import upgrade_database

REDIS_URL = os.environ.get("LEADSCORE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture
def redis_url() -> str:
    """The test Redis; a test that needs it fails in CI if it is down, and skips elsewhere."""
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=1).ping()
    except redis.RedisError:
        if os.environ.get("CI") or os.environ.get("LEADSCORE_TEST_REDIS_URL"):
            raise
        pytest.skip(f"no Redis at {REDIS_URL}")
    return REDIS_URL


def _client(database_url: str, **overrides: Any) -> TestClient:
    settings = make_settings(database_url, webhook_form_secret="form-secret", **overrides)
    return TestClient(
        create_app(settings),
        headers=auth(TEST_ADMIN_KEY),
        raise_server_exceptions=False,
    )


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only: the counters live in Redis or in memory, never in the database."""
    return f"sqlite:///{tmp_path / 'leadscore.db'}"


@pytest.fixture
def limited(database_url: str) -> Iterator[TestClient]:
    upgrade_database(database_url)
    with _client(database_url, rate_limit_api="3/minute", rate_limit_webhooks="2/minute") as c:
        yield c


def _form(client: TestClient, email: str) -> Any:
    return client.post(
        "/v1/webhooks/form?token=form-secret",
        content=f"email={email}".encode(),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )


def test_a_key_over_its_limit_gets_a_429_problem_with_retry_after(limited: TestClient) -> None:
    made = limited.post("/v1/api-keys", json={"name": "reader", "scopes": ["leads:read"]})
    assert made.status_code == 201
    for _ in range(2):
        assert limited.get("/v1/leads").status_code == 200
    refused = limited.get("/v1/leads")
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    assert refused.json()["type"] == "urn:leadscore:problem:rate-limited"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    # Another key has its own count, and so do the webhook sources.
    assert limited.get("/v1/leads", headers=auth(made.json()["key"])).status_code == 200
    assert _form(limited, "a@x.it").status_code == 200


def test_a_webhook_source_over_its_limit_gets_a_429(limited: TestClient) -> None:
    assert _form(limited, "a@x.it").status_code == 200
    assert _form(limited, "b@x.it").status_code == 200
    refused = _form(limited, "c@x.it")
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 1
    # Refused before it was read: nothing of c@x.it was stored.
    leads = limited.get("/v1/leads").json()["items"]
    assert sorted(lead["email"] for lead in leads) == ["a@x.it", "b@x.it"]


def test_no_limit_when_unset(client: TestClient) -> None:
    assert client.app.state.rate_limits is None  # type: ignore[attr-defined]
    for _ in range(20):
        assert client.get("/healthz").status_code == 200
        assert client.get("/v1/leads").status_code == 200


def test_replicas_sharing_redis_share_the_limit(database_url: str, redis_url: str) -> None:
    upgrade_database(database_url)
    shared = {
        "rate_limit_api": "4/minute",
        "redis_url": redis_url,
        "redis_key_prefix": f"test-{uuid.uuid4().hex}",
    }
    with _client(database_url, **shared) as one, _client(database_url, **shared) as two:
        assert [one.get("/v1/leads").status_code for _ in range(2)] == [200, 200]
        assert [two.get("/v1/leads").status_code for _ in range(2)] == [200, 200]
        assert one.get("/v1/leads").status_code == 429
        assert two.get("/v1/leads").status_code == 429
        # Another deployment on the same Redis (another prefix) counts for itself.
        with _client(
            database_url, **{**shared, "redis_key_prefix": "other-" + uuid.uuid4().hex}
        ) as three:
            assert three.get("/v1/leads").status_code == 200


def test_redis_down_keeps_serving_and_says_so(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    upgrade_database(database_url)
    down = f"redis://127.0.0.1:{free_port()}/0"
    with (
        caplog.at_level(logging.WARNING, logger="leadscore.rate_limits"),
        _client(database_url, rate_limit_api="1/minute", redis_url=down) as c,
    ):
        assert [c.get("/v1/leads").status_code for _ in range(3)] == [200, 200, 200]
    warnings = [r for r in caplog.records if r.name == "leadscore.rate_limits"]
    assert len(warnings) == 1  # once, not once per request
    assert "serving anyway" in warnings[0].getMessage()


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("LEADSCORE_RATE_LIMIT_API", "lots"),
        ("LEADSCORE_RATE_LIMIT_WEBHOOKS", "10 per fortnight"),
        ("LEADSCORE_REDIS_URL", "http://127.0.0.1:6379"),
    ],
)
def test_bad_rate_settings_name_the_variable(
    variable: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as raised:
        load_settings()
    assert variable in str(raised.value)
    assert value not in str(raised.value)
