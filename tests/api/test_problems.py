"""Every error answer comes from one hierarchy: same shape, one problem type per kind of error."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

PROBLEM = "urn:leadscore:problem:"


def problem(response: Any, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["type"] == PROBLEM + kind, body
    assert body["status"] == status and body["title"] and body["detail"]
    return body


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/leads/lead_nope"),
        ("GET", "/v1/leads/lead_nope/history"),
        ("GET", "/v1/leads/lead_nope/explain"),
        ("DELETE", "/v1/leads/lead_nope"),
        ("GET", "/v1/subscriptions/sub_nope"),
        ("POST", "/v1/subscriptions/sub_nope/enable"),
        ("GET", "/v1/deliveries/msg_nope"),
        ("POST", "/v1/deliveries/msg_nope/retry"),
        ("DELETE", "/v1/api-keys/nope"),
        ("GET", "/v1/rulesets/nope"),
        ("GET", "/v1/webhooks/nope"),
        ("GET", "/v1/nope-route"),
    ],
)
def test_every_missing_thing_is_the_same_problem_type(
    client: TestClient, method: str, path: str
) -> None:
    body = problem(client.request(method, path), 404, "not-found")
    assert "nope" in body["detail"]
    assert body["instance"] == path


def test_a_body_that_is_not_json_is_a_400_on_every_route(client: TestClient) -> None:
    for method, path in [
        ("POST", "/v1/events"),
        ("PATCH", "/v1/leads/lead_nope"),
        ("POST", "/v1/subscriptions"),
        ("POST", "/v1/api-keys"),
    ]:
        response = client.request(
            method, path, content=b"{not json", headers={"Content-Type": "application/json"}
        )
        body = problem(response, 400, "invalid-json")
        assert "not valid JSON" in body["detail"]


def test_invalid_input_names_each_field(client: TestClient) -> None:
    response = client.post("/v1/api-keys", json={"name": "", "scopes": ["leads:fly"]})
    body = problem(response, 422, "validation")
    assert [e["field"] for e in body["errors"]] == ["name"]
    response = client.post("/v1/api-keys", json={"name": "crm", "scopes": ["leads:fly"]})
    body = problem(response, 422, "validation")
    assert body["errors"] == [
        {"field": "scopes", "message": body["errors"][0]["message"]},
    ]
    assert "leads:fly" in body["errors"][0]["message"]


def test_a_wrong_method_is_a_405_problem(client: TestClient) -> None:
    body = problem(client.put("/v1/events", json={}), 405, "method-not-allowed")
    assert "PUT" in body["detail"]


def test_too_large_a_body_is_refused_before_the_app_in_the_same_shape(client: TestClient) -> None:
    limit = client.app.state.settings.max_body_bytes  # type: ignore[attr-defined]
    response = client.post(
        "/v1/events",
        content=b"x" * (limit + 1),
        headers={"Content-Type": "application/json"},
    )
    body = problem(response, 413, "body-too-large")
    assert str(limit) in body["detail"]
    assert response.text == response.text.replace(", ", ",")  # compact, like every other body


def test_a_405_names_every_method_of_the_path_in_allow(client: TestClient) -> None:
    """GET and POST of /v1/leads... are separate routes; Allow must list them all (RFC 9110)."""
    for path, expected in (
        ("/v1/subscriptions", {"GET", "HEAD", "POST"}),
        ("/v1/webhooks/form", {"GET", "HEAD", "POST"}),
        ("/v1/events", {"POST"}),
    ):
        response = client.put(path, json={})
        body = problem(response, 405, "method-not-allowed")
        assert set(response.headers["allow"].split(", ")) == expected, path
        assert "PUT" in body["detail"]


def test_the_document_gives_every_error_as_problem_json(client: TestClient) -> None:
    """openapi.yaml promises what the service sends: problem+json with ProblemDetail on every
    4xx/5xx, and the statuses the shared layers answer on every operation they reach."""
    document = client.app.openapi()  # type: ignore[attr-defined]
    problem_schema = {"$ref": "#/components/schemas/ProblemDetail"}
    checked = 0
    for path, item in document["paths"].items():
        for method, operation in item.items():
            responses = operation["responses"]
            for status, response in responses.items():
                if status[0] in "45":
                    assert response["content"] == {
                        "application/problem+json": {"schema": problem_schema}
                    }, (method, path, status)
                    checked += 1
            assert "503" in responses, (method, path)
            if "{" in path:
                assert {"404", "422"} <= set(responses), (method, path)
            if operation.get("security"):
                assert {"401", "403", "429"} <= set(responses), (method, path)
            if "requestBody" in operation:
                assert {"400", "413", "422"} <= set(responses), (method, path)
    assert checked > 200
    assert "HTTPValidationError" not in document["components"]["schemas"]
