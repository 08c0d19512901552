"""The CRM framework: configuration, the outbox side, outcomes in, the pull, merges and erasures.

Run against the HubSpot stand-in (the first connector merged); everything asserted here is the
framework's behaviour, the same for every CRM.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from tests.conftest import MakeApiKey
from tests.crm.helpers import (
    BIG_MANUFACTURER,
    connector_body,
    dispatcher,
    drain,
    event,
    make_all_due,
    messages,
    new_lead_events,
    records,
    run_round,
    running,
)

from leadscore_api.crm.base import Outcome, RecordRef
from leadscore_api.crm.registry import load_file, parse_file_text
from leadscore_api.errors import InvalidInput
from leadscore_api.service import crm as crm_service
from leadscore_api.storage.base import utcnow
from leadscore_api.storage.models import Event, Lead
from leadscore_api.storage.repositories import crm as crm_repo

KIND = "hubspot"
NAME = "sales-crm"


@pytest.fixture
def standin() -> Iterator[Any]:
    with running(KIND) as found:
        yield found


@pytest.fixture
def connected(client: TestClient, standin: Any) -> Any:
    response = client.post("/v1/crm/connectors", json=connector_body(standin, NAME))
    assert response.status_code == 201, response.text
    return standin


def _lead_id(factory: sessionmaker[Session], email: str) -> str:
    with factory() as session:
        found = session.scalars(select(Lead.id).where(Lead.email == email)).first()
        assert found is not None
        return found


def _post(client: TestClient, events: list[dict[str, Any]]) -> None:
    response = client.post("/v1/events", json={"events": events})
    assert response.status_code == 200, response.text
    assert {r["status"] for r in response.json()["results"]} == {"accepted"}


# -- configuration ---------------------------------------------------------------------------


def test_the_file_substitutes_secrets_from_the_environment_and_names_each_bad_field(
    tmp_path: Any,
) -> None:
    path = tmp_path / "crm.yaml"
    path.write_text(
        "- name: hubspot\n"
        "  kind: hubspot\n"
        "  base_url: https://api.hubapi.com/\n"
        "  credentials: {token: '${HS_TOKEN}', client_secret: '${HS_SECRET}'}\n"
        "  field_map: {letter: lead_letter}\n"
        "  owner_map: {rep-anna: '101'}\n"
    )
    [spec] = load_file(path, {"HS_TOKEN": "pat-na1-abc", "HS_SECRET": "s3cret"})
    config = spec.to_config()
    assert config.base_url == "https://api.hubapi.com"
    assert dict(config.credentials) == {"token": "pat-na1-abc", "client_secret": "s3cret"}
    assert dict(config.field_map) == {"letter": "lead_letter"}

    with pytest.raises(InvalidInput) as missing:
        load_file(path, {"HS_TOKEN": "x"})
    assert missing.value.errors == [
        {
            "field": "connectors[0].credentials.client_secret",
            "message": "environment variable(s) not set: HS_SECRET",
        }
    ]

    with pytest.raises(InvalidInput) as bad:
        parse_file_text(
            "connectors:\n"
            "  - {name: a, kind: dynamics, base_url: https://x.example}\n"
            "  - {name: b, kind: zoho, base_url: 'ftp://x.example'}\n"
            "  - {name: c, kind: pipedrive, base_url: https://x.example, field_map: {colour: x}}\n"
            "  - {name: c, kind: pipedrive, base_url: https://x.example}\n",
            {},
        )
    fields = [error["field"] for error in bad.value.errors or []]
    assert fields == [
        "connectors[0].kind",
        "connectors[1].base_url",
        "connectors[2].field_map",
        "connectors[3].name",
    ]
    messages_ = {e["field"]: e["message"] for e in bad.value.errors or []}
    assert "'colour' is not a field we write" in messages_["connectors[2].field_map"]
    assert "http or https" in messages_["connectors[1].base_url"]


def test_connectors_api_never_shows_a_secret_and_refuses_bad_input_naming_the_field(
    client: TestClient,
    anon_client: TestClient,
    make_api_key: MakeApiKey,
    session_factory: sessionmaker[Session],
) -> None:
    token = "pat-na1-0123456789abcdef"
    body = {
        "name": "hs",
        "kind": "hubspot",
        "base_url": "http://127.0.0.1:9/",
        "credentials": {"token": token, "client_secret": "short"},
        "owner_map": {"rep-anna": "101"},
    }
    created = client.post("/v1/crm/connectors", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["credentials"] == {"token": "****cdef", "client_secret": "****"}
    assert created.json()["notification_path"] == "/v1/crm/hs/notifications"
    for response in (client.get("/v1/crm/connectors"), client.get("/v1/crm/connectors/hs")):
        assert response.status_code == 200
        assert token not in response.text and "short" not in response.text

    # Rotating one secret keeps the other; still masked.
    patched = client.patch(
        "/v1/crm/connectors/hs", json={"credentials": {"client_secret": "x" * 20}}
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["credentials"] == {"token": "****cdef", "client_secret": "****xxxx"}

    def problem(response: Any, status: int) -> list[str]:
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"
        return [e["field"] for e in response.json().get("errors") or []]

    assert problem(client.post("/v1/crm/connectors", json=body), 409) == []
    assert problem(
        client.post("/v1/crm/connectors", json={**body, "name": "x", "kind": "sap"}), 422
    ) == ["kind"]
    assert problem(
        client.post("/v1/crm/connectors", json={**body, "name": "x", "field_map": {"colour": "c"}}),
        422,
    ) == ["field_map"]
    assert problem(
        client.post("/v1/crm/connectors", json={**body, "name": "x", "base_url": "api.hubapi.com"}),
        422,
    ) == ["base_url"]
    assert problem(client.post("/v1/crm/connectors", json={**body, "name": "Bad Name"}), 422) == [
        "name"
    ]
    assert problem(
        client.patch("/v1/crm/connectors/hs", json={"field_map": {"letter": ""}}), 422
    ) == ["field_map"]
    assert problem(client.get("/v1/crm/connectors/nope"), 404) == []
    # The SSRF guard, as for webhook URLs (tests allow loopback through the setting).
    from leadscore_api.crm.registry import parse_spec

    with pytest.raises(crm_service.UnsafeCrmTarget) as unsafe:
        crm_service.create_connector(
            session_factory, parse_spec({**body, "name": "inside"}), allow_private=False
        )
    assert [e["field"] for e in unsafe.value.errors or []] == ["base_url"]
    assert "loopback" in unsafe.value.detail

    # Scope crm:admin; webhooks:admin is not enough; no key at all is a 401.
    assert anon_client.get("/v1/crm/connectors").status_code == 401
    webhooks_only = make_api_key("webhooks:admin")
    forbidden = anon_client.get(
        "/v1/crm/connectors", headers={"Authorization": f"Bearer {webhooks_only}"}
    )
    assert forbidden.status_code == 403
    crm_admin = make_api_key("crm:admin")
    assert (
        anon_client.get(
            "/v1/crm/connectors", headers={"Authorization": f"Bearer {crm_admin}"}
        ).status_code
        == 200
    )
    # The connector's outbox target is not among the webhook subscriptions.
    assert client.get("/v1/subscriptions").json()["items"] == []

    assert client.delete("/v1/crm/connectors/hs").status_code == 204
    assert client.get("/v1/crm/connectors/hs").status_code == 404


# -- scores out on the outbox ----------------------------------------------------------------


def test_syncs_of_one_lead_coalesce_and_leads_go_in_one_batch(
    client: TestClient, connected: Any, session_factory: sessionmaker[Session]
) -> None:
    emails = [f"buyer{n}@metalpro.it" for n in range(3)]
    for email in emails:
        _post(client, new_lead_events(email))
        _post(client, [event(email, "form.submitted", attributes=BIG_MANUFACTURER)])
    syncs = messages(session_factory, "crm.sync")
    assert len(syncs) == 6  # two changes of each lead are queued
    assert all(set(m.payload) == {"type", "connector", "lead_id"} for m in syncs)

    # Each reached the hand-over stage (MQL in the bundled model): a task each, too, a call due
    # by the first-contact SLA (24 h after the MQL), not the 4-working-hour acceptance one.
    tasks = messages(session_factory, "crm.task")
    assert len(tasks) == 3
    lead = client.get("/v1/leads", params={"email": emails[0]}).json()["items"][0]
    slas = {s["id"]: s for s in client.get(f"/v1/leads/{lead['id']}/explain").json()["sla"]}
    task = next(m for m in tasks if m.lead_id == lead["id"])
    assert task.payload["due_at"] == slas["first_contact"]["due"]
    # The MQL happened an hour ago (the events are dated so): 23 hours are left to call.
    assert task.payload["subject"].endswith("within 23 h"), task.payload["subject"]
    assert run_round(dispatcher(session_factory)) == len(syncs) + 3
    writes = [c for c in connected.log.calls if c.method == "POST" and "/batch/" in c.path]
    assert len(writes) >= 1
    written = [i for c in writes for i in c.body["inputs"]]
    assert len(written) == 3  # one per lead, however many syncs were queued
    assert {m.status for m in messages(session_factory, "crm.sync")} == {"delivered"}
    assert len(records(session_factory)) == 3
    person = connected.person(emails[0])
    assert person is not None and person["leadscore_letter"]


def test_a_rate_limit_pushes_back_every_message_of_the_connector_without_using_up_retries(
    client: TestClient, connected: Any, session_factory: sessionmaker[Session]
) -> None:
    for n in range(3):
        _post(client, new_lead_events(f"wait{n}@metalpro.it"))
    connected.fail_next(429, policy="TEN_SECONDLY", retry_after=30)
    before = utcnow()
    # A round that takes one message: the other two are pushed back too.
    assert run_round(dispatcher(session_factory, batch_size=1)) == 1
    queued = messages(session_factory, "crm.sync")
    assert {m.status for m in queued} == {"pending"}
    assert all(
        m.next_attempt_at is not None and m.next_attempt_at >= before + timedelta(seconds=9)
        for m in queued
    )
    assert [m.schedule_attempts for m in queued] == [0, 0, 0]
    limited = [m for m in queued if m.attempts]
    assert len(limited) == 1 and limited[0].last_error
    # Nothing is due: the round takes nothing.
    assert run_round(dispatcher(session_factory)) == 0
    make_all_due(session_factory)
    assert drain(
        dispatcher(session_factory),
        lambda: all(m.status == "delivered" for m in messages(session_factory, "crm.sync")),
    )


def test_retries_dead_letters_and_a_manual_retry_as_for_webhooks(
    client: TestClient, connected: Any, session_factory: sessionmaker[Session]
) -> None:
    _post(client, new_lead_events("retry@metalpro.it"))
    [message] = messages(session_factory, "crm.sync")
    connected.fail_next(503)
    run_round(dispatcher(session_factory))
    [message] = messages(session_factory, "crm.sync")
    assert (message.status, message.attempts, message.schedule_attempts) == ("pending", 1, 1)
    assert message.last_status == 503

    # A permanent error is a dead letter at once, whatever the schedule says.
    make_all_due(session_factory)
    connected.fail_next(400)
    run_round(dispatcher(session_factory))
    [message] = messages(session_factory, "crm.sync")
    assert (message.status, message.attempts) == ("failed", 2)
    assert message.last_error

    # The deliveries API shows it, with its attempts; a manual retry sends it again.
    listed = client.get("/v1/deliveries", params={"status": "failed", "type": "crm.sync"})
    assert listed.status_code == 200, listed.text
    assert [item["id"] for item in listed.json()["items"]] == [message.id]
    attempts = client.get(f"/v1/deliveries/{message.id}/attempts").json()["items"]
    assert [a["status_code"] for a in attempts] == [503, 400]
    assert client.post(f"/v1/deliveries/{message.id}/retry").status_code == 202
    run_round(dispatcher(session_factory))
    [message] = messages(session_factory, "crm.sync")
    assert message.status == "delivered"
    assert connected.person("retry@metalpro.it") is not None


# -- outcomes in -----------------------------------------------------------------------------


def test_a_notification_becomes_one_event_on_the_right_lead_however_often_it_comes(
    client: TestClient,
    anon_client: TestClient,
    connected: Any,
    session_factory: sessionmaker[Session],
) -> None:
    email = "won@metalpro.it"
    _post(client, new_lead_events(email))
    run_round(dispatcher(session_factory))
    lead_id = _lead_id(session_factory, email)
    url = f"http://testserver/v1/crm/{NAME}/notifications"
    method, headers, body = connected.outcome_notification(email, "deal.won", url)
    for _ in range(2):
        response = anon_client.request(method, url, headers=headers, content=body)
        assert response.status_code == 200, response.text
    with session_factory() as session:
        won = list(session.scalars(select(Event).where(Event.type == "deal.won")))
    assert [(e.lead_id, e.id.startswith(f"crm:{NAME}:")) for e in won] == [(lead_id, True)]

    # Tampered: 401 problem, nothing stored. Unknown connector: 404.
    tampered = anon_client.request(method, url, headers=headers, content=body + b" ")
    assert tampered.status_code == 401
    assert tampered.headers["content-type"] == "application/problem+json"
    unknown = anon_client.request(method, url.replace(NAME, "nope"), headers=headers, content=body)
    assert unknown.status_code == 404

    # A person we never scored: answered 200, counted, no lead made.
    method, headers, body = connected.outcome_notification("stranger@else.it", "deal.won", url)
    assert anon_client.request(method, url, headers=headers, content=body).status_code == 200
    with session_factory() as session:
        assert session.scalars(select(Lead).where(Lead.email == "stranger@else.it")).first() is None


def test_the_pull_runs_on_one_replica_at_a_time_and_keeps_its_cursor(
    client: TestClient, connected: Any, session_factory: sessionmaker[Session]
) -> None:
    now = utcnow()

    def lease(owner: str, interval: float) -> bool:
        with session_factory() as session:
            won = crm_repo.take_pull_lease(
                session,
                NAME,
                owner=owner,
                now=now,
                until=now + timedelta(seconds=60),
                due_before=now - timedelta(seconds=interval),
            )
            session.commit()
            return won

    assert lease("replica-a", 300)
    assert not lease("replica-b", 300)  # a holds it
    with session_factory() as session:
        crm_repo.finish_pull(session, NAME, owner="replica-a", now=now, cursor=now, error=None)
        session.commit()
    assert not lease("replica-b", 300)  # pulled moments ago
    assert lease("replica-b", 0)  # asked by hand
    with session_factory() as session:
        crm_repo.finish_pull(session, NAME, owner="replica-b", now=now, cursor=None, error="x")
        session.commit()

    email = "pulled@metalpro.it"
    _post(client, new_lead_events(email))
    run_round(dispatcher(session_factory))
    connected.outcome_notification(email, "deal.won", "http://unused/")  # the change, not sent
    pulled = client.post(f"/v1/crm/{NAME}/pull")
    assert pulled.status_code == 200, pulled.text
    assert pulled.json()["pulled"] is True and pulled.json()["error"] is None
    assert pulled.json()["accepted"] >= 1
    lead_id = _lead_id(session_factory, email)
    with session_factory() as session:
        types = set(session.scalars(select(Event.type).where(Event.lead_id == lead_id)))
    assert "deal.won" in types
    again = client.post(f"/v1/crm/{NAME}/pull").json()
    assert again["accepted"] == 0  # the cursor moved on; a change seen twice is a duplicate
    shown = client.get(f"/v1/crm/connectors/{NAME}").json()
    assert shown["pull_cursor"] is not None and shown["last_pull_error"] is None


# -- merges and erasures ---------------------------------------------------------------------


def test_merges_and_erasures_are_passed_on_to_the_crm(
    client: TestClient, connected: Any, session_factory: sessionmaker[Session]
) -> None:
    first, second = "anna@metalpro.it", "anna.rossi@gmail.com"
    _post(client, new_lead_events(first))
    _post(client, new_lead_events(second))
    run_round(dispatcher(session_factory))
    target, other = _lead_id(session_factory, first), _lead_id(session_factory, second)
    refs = {lead_id: record_id for _, lead_id, _, record_id in records(session_factory)}
    assert set(refs) == {target, other}

    assert (
        client.post(f"/v1/leads/{target}/merge", json={"other_lead_id": other}).status_code == 200
    )
    [merge] = messages(session_factory, "crm.merge")
    assert merge.payload["survivor"]["record_id"] == refs[target]
    assert merge.payload["merged"]["record_id"] == refs[other]
    connected.log.clear()
    assert drain(
        dispatcher(session_factory),
        lambda: messages(session_factory, "crm.merge")[0].status == "delivered",
    )
    assert any("merge" in line for line in connected.log.lines())
    assert [lead_id for _, lead_id, _, _ in records(session_factory)] == [target]

    assert client.delete(f"/v1/leads/{target}").status_code == 204
    assert records(session_factory) == []
    [erase] = messages(session_factory, "crm.erase")
    assert erase.lead_id is None
    assert "@" not in str(erase.payload)  # a record reference, no personal data
    assert drain(
        dispatcher(session_factory),
        lambda: messages(session_factory, "crm.erase")[0].status == "delivered",
    )
    assert connected.person(first) is None


def test_an_outcome_without_a_stored_record_finds_the_lead_by_email(
    client: TestClient, connected: Any, session_factory: sessionmaker[Session]
) -> None:
    email = "early@metalpro.it"
    _post(client, new_lead_events(email))
    registry = client.app.state.registry  # type: ignore[attr-defined]
    outcome = Outcome(
        type="lead.contacted",
        occurred_at=utcnow(),
        dedup_key="call-1",
        record=RecordRef("contact", "999"),  # a record we never wrote
        email="Early@MetalPro.it",
    )
    counts = crm_service.ingest_outcomes(session_factory, registry, NAME, [outcome, outcome])
    assert (counts.accepted, counts.duplicate, counts.unknown_person) == (1, 1, 0)
    lead_id = _lead_id(session_factory, email)
    with session_factory() as session:
        found = session.scalars(select(Event).where(Event.id == f"crm:{NAME}:call-1")).one()
        assert found is not None and found.lead_id == lead_id


# -- the command -----------------------------------------------------------------------------


def test_connect_in_one_command_stores_sets_up_and_backfills(
    client: TestClient,
    database_url: str,
    session_factory: sessionmaker[Session],
    tmp_path: Any,
) -> None:
    from click.testing import CliRunner

    from leadscore_api.cli import main

    for n in range(2):
        _post(client, new_lead_events(f"old{n}@metalpro.it"))
    env = {
        "LEADSCORE_DATABASE_URL": database_url,
        "LEADSCORE_WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",
    }
    with running(KIND, custom_properties=False) as standin:
        config = standin.connector_config()
        args = ["crm", "connect", KIND, "--name", "cli-crm", "--base-url", standin.base_url]
        for key, value in config.credentials.items():
            args += ["--credential", f"{key}={value}"]
        for rep, user in config.owner_map.items():
            args += ["--owner", f"{rep}={user}"]
        result = CliRunner().invoke(main, args, env=env)
        assert result.exit_code == 0, result.output
        assert "connector cli-crm (hubspot) stored" in result.output
        assert "created: " in result.output
        assert "queued a sync of 2 lead(s) to cli-crm" in result.output
        assert len(messages(session_factory, "crm.sync")) == 2

        listed = CliRunner().invoke(main, ["crm", "list"], env=env)
        assert listed.output.startswith("cli-crm\thubspot\tenabled")

        again = CliRunner().invoke(main, ["crm", "setup", "cli-crm"], env=env)
        assert (
            again.exit_code == 0 and "existing: " in again.output and "created" not in again.output
        )

    bad = CliRunner().invoke(
        main, ["crm", "connect", KIND, "--base-url", "x", "--field", "colour=c"], env=env
    )
    assert bad.exit_code == 1
    assert "error: base_url:" in bad.output and "error: field_map:" in bad.output

    path = tmp_path / "crm.yaml"
    path.write_text(
        "- {name: cli-crm, kind: hubspot, base_url: 'http://127.0.0.1:9', "
        "credentials: {token: '${T}'}, create_missing: false}\n"
    )
    applied = CliRunner().invoke(main, ["crm", "apply", str(path)], env={**env, "T": "pat-x"})
    assert applied.exit_code == 0, applied.output
    assert applied.output == "cli-crm: updated\n"
    shown = client.get("/v1/crm/connectors/cli-crm").json()
    assert (shown["create_missing"], shown["credentials"]) == (False, {"token": "****"})
