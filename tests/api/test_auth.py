"""API keys and scopes: 401 without a valid key, 403 without the scope, keys shown once."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from tests.conftest import MakeApiKey

from leadscore_api.storage.models import ApiKey

from .helpers import auth, event

#: One request per protected route, and the scope it needs.
ROUTES: list[tuple[str, str, object, str]] = [
    ("POST", "/v1/events", {"events": []}, "events:write"),
    ("GET", "/v1/leads", None, "leads:read"),
    ("GET", "/v1/leads/lead_x", None, "leads:read"),
    ("GET", "/v1/leads/lead_x/history", None, "leads:read"),
    ("GET", "/v1/leads/lead_x/explain", None, "leads:read"),
    ("PATCH", "/v1/leads/lead_x", {"attributes": {}}, "leads:write"),
    ("POST", "/v1/leads/lead_x/merge", {"other_lead_id": "lead_y"}, "leads:write"),
    ("DELETE", "/v1/leads/lead_x", None, "leads:write"),
    ("GET", "/v1/rulesets", None, "rules:admin"),
    ("GET", "/v1/rulesets/pmi-letter-score", None, "rules:admin"),
    ("POST", "/v1/api-keys", {"name": "x", "scopes": ["leads:read"]}, "keys:admin"),
    ("GET", "/v1/api-keys", None, "keys:admin"),
    ("DELETE", "/v1/api-keys/nope", None, "keys:admin"),
]


def test_missing_or_wrong_credentials_are_401(anon_client: TestClient) -> None:
    for method, path, body, _scope in ROUTES:
        for headers in (
            {},
            {"Authorization": "Bearer"},
            {"Authorization": "Bearer wrong"},
            {"Authorization": "Basic dXNlcjpwYXNz"},
            {"Authorization": "Bearer lsk_0123456789abcdef_forged"},
            {"Authorization": "Bearer lsk__"},
            {"Authorization": "Bearer " + "x" * 5000},
        ):
            response = anon_client.request(method, path, json=body, headers=headers)
            assert response.status_code == 401, (method, path, headers, response.text)
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert response.headers["content-type"].startswith("application/problem+json")


def test_each_scope_opens_exactly_its_routes(
    anon_client: TestClient, make_api_key: MakeApiKey
) -> None:
    scopes = sorted({scope for *_, scope in ROUTES})
    keys = {scope: make_api_key(scope, name=scope) for scope in scopes}
    for method, path, body, needed in ROUTES:
        for scope, key in keys.items():
            response = anon_client.request(method, path, json=body, headers=auth(key))
            if scope == needed:
                assert response.status_code not in (401, 403), (method, path, scope)
            else:
                assert response.status_code == 403, (method, path, scope, response.text)
                assert needed in response.json()["detail"]


def test_key_lifecycle(
    client: TestClient, anon_client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    response = client.post("/v1/api-keys", json={"name": "crm", "scopes": ["leads:read"]})
    assert response.status_code == 201
    created = response.json()
    key = created["key"]
    assert key.startswith(created["prefix"]) and created["scopes"] == ["leads:read"]
    assert anon_client.get("/v1/leads", headers=auth(key)).status_code == 200

    listed = client.get("/v1/api-keys").json()["items"]
    assert [item["id"] for item in listed] == [created["id"]]
    assert "key" not in listed[0]
    assert key not in client.get("/v1/api-keys").text
    with session_factory() as session:
        row = session.scalar(select(ApiKey))
        assert row is not None and key not in row.key_hash and row.key_hash != key

    assert client.delete(f"/v1/api-keys/{created['id']}").status_code == 204
    assert anon_client.get("/v1/leads", headers=auth(key)).status_code == 401
    assert client.get("/v1/api-keys").json()["items"][0]["revoked_at"] is not None
    assert client.delete("/v1/api-keys/does-not-exist").status_code == 404


def test_key_with_a_tampered_secret_is_refused(
    anon_client: TestClient, make_api_key: MakeApiKey
) -> None:
    key = make_api_key("leads:read")
    tampered = key[:-2] + ("AA" if not key.endswith("AA") else "BB")
    assert anon_client.get("/v1/leads", headers=auth(tampered)).status_code == 401


def test_bad_key_requests(client: TestClient) -> None:
    for body, field in (
        ({"name": "x"}, "scopes"),
        ({"scopes": ["leads:read"]}, "name"),
        ({"name": "", "scopes": ["leads:read"]}, "name"),
        ({"name": "x", "scopes": []}, "scopes"),
        ({"name": "x", "scopes": ["root"]}, "scopes"),
        ({"name": "x", "scopes": "leads:read"}, "scopes"),
        ({"name": 5, "scopes": ["leads:read"]}, "name"),
    ):
        response = client.post("/v1/api-keys", json=body)
        assert response.status_code == 422, (body, response.text)
        assert field in [e["field"] for e in response.json()["errors"]]


def test_events_key_can_post_but_not_read(
    anon_client: TestClient, make_api_key: MakeApiKey
) -> None:
    key = make_api_key("events:write")
    response = anon_client.post("/v1/events", json=event(), headers=auth(key))
    assert response.status_code == 200
    lead_id = response.json()["results"][0]["lead_id"]
    assert anon_client.get(f"/v1/leads/{lead_id}", headers=auth(key)).status_code == 403
