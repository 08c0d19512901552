"""What the storage layer promises under load: JSON kept exact, checkpoints off the request
path on SQLite, plans that follow the data on PostgreSQL."""

from __future__ import annotations

import time

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text

from leadscore_api.storage.checkpoints import SAFETY_NET_PAGES, WalCheckpointer
from leadscore_api.storage.db import make_engine

from .helpers import event


def test_nan_in_an_event_body_is_invalid_json(client: TestClient) -> None:
    body = b'{"id": "e-nan", "type": "page.viewed", "occurred_at": "2026-01-01T00:00:00Z",'
    body += b' "lead": {"email": "a@b.it"}, "properties": {"ratio": NaN}}'
    response = client.post("/v1/events", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/problem+json")
    assert "NaN is not a JSON number" in response.json()["detail"]
    assert client.get("/v1/leads", params={"email": "a@b.it"}).json()["items"] == []


@pytest.mark.parametrize(
    "value",
    [2**70, -(2**80) + 1, 123456789012345678901234567890, 0.1, "città ✓", [1, {"a": None}]],
)
def test_attribute_values_come_back_exactly(client: TestClient, value: object) -> None:
    """Integers beyond 64 bits cannot go through orjson: the fallback must keep them exact."""
    accepted = client.post("/v1/events", json=event("form.submitted", attributes={"crm_id": 1}))
    lead_id = accepted.json()["results"][0]["lead_id"]
    response = client.patch(f"/v1/leads/{lead_id}", json={"attributes": {"crm_id": value}})
    assert response.status_code == 200, response.text
    assert client.get(f"/v1/leads/{lead_id}").json()["attributes"]["crm_id"] == value


def test_sqlite_checkpoints_in_the_background(client: TestClient, app: FastAPI) -> None:
    checkpointer: WalCheckpointer | None = app.state.checkpointer
    if app.state.engine.dialect.name != "sqlite":
        assert checkpointer is None
        return
    assert checkpointer is not None
    with app.state.engine.connect() as connection:
        pages = connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
    assert pages == SAFETY_NET_PAGES

    batch = {"events": [event(email=f"p{i}@ckpt.it") for i in range(50)]}
    assert client.post("/v1/events", json=batch).status_code == 200
    deadline = time.monotonic() + 10
    last = checkpointer.last
    while time.monotonic() < deadline:
        last = checkpointer.last
        if last is not None and 0 < last.log_frames == last.checkpointed_frames:
            break
        time.sleep(checkpointer.interval / 2)
    assert last is not None and last.log_frames > 0
    assert last.checkpointed_frames == last.log_frames


def test_checkpointer_is_only_for_sqlite_files() -> None:
    assert WalCheckpointer.for_engine(make_engine("sqlite://")) is None
    assert WalCheckpointer.for_engine(make_engine("sqlite:///:memory:")) is None


def test_postgresql_plans_every_execution(pg_url: str) -> None:
    """Plans cached while the tables were empty must not outlive the empty tables."""
    engine = make_engine(pg_url)
    try:
        with engine.connect() as connection:
            mode = connection.execute(text("SHOW plan_cache_mode")).scalar()
    finally:
        engine.dispose()
    assert mode == "force_custom_plan"
