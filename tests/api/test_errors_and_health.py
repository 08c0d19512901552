"""Problem documents, body limits, health probes and metrics."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx2
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from tests.conftest import TEST_ADMIN_KEY, make_settings

from leadscore_api.app import create_app
from leadscore_api.config import Settings

from .helpers import event


def assert_problem(response: httpx2.Response, status: int) -> dict[str, object]:
    assert response.status_code == status, response.text
    headers = response.headers
    assert headers["content-type"].startswith("application/problem+json")
    body: dict[str, object] = response.json()
    for key in ("type", "title", "status", "detail", "instance"):
        assert key in body
    assert body["status"] == status
    return body


def test_unknown_route_and_method_are_problems(client: TestClient) -> None:
    body = assert_problem(client.get("/v1/nothing-here"), 404)
    assert body["instance"] == "/v1/nothing-here"
    assert_problem(client.put("/v1/events", json={}), 405)


def test_declared_body_over_the_limit_is_413(client: TestClient, settings: Settings) -> None:
    big = b'{"events": [' + b" " * settings.max_body_bytes + b"]}"
    for path in ("/v1/events", "/v1/api-keys", "/v1/leads/lead_x"):
        method = "PATCH" if path.startswith("/v1/leads/") else "POST"
        response = client.request(
            method, path, content=big, headers={"Content-Type": "application/json"}
        )
        assert_problem(response, 413)


def test_streamed_body_over_the_limit_is_413(client: TestClient, settings: Settings) -> None:
    chunk = b" " * 65536

    def stream() -> Iterator[bytes]:
        yield b'{"events": ['
        for _ in range(settings.max_body_bytes // len(chunk) + 2):
            yield chunk
        yield b"]}"

    response = client.post(
        "/v1/events", content=stream(), headers={"Content-Type": "application/json"}
    )
    assert_problem(response, 413)


def test_small_limit_from_settings(database_url: str) -> None:
    from leadscore_api.storage.migrate import upgrade_database

    settings = make_settings(database_url, max_body_bytes=200)
    upgrade_database(database_url)
    with TestClient(
        create_app(settings), headers={"Authorization": f"Bearer {TEST_ADMIN_KEY}"}
    ) as small:
        assert_problem(small.post("/v1/events", json={"events": [event()] * 5}), 413)
        assert small.post("/v1/events", json={"events": []}).status_code == 200


def test_bad_content_length_is_a_problem(client: TestClient) -> None:
    response = client.post(
        "/v1/events",
        content=b"{}",
        headers={"Content-Length": "lots", "Content-Type": "application/json"},
    )
    assert response.status_code in (400, 413)


def test_unhandled_errors_are_500_problems_without_traceback(app: FastAPI) -> None:
    def explode() -> None:
        raise RuntimeError("secret internals /etc/passwd")

    app.add_api_route("/boom", explode)
    with TestClient(app, raise_server_exceptions=False) as boom_client:
        response = boom_client.get("/boom")
        body = assert_problem(response, 500)
        assert "secret" not in response.text and "Traceback" not in response.text
        assert body["title"] == "Internal Server Error"
        metrics = boom_client.get("/metrics").text
        assert 'leadscore_errors_total{kind="RuntimeError"} 1.0' in metrics


def test_health_and_readiness(client: TestClient, anon_client: TestClient) -> None:
    assert anon_client.get("/healthz").json() == {"status": "ok"}
    ready = anon_client.get("/readyz")
    assert ready.status_code == 200
    assert set(ready.json()["rulesets"]) == {"pmi-letter-score", "bant"}


def test_readiness_fails_without_a_database() -> None:
    settings = make_settings("postgresql+psycopg://nobody@127.0.0.1:1/none")
    app = create_app(settings)  # lifespan not started: the database is unreachable
    response = TestClient(app).get("/readyz")
    body = assert_problem(response, 503)
    assert "database" in str(body["detail"])


def test_metrics_count_routes_events_and_transitions(client: TestClient) -> None:
    client.post(
        "/v1/events",
        json={
            "events": [
                event(
                    "form.submitted",
                    attributes={
                        "role": "CEO",
                        "employees": 500,
                        "industry": "IT",
                        "annual_revenue_eur": 9_000_000,
                    },
                ),
                event("page.viewed", properties={"url": "/pricing"}),
                {"id": "bad"},
                event("mystery.happened"),
            ]
        },
    )
    client.get("/v1/leads/lead_missing")
    text = client.get("/metrics").text
    assert (
        'leadscore_http_requests_total{method="POST",route="/v1/events",status="200"} 1.0' in text
    )
    assert (
        'leadscore_http_requests_total{method="GET",route="/v1/leads/{lead_id}",status="404"} 1.0'
        in text
    )
    assert (
        'leadscore_events_total{source="api",status="accepted",type="form.submitted"} 1.0' in text
    )
    assert 'leadscore_events_total{source="api",status="rejected",type="other"} 1.0' in text
    assert 'leadscore_events_total{source="api",status="accepted",type="other"} 1.0' in text
    assert "leadscore_transitions_total" in text
    assert "leadscore_http_request_duration_seconds_bucket" in text


def test_two_apps_in_one_process_keep_separate_metrics(settings: Settings) -> None:
    first, second = create_app(settings), create_app(settings)
    assert first.state.metrics.registry is not second.state.metrics.registry


@pytest.mark.parametrize("raw", [b"\xff\xfe", b"nul\x00l", b"{" * 10000])
def test_garbage_bodies_never_500(client: TestClient, raw: bytes) -> None:
    response = client.post("/v1/events", content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code in (400, 422), response.text
    json.loads(response.text)
