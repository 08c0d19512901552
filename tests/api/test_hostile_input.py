"""Hostile input on every route and webhook source, on both databases (docs/errors.md, "What
input is refused"): NUL and lone surrogates, over-deep JSON, numbers outside the float range,
numbers where a time is expected, oversized and non-UTF-8 bodies. Each is a 4xx problem naming
the field; in a batch the bad event alone is rejected; and nothing that was stored makes a
read fail."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tests.conftest import TEST_ADMIN_KEY, auth, make_settings

from leadscore_api.app import create_app
from leadscore_api.storage.migrate import upgrade_database

FORM_TOKEN = "form-secret"
MAILCHIMP_TOKEN = "mailchimp-secret"
JSON = {"content-type": "application/json"}
FORM = {"content-type": "application/x-www-form-urlencoded"}


@pytest.fixture
def hostile(database_url: str) -> Any:
    upgrade_database(database_url)
    settings = make_settings(
        database_url, webhook_form_secret=FORM_TOKEN, webhook_mailchimp_secret=MAILCHIMP_TOKEN
    )
    with TestClient(
        create_app(settings), headers=auth(TEST_ADMIN_KEY), raise_server_exceptions=False
    ) as client:
        yield client


def event(n: int, **fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "id": f"ev-{n}",
        "type": "page.viewed",
        "occurred_at": "2026-11-20T10:00:00Z",
        "lead": {"email": f"p{n}@example.com"},
    }
    base.update(fields)
    return base


def raw_json(value: Any) -> bytes:
    """JSON as a client writes it: non-ASCII escaped, so a lone surrogate goes as ``\\ud800``."""
    return json.dumps(value, ensure_ascii=True).encode()


#: (what, event fields or raw JSON text of the bad event, the field the answer names)
BAD_EVENTS: list[tuple[str, Any, str]] = [
    ("NUL in a property", {"properties": {"note": "a\x00b"}}, "properties.note"),
    ("NUL in a property name", {"properties": {"a\x00": 1}}, "properties.a\x00"),
    ("surrogate in an attribute", {"attributes": {"title": "\ud800"}}, "attributes.title"),
    ("surrogate deep in raw", {"raw": {"a": [{"b": "x\udfff"}]}}, "raw.a[0].b"),
    ("surrogate in the email", {"lead": {"email": "a\ud800@example.com"}}, "lead.email"),
    ("NUL in the id", {"id": "ev\x00x"}, "id"),
    ("control byte in external_id", {"lead": {"external_id": "crm\x07"}}, "lead.external_id"),
    ("NUL in the source", {"source": "web\x00"}, "source"),
    ("a number as the time", {"occurred_at": 1763632800}, "occurred_at"),
    ("a boolean as the time", {"occurred_at": True}, "occurred_at"),
    ("nesting past 254 levels", {"properties": {"deep": json.loads("[" * 300 + "]" * 300)}}, ""),
    ("1e400 in a property", '"properties": {"n": 1e400}', "properties.n"),
    ("-1e999 in raw", '"raw": [-1e999]', "raw[0]"),
]


def _bad_event_json(n: int, bad: Any) -> bytes:
    if isinstance(bad, str):  # raw JSON text: numbers json.dumps cannot write
        return raw_json(event(n))[:-1] + b", " + bad.encode() + b"}"
    return raw_json(event(n, **bad))


def test_one_bad_event_is_rejected_alone_and_the_good_ones_are_stored(
    hostile: TestClient,
) -> None:
    items = [raw_json(event(0))]
    for n, (_what, bad, _field) in enumerate(BAD_EVENTS, start=1):
        items += [_bad_event_json(100 + n, bad), raw_json(event(n))]
    response = hostile.post("/v1/events", content=b'{"events": [' + b",".join(items) + b"]}")
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["accepted"] + ["rejected", "accepted"] * len(
        BAD_EVENTS
    )
    for (what, _bad, field), result in zip(BAD_EVENTS, results[1::2], strict=True):
        assert result["error"].startswith(field.encode("utf-8", "backslashreplace").decode()), (
            what,
            result,
        )
    emails = {lead["email"] for lead in hostile.get("/v1/leads?limit=100").json()["items"]}
    assert emails == {f"p{n}@example.com" for n in range(len(BAD_EVENTS) + 1)}


def test_one_bad_event_alone_is_a_422_problem_naming_the_field(hostile: TestClient) -> None:
    for what, bad, field in BAD_EVENTS:
        alone = hostile.post("/v1/events", content=_bad_event_json(1, bad), headers=JSON)
        assert alone.status_code == 422, (what, alone.text)
        assert alone.headers["content-type"] == "application/problem+json"
        named = alone.json()["errors"][0]["field"]
        assert named.startswith(field.split(".")[0] or "properties"), (what, named)


UNREADABLE: list[tuple[bytes, str]] = [
    (b"[" * 10_000 + b"]" * 10_000, "nested too deeply"),
    (b'{"id": "\xff\xfe"}', "utf-8"),
    (b'{"id": NaN}', "NaN"),
    (b"", "empty"),
]


def test_unreadable_and_oversized_bodies_are_problems(hostile: TestClient) -> None:
    for body, detail in UNREADABLE:
        response = hostile.post("/v1/events", content=body, headers=JSON)
        assert response.status_code == 400, response.text
        assert response.json()["type"] == "urn:leadscore:problem:invalid-json"
        assert detail in response.json()["detail"]
    limit = hostile.app.state.settings.max_body_bytes  # type: ignore[attr-defined]
    response = hostile.post("/v1/events", content=b"[" + b" " * limit + b"]", headers=JSON)
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"


OTHER_ROUTES: list[tuple[str, str, Any, str]] = [
    ("POST", "/v1/api-keys", {"name": "k\x00", "scopes": ["leads:read"]}, "name"),
    ("POST", "/v1/reps", {"name": "\ud800", "email": "r@example.com"}, "name"),
    (
        "POST",
        "/v1/subscriptions",
        {"url": "http://127.0.0.1:9/\x00", "event_types": ["*"]},
        "url",
    ),
    ("POST", "/v1/rulesets/backtest", {"ruleset": {"x": [1e400]}}, "ruleset.x[0]"),
    ("POST", "/v1/rulesets/backtest", {"content": "x", "from": "2026-01-01T00:00\x00Z"}, "from"),
    ("GET", "/v1/leads?email=a%00b", None, "email"),
    ("GET", "/v1/leads?tier=%ED%A0%80", None, "query"),
    ("GET", "/v1/reports/summary?since=%00", None, "since"),
]


def test_other_routes_refuse_unstorable_input_naming_the_field(hostile: TestClient) -> None:
    for method, path, body, field in OTHER_ROUTES:
        content = raw_json(body) if body is not None else None
        response = hostile.request(method, path, content=content, headers=JSON)
        assert response.status_code == 422, (path, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["errors"][0]["field"] == field, (path, response.text)
    # NaN and Infinity, which the standard parser reads, are refused like 1e400.
    nan = hostile.post("/v1/reps", content=b'{"name": "x", "email": "n@example.com", "a": NaN}')
    assert nan.status_code == 422, nan.text
    assert nan.json()["errors"][0]["field"] == "a"


def test_a_path_parameter_with_a_nul_is_a_422_naming_it(hostile: TestClient) -> None:
    for path, field in (
        ("/v1/leads/a%00b", "lead_id"),
        ("/v1/leads/a%00b/history", "lead_id"),
        ("/v1/reps/%00", "rep_id"),
        ("/v1/rulesets/x/versions/%01", "version"),
    ):
        response = hostile.get(path)
        assert response.status_code == 422, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["errors"][0]["field"] == field
    nowhere = hostile.get("/v1/nothing/%00")
    assert nowhere.status_code == 404, nowhere.text


def test_form_webhooks_reject_hostile_bytes_per_event(hostile: TestClient) -> None:
    form = f"/v1/webhooks/form?token={FORM_TOKEN}"
    bad = hostile.post(form, content=b"email=x%00y@example.com&name=Anna", headers=FORM)
    assert bad.status_code == 200, bad.text
    [result] = bad.json()["results"]
    assert result["status"] == "rejected"
    assert result["error"].startswith("lead.email: contains the NUL character")
    name = hostile.post(form, content=b"email=ok@example.com&name=A%00nna", headers=FORM)
    [result] = name.json()["results"]
    assert result["status"] == "rejected" and "NUL" in result["error"]
    not_utf8 = hostile.post(form, content=b"email=x%ff@example.com", headers=FORM)
    assert not_utf8.status_code in (200, 400), not_utf8.text
    raw_bytes = hostile.post(form, content=b"email=\xff\xfe@example.com", headers=FORM)
    assert raw_bytes.status_code == 400
    assert raw_bytes.json()["type"] == "urn:leadscore:problem:invalid-payload"
    mailchimp = hostile.post(
        f"/v1/webhooks/mailchimp?token={MAILCHIMP_TOKEN}",
        content=b"type=subscribe&fired_at=2026-11-20+10:00:00&data[email]=m%00c@example.com",
        headers=FORM,
    )
    assert mailchimp.status_code == 200, mailchimp.text
    assert [r["status"] for r in mailchimp.json()["results"]] == ["rejected"]
    deep = hostile.post(form, content=b"[" * 10_000 + b"]" * 10_000, headers=JSON)
    assert deep.status_code == 400, deep.text


#: Strange but storable: these are kept as sent and must read back everywhere.
ODD_BUT_STORABLE = {
    "tab\tnewline\ncr\r": "bell\x07 escape\x1b del\x7f",
    "emoji": "😀 Ünïcödé ﷽ \u202eRTL",
    "big": 10**30,
    "tiny": 5e-324,
    "nested": [[[[{"a": None}]]]],
    "": "empty name",
}


def test_nothing_stored_makes_a_read_fail(hostile: TestClient) -> None:
    """Store odd values through every write path, then read every page of the API."""
    stored = hostile.post(
        "/v1/events",
        content=raw_json(
            {
                "events": [
                    event(1, properties=ODD_BUT_STORABLE, attributes={"job_title": "CEO\x01"}),
                    event(2, properties={"x": "a\x00"}),
                    event(3, raw=ODD_BUT_STORABLE, lead={"email": "p3@example.com"}),
                ]
            }
        ),
        headers=JSON,
    )
    assert [r["status"] for r in stored.json()["results"]] == ["accepted", "rejected", "accepted"]
    hostile.post(
        f"/v1/webhooks/form?token={FORM_TOKEN}",
        content="email=form@example.com&name=Zoë\x01&note=😀%00".encode(),
        headers=FORM,
    )
    hostile.post(
        f"/v1/webhooks/form?token={FORM_TOKEN}",
        content="email=form2@example.com&name=Zoë%09Tab&company=ACME%0ALtd".encode(),
        headers=FORM,
    )
    imported = hostile.post(
        "/v1/leads/import?dry_run=false",
        files={
            "file": ("leads.csv", "email,company\nimp@example.com,Ré\x07\nbad@example.com,x\x00\n")
        },
    )
    assert imported.status_code < 500, imported.text
    assert (
        hostile.post(
            "/v1/reps",
            content=raw_json({"name": "Zoë 😀\t", "email": "z@example.com"}),
            headers=JSON,
        ).status_code
        < 500
    )
    assert (
        hostile.post(
            "/v1/api-keys",
            content=raw_json({"name": "ключ\x01", "scopes": ["leads:read"]}),
            headers=JSON,
        ).status_code
        == 201
    )

    leads = hostile.get("/v1/leads?limit=100").json()["items"]
    assert {"p1@example.com", "p3@example.com", "form2@example.com"} <= {
        lead["email"] for lead in leads
    }
    odd = next(lead for lead in leads if lead["email"] == "p1@example.com")
    ids = {"lead_id": odd["id"], "name": "pmi-letter-score", "source": "form"}
    document = hostile.app.openapi()  # type: ignore[attr-defined]
    read = 0
    for path, item in document["paths"].items():
        if "get" not in item or path.startswith("/v1/webhooks"):
            continue
        names = re.findall(r"{(\w+)}", path)
        if any(name not in ids for name in names):
            continue
        response = hostile.get(path.format(**ids))
        assert response.status_code < 500, (path, response.text)
        read += 1
    assert read > 25
    history = hostile.get(f"/v1/leads/{odd['id']}/history").json()
    assert "😀" in json.dumps(history, ensure_ascii=False) or history["items"]
    export = hostile.get("/v1/leads/export?format=csv")
    assert export.status_code == 200 and "p1@example.com" in export.text
    xlsx = hostile.get("/v1/leads/export?format=xlsx")
    assert xlsx.status_code == 200
