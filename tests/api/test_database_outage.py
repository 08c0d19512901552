"""A database that is away answers 503 with Retry-After (never a 500), and the replica recovers
by itself when it is back; nothing of the refused request was written."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from tests.api.helpers import event
from tests.conftest import PG_URL, TEST_ADMIN_KEY, make_settings
from tests.soak.cluster import Cluster, ClusterUnavailable

from leadscore_api.app import create_app
from leadscore_api.storage.migrate import upgrade_database


def _client(url: str) -> TestClient:
    upgrade_database(url)
    return TestClient(
        create_app(make_settings(url)),
        headers={"Authorization": f"Bearer {TEST_ADMIN_KEY}"},
        raise_server_exceptions=False,
    )


def _assert_unavailable(response: Any) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "2"
    assert response.json()["type"] == "urn:leadscore:problem:database-unavailable"


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    if not PG_URL:
        pytest.skip("LEADSCORE_TEST_DATABASE_URL is not set")
    try:
        with Cluster() as pg:
            yield pg
    except ClusterUnavailable as exc:
        pytest.skip(str(exc))


def test_postgresql_stopped_is_503_with_retry_after_then_the_replica_recovers(
    cluster: Cluster,
) -> None:
    with _client(cluster.url) as client:
        assert client.post("/v1/events", json=event(id="before")).status_code == 200
        cluster.stop()
        _assert_unavailable(client.post("/v1/events", json=event(id="during", minutes=1)))
        _assert_unavailable(client.get("/v1/leads"))
        cluster.start()
        # The pool drops its dead connections by itself (pre-ping): no restart of the replica.
        again = client.post("/v1/events", json=event(id="during", minutes=1))
        assert again.status_code == 200, again.text
        assert again.json()["results"][0]["status"] == "accepted"  # not half-written before
        leads = client.get("/v1/leads").json()["items"]
        assert [lead["email"] for lead in leads] == ["anna.rossi@metalpro.it"]


def test_sqlite_file_out_of_reach_is_503_with_retry_after(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    with _client(f"sqlite:///{folder / 'leadscore.db'}") as client:
        assert client.post("/v1/events", json=event(id="before")).status_code == 200
        engine: Engine = client.app.state.engine  # type: ignore[attr-defined]
        folder.rename(tmp_path / "moved")
        engine.dispose()  # the open connections would still hold the moved file
        _assert_unavailable(client.post("/v1/events", json=event(id="during", minutes=1)))
        (tmp_path / "moved").rename(folder)
        again = client.post("/v1/events", json=event(id="during", minutes=1))
        assert again.json()["results"][0]["status"] == "accepted"
