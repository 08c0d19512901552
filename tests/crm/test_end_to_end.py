"""One lead from new to SQL to won, through the real service and each CRM's stand-in.

The service runs with its worker (the CRM dispatcher inside ``create_app``'s lifespan), the
CRM is the stand-in on loopback: events in → letter, score and tier in the CRM's person record
within seconds; more events → SQL → the owner's task in the CRM; the CRM's own notification of
a won deal → a ``deal.won`` event on the lead, counted by the reports. And the exact calls the
CRM received, in order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from tests.conftest import TEST_ADMIN_KEY, make_settings
from tests.crm.helpers import connector_body, new_lead_events, running, sql_events

from leadscore_api.app import create_app
from leadscore_api.crm.base import CrmKind
from leadscore_api.crm.registry import CONNECTORS
from leadscore_api.storage.migrate import upgrade_database

#: The CRMs whose connector and stand-in are in this build.
KINDS: list[CrmKind] = ["hubspot", "salesforce", "zoho", "pipedrive"]

#: What each CRM receives for one lead going new -> SQL (task at the hand-over) -> won.
EXPECTED_CALLS: dict[str, list[str]] = {
    "hubspot": [
        # new: found by email or created, in one batch call
        "POST /crm/v3/objects/contacts/batch/upsert",
        # SQL: the stored record id is used, no search
        "POST /crm/v3/objects/contacts/batch/update",
        # the hand-over task
        "POST /crm/v3/objects/tasks",
        # the won notification: is the stage a won one, and whose deal is it
        "GET /crm/v3/pipelines/deals",
        "GET /crm/v4/objects/deals/53/associations/contacts",
    ],
    "salesforce": [
        # new: a token (client credentials), then the lead looked up by email, then created
        "POST /services/oauth2/token",
        "GET /services/data/v62.0/query",
        "POST /services/data/v62.0/composite/sobjects",
        # SQL: updated by the stored id (the cached token, no search)
        "PATCH /services/data/v62.0/composite/sobjects",
        # the hand-over task
        "POST /services/data/v62.0/sobjects/Task",
        # the won outbound message: whose opportunity is it
        "GET /services/data/v62.0/query",
    ],
    "zoho": [
        # new: a token, the upsert by Email, and the create of a lead Zoho refused without a name
        "POST /oauth/v2/token",
        "POST /crm/v8/Leads/upsert",
        "POST /crm/v8/Leads",
        # SQL: updated by the stored id
        "PUT /crm/v8/Leads",
        # the hand-over task
        "POST /crm/v8/Tasks",
        # the won notification: the deal, its stage's category, its contact
        "GET /crm/v8/Deals",
        "GET /crm/v8/settings/fields",
        "GET /crm/v8/Contacts",
    ],
    "pipedrive": [
        # new: the account's field keys, a search by email, then the person created
        "GET /api/v2/personFields",
        "GET /api/v2/persons/search",
        "POST /api/v2/persons",
        # SQL: updated by the stored id
        "PATCH /api/v2/persons/110",
        # the hand-over activity
        "POST /api/v2/activities",
        # the won webhook: the deal's person, for the email
        "GET /api/v2/persons/110",
    ],
}


def _wait(condition: Callable[[], Any], seconds: float = 10.0) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(0.05)
    raise AssertionError(f"not within {seconds} s")


@pytest.fixture
def service(database_url: str) -> Iterator[TestClient]:
    settings = make_settings(
        database_url, run_worker=True, worker_poll_seconds=0.1, crm_pull_seconds=0
    )
    upgrade_database(database_url)
    with TestClient(
        create_app(settings),
        base_url="http://testserver",
        headers={"Authorization": f"Bearer {TEST_ADMIN_KEY}"},
        raise_server_exceptions=False,
    ) as client:
        yield client


@pytest.mark.parametrize("kind", KINDS)
def test_one_lead_new_to_sql_to_won(kind: CrmKind, service: TestClient) -> None:
    fields = CONNECTORS[kind].default_field_map
    email = "anna.rossi@metalpro.it"
    with running(kind) as standin:
        created = service.post("/v1/crm/connectors", json=connector_body(standin, kind))
        assert created.status_code == 201, created.text

        # New: the CRM's person has our letter, score and tier within seconds.
        assert (
            service.post("/v1/events", json={"events": new_lead_events(email)}).status_code == 200
        )
        person = _wait(
            lambda: (standin.person(email) or {}).get(fields["letter"]) and standin.person(email)
        )
        lead = service.get("/v1/leads", params={"email": email}).json()["items"][0]
        assert person[fields["letter"]] == lead["letter"]
        assert float(person[fields["score"]]) == float(lead["score"])
        assert person[fields["tier"]] == lead["tier"]

        # SQL: the letter moves and the owner gets a task, due within a day.
        assert service.post("/v1/events", json={"events": sql_events(email)}).status_code == 200
        [task] = _wait(standin.tasks)
        lead = service.get("/v1/leads", params={"email": email}).json()["items"][0]
        assert lead["stage"] == "sql"
        _wait(lambda: (standin.person(email) or {}).get(fields["letter"]) == "A")
        assert "within" in str(task)

        # Won in the CRM: its own notification brings the deal back.
        url = f"http://testserver/v1/crm/{kind}/notifications"
        method, headers, body = standin.outcome_notification(email, "deal.won", url)
        crm_side = TestClient(service.app, base_url="http://testserver")  # no API key
        answer = crm_side.request(method, url, headers=headers, content=body)
        assert answer.status_code == 200, answer.text
        funnel = service.get("/v1/reports/funnel").json()
        won = {step["key"]: step for step in funnel["funnel"]}["won"]
        assert won["count"] == 1, funnel

        assert standin.log.lines() == EXPECTED_CALLS[kind]
