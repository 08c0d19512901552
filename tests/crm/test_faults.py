"""What the framework does with a connector's faults: options it refuses, a connector that
cannot be built or that throws, and a batch some of whose records the CRM refuses.

A refused option is a 422 naming ``options.<key>`` when the configuration is saved (API, file,
command); a fault at send time is a failed attempt on the messages concerned, never the end of
the worker's round; per-record errors of a batch land on the right lead's message.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from tests.crm.helpers import (
    connector_body,
    dispatcher,
    event,
    make_all_due,
    messages,
    new_lead_events,
    records,
    run_round,
    running,
)

from leadscore_api.crm.registry import parse_file_text
from leadscore_api.errors import InvalidInput
from leadscore_api.storage.crm_models import CrmConnector
from leadscore_api.storage.delivery_models import OutboxMessage
from leadscore_api.storage.models import Lead

SALESFORCE = {
    "name": "sf",
    "kind": "salesforce",
    "base_url": "http://127.0.0.1:9",
    "credentials": {"client_id": "id", "client_secret": "secret"},
}


def _post(client: TestClient, events: list[dict[str, Any]]) -> None:
    response = client.post("/v1/events", json={"events": events})
    assert response.status_code == 200, response.text


def _problems(response: Any) -> list[dict[str, str]]:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    errors: list[dict[str, str]] = response.json()["errors"]
    return errors


def _lead_id(factory: sessionmaker[Session], email: str) -> str:
    with factory() as session:
        found = session.scalars(select(Lead.id).where(Lead.email == email)).first()
        assert found is not None
        return found


def test_an_option_the_connector_refuses_is_refused_when_the_config_is_saved(
    client: TestClient, database_url: str
) -> None:
    bad = {**SALESFORCE, "options": {"object": "Foo"}}
    assert _problems(client.post("/v1/crm/connectors", json=bad)) == [
        {"field": "options.object", "message": 'must be "Lead" or "Contact"'}
    ]
    assert client.get("/v1/crm/connectors/sf").status_code == 404

    assert client.post("/v1/crm/connectors", json=SALESFORCE).status_code == 201
    patched = client.patch("/v1/crm/connectors/sf", json={"options": {"api_version": "62"}})
    assert [e["field"] for e in _problems(patched)] == ["options.api_version"]
    assert client.get("/v1/crm/connectors/sf").json()["options"] == {}

    hubspot = {**SALESFORCE, "name": "hs", "kind": "hubspot", "credentials": {"token": "t"}}
    zone = {**hubspot, "options": {"time_zone": "Europe/Atlantis"}}
    assert _problems(client.post("/v1/crm/connectors", json=zone)) == [
        {
            "field": "options.time_zone",
            "message": "'Europe/Atlantis' is not an IANA time zone (e.g. Europe/Rome)",
        }
    ]

    with pytest.raises(InvalidInput) as in_file:
        parse_file_text(
            "- {name: ok, kind: salesforce, base_url: 'https://x.example'}\n"
            "- {name: sf, kind: salesforce, base_url: 'https://x.example',"
            " options: {limit_retry_after: -1}}\n",
            {},
        )
    assert [e["field"] for e in in_file.value.errors or []] == [
        "connectors[1].options.limit_retry_after"
    ]

    from click.testing import CliRunner

    from leadscore_api.cli import main

    args = ["crm", "connect", "salesforce", "--name", "sf2", "--base-url", "https://x.example"]
    result = CliRunner().invoke(
        main, [*args, "--option", "object=Foo"], env={"LEADSCORE_DATABASE_URL": database_url}
    )
    assert result.exit_code == 1
    assert 'error: options.object: must be "Lead" or "Contact"' in result.output
    assert client.get("/v1/crm/connectors/sf2").status_code == 404


@pytest.fixture
def hubspot() -> Iterator[Any]:
    with running("hubspot") as found:
        yield found


def test_a_connector_that_cannot_be_built_or_throws_fails_its_messages_not_the_round(
    client: TestClient, hubspot: Any, session_factory: sessionmaker[Session]
) -> None:
    assert client.post("/v1/crm/connectors", json=connector_body(hubspot, "hs")).status_code == 201
    assert client.post("/v1/crm/connectors", json=SALESFORCE).status_code == 201
    _post(client, new_lead_events("one@metalpro.it"))
    assert {m.payload["connector"] for m in messages(session_factory, "crm.sync")} == {"hs", "sf"}
    # Saved before options were checked (or by hand): the worker cannot build it.
    with session_factory() as session:
        row = session.get(CrmConnector, "sf")
        assert row is not None
        row.options = {"object": "Foo"}
        session.commit()

    assert run_round(dispatcher(session_factory)) == 2
    by_connector = {m.payload["connector"]: m for m in messages(session_factory, "crm.sync")}
    assert by_connector["hs"].status == "delivered"
    assert hubspot.person("one@metalpro.it") is not None
    broken = by_connector["sf"]
    assert (broken.status, broken.attempts, broken.schedule_attempts) == ("pending", 1, 1)
    assert "options.object" in (broken.last_error or "")

    # A connector call that throws something no connector should (here: a message whose
    # payload lost its record) is a failed attempt too, and the others still go.
    _post(client, new_lead_events("two@metalpro.it"))
    with session_factory() as session:
        session.get(CrmConnector, "sf").enabled = False  # type: ignore[union-attr]
        for message in session.scalars(select(OutboxMessage)):
            if message.payload.get("connector") == "sf":
                message.status = "delivered"
        session.add(
            OutboxMessage(
                id="msg_broken_erase",
                subscription_id=by_connector["hs"].subscription_id,
                event_type="crm.erase",
                payload={"type": "crm.erase", "connector": "hs"},
            )
        )
        session.commit()
    make_all_due(session_factory)
    assert run_round(dispatcher(session_factory)) == 2
    with session_factory() as session:
        erase = session.get(OutboxMessage, "msg_broken_erase")
        assert erase is not None
        assert (erase.status, erase.attempts) == ("pending", 1)
        assert "record" in (erase.last_error or "")
    assert hubspot.person("two@metalpro.it") is not None


def test_a_batch_salesforce_partly_refuses_is_settled_record_by_record(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    with running("salesforce") as org:
        body = connector_body(org, "sf")
        assert client.post("/v1/crm/connectors", json=body).status_code == 201
        emails = ["good@metalpro.it", "locked@metalpro.it", "refused@metalpro.it"]
        for email in emails:
            _post(client, [event(email, "page.viewed", properties={"url": "https://x.it/a"})])
        org.fail_record("locked@metalpro.it")  # UNABLE_TO_LOCK_ROW: passes
        org.fail_record(
            "refused@metalpro.it", "FIELD_CUSTOM_VALIDATION_EXCEPTION", "Region is required"
        )

        assert run_round(dispatcher(session_factory)) == 3
        syncs = {m.lead_id: m for m in messages(session_factory, "crm.sync")}
        good, locked, refused = (syncs[_lead_id(session_factory, e)] for e in emails)
        # Written: delivered, its record id kept.
        assert (good.status, good.last_error) == ("delivered", None)
        assert [lead_id for _, lead_id, _, _ in records(session_factory)] == [good.lead_id]
        # Refused for good: the dead letter at once, with Salesforce's message.
        assert refused.status == "failed" and refused.attempts == 1
        assert "FIELD_CUSTOM_VALIDATION_EXCEPTION: Region is required" in (refused.last_error or "")
        # Failed for now: retried, and the retry writes it.
        assert (locked.status, locked.attempts) == ("pending", 1)
        assert "UNABLE_TO_LOCK_ROW" in (locked.last_error or "")

        make_all_due(session_factory)
        assert run_round(dispatcher(session_factory)) == 1
        [again] = [m for m in messages(session_factory, "crm.sync") if m.id == locked.id]
        assert again.status == "delivered"
        assert org.person("locked@metalpro.it") is not None
        assert org.person("refused@metalpro.it") is None
        assert len(records(session_factory)) == 2
