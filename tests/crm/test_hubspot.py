"""The HubSpot connector against a loopback stand-in of HubSpot's CRM API."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

import httpx
import pytest
from tests.crm.standins.hubspot import HubSpotStandIn, running

from leadscore_api.crm.base import (
    HandoverTask,
    InboundRequest,
    LeadSnapshot,
    MemoryTokenCache,
    Outcome,
    RecordRef,
)
from leadscore_api.crm.hubspot import HubSpotConnector

T = TypeVar("T")
HOOK_URL = "https://scores.example.com/v1/crm/hubspot/notifications"
NOW = datetime(2026, 11, 26, 9, 30, tzinfo=UTC)


@pytest.fixture
def hubspot() -> Iterator[HubSpotStandIn]:
    with running() as standin:
        yield standin


def run(
    standin: HubSpotStandIn,
    action: Callable[[HubSpotConnector], Awaitable[T]],
    tokens: MemoryTokenCache | None = None,
    **overrides: Any,
) -> T:
    async def main() -> T:
        async with httpx.AsyncClient(timeout=10) as http:
            config = standin.connector_config(**overrides)
            return await action(HubSpotConnector(config, http, tokens or MemoryTokenCache()))

    return asyncio.run(main())


def lead(n: int = 1, **fields: Any) -> LeadSnapshot:
    values: dict[str, Any] = {
        "lead_id": f"lead-{n}",
        "email": f"buyer{n}@metalpro.it",
        "letter": "C",
        "score": 20,
        "tier": "cold",
        "stage": "new",
        "owner": None,
        "next_action": None,
        "next_action_due": None,
        "updated_at": NOW,
    }
    values.update(fields)
    return LeadSnapshot(**values)


def inbound(message: tuple[str, dict[str, str], bytes], url: str = HOOK_URL) -> InboundRequest:
    method, headers, body = message
    return InboundRequest(method=method, url=url, headers=headers, body=body)


def receive(standin: HubSpotStandIn, message: tuple[str, dict[str, str], bytes]) -> list[Outcome]:
    async def action(connector: HubSpotConnector) -> list[Outcome]:
        request = inbound(message)
        connector.verify_notification(request, datetime.now(UTC))
        return await connector.parse_notification(request)

    return run(standin, action)


# -- the whole story --------------------------------------------------------------------


def test_exact_calls_for_one_lead_going_new_sql_won(hubspot: HubSpotStandIn) -> None:
    due = datetime(2026, 11, 27, 9, 30, tzinfo=UTC)

    async def story(connector: HubSpotConnector) -> tuple[str, list[Outcome]]:
        first = await connector.push([lead(1)], {})
        sql = lead(
            1,
            letter="A",
            score=92,
            tier="hot",
            stage="sql",
            owner="rep-anna",
            next_action="call",
            next_action_due=due,
        )
        second = await connector.push([sql], first)
        assert second == first
        record = first["lead-1"]
        task = HandoverTask("lead-1", "rep-anna", "Call Anna Rossi within 24 h", "A 92", due)
        task_id = await connector.create_task(task, record)
        request = inbound(hubspot.outcome_notification("buyer1@metalpro.it", "deal.won", HOOK_URL))
        connector.verify_notification(request, datetime.now(UTC))
        return task_id, await connector.parse_notification(request)

    task_id, outcomes = run(hubspot, story)
    contact_id = hubspot.contact_id("buyer1@metalpro.it")
    assert contact_id is not None
    lines = hubspot.log.lines()
    assert lines[:3] == [
        "POST /crm/v3/objects/contacts/batch/upsert",
        "POST /crm/v3/objects/contacts/batch/update",
        "POST /crm/v3/objects/tasks",
    ]
    assert lines[3:] == [
        "GET /crm/v3/pipelines/deals",
        f"GET /crm/v4/objects/deals/{outcomes[0].properties['deal_id']}/associations/contacts",
    ]
    upsert, update, task = (call.body for call in hubspot.log.calls[:3])
    assert upsert == {
        "inputs": [
            {
                "id": "buyer1@metalpro.it",
                "idProperty": "email",
                "properties": {
                    "leadscore_letter": "C",
                    "leadscore_score": "20",
                    "leadscore_tier": "cold",
                    "leadscore_stage": "new",
                    "leadscore_owner": "",
                    "leadscore_next_action": "",
                    "leadscore_next_action_due": "",
                    "leadscore_lead_id": "lead-1",
                    "email": "buyer1@metalpro.it",
                },
            }
        ]
    }
    assert update == {
        "inputs": [
            {
                "id": contact_id,
                "properties": {
                    "leadscore_letter": "A",
                    "leadscore_score": "92",
                    "leadscore_tier": "hot",
                    "leadscore_stage": "sql",
                    "leadscore_owner": "rep-anna",
                    "leadscore_next_action": "call",
                    "leadscore_next_action_due": "2026-11-27T09:30:00.000Z",
                    "leadscore_lead_id": "lead-1",
                    "hubspot_owner_id": "101",
                },
            }
        ]
    }
    assert task["properties"]["hubspot_owner_id"] == "101"
    assert task["associations"][0]["to"] == {"id": contact_id}
    assert hubspot.tasks()[0]["id"] == task_id
    assert [(o.type, o.record) for o in outcomes] == [
        ("deal.won", RecordRef("contacts", contact_id))
    ]
    person = hubspot.person("buyer1@metalpro.it")
    assert person is not None
    assert (person["leadscore_letter"], person["leadscore_score"]) == ("A", "92")
    assert person["hubspot_owner_id"] == "101"
