"""The HubSpot connector against a loopback stand-in of HubSpot's CRM API."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import httpx
import pytest
from tests.crm.helpers import connector_runner, standin_fixtures
from tests.crm.standins.hubspot import HubSpotStandIn, running
from tests.server import free_port

from leadscore_api.crm.base import (
    CrmError,
    CrmRateLimited,
    HandoverTask,
    InboundRequest,
    LeadSnapshot,
    MemoryTokenCache,
    NotificationRejected,
    Outcome,
    RecordRef,
    seconds_until_midnight,
)
from leadscore_api.crm.hubspot import HubSpotConnector

T = TypeVar("T")
HOOK_URL = "https://scores.example.com/v1/crm/hubspot/notifications"
NOW = datetime(2026, 11, 26, 9, 30, tzinfo=UTC)


served, hubspot = standin_fixtures(running, "hubspot")


run = connector_runner(HubSpotConnector)


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


# -- scores out -------------------------------------------------------------------------


def test_push_creates_a_missing_contact_with_its_names_and_returns_its_id(
    hubspot: HubSpotStandIn,
) -> None:
    snapshot = lead(
        1, attributes={"first_name": "Anna", "last_name": "Rossi", "company": "MetalPro"}
    )
    written = run(hubspot, lambda c: c.push([snapshot], {}))
    contact_id = hubspot.contact_id("buyer1@metalpro.it")
    assert written == {"lead-1": RecordRef("contacts", str(contact_id))}
    person = hubspot.person("buyer1@metalpro.it")
    assert person is not None
    assert (person["firstname"], person["lastname"], person["company"]) == (
        "Anna",
        "Rossi",
        "MetalPro",
    )
    assert person["leadscore_letter"] == "C"
    # The names go in a second call, for the new contact only.
    assert hubspot.log.calls[1].body == {
        "inputs": [
            {
                "id": contact_id,
                "properties": {"firstname": "Anna", "lastname": "Rossi", "company": "MetalPro"},
            }
        ]
    }


def test_push_updates_the_contact_found_by_email_without_touching_its_names(
    hubspot: HubSpotStandIn,
) -> None:
    existing = hubspot.add_contact("Buyer1@MetalPro.it", firstname="Annamaria")
    snapshot = lead(1, email="BUYER1@metalpro.it", attributes={"first_name": "Anna"})
    written = run(hubspot, lambda c: c.push([snapshot], {}))
    assert written == {"lead-1": RecordRef("contacts", existing)}
    assert hubspot.log.lines() == ["POST /crm/v3/objects/contacts/batch/upsert"]
    person = hubspot.person("buyer1@metalpro.it")
    assert person is not None
    assert person["firstname"] == "Annamaria"
    assert person["leadscore_score"] == "20"
    assert len(hubspot.contacts) == 1


def test_push_uses_the_stored_record_id_without_looking_up_the_email(
    hubspot: HubSpotStandIn,
) -> None:
    stored = hubspot.add_contact("someone.else@metalpro.it")
    written = run(
        hubspot, lambda c: c.push([lead(1, score=55)], {"lead-1": RecordRef("contacts", stored)})
    )
    assert written == {"lead-1": RecordRef("contacts", stored)}
    assert hubspot.log.lines() == ["POST /crm/v3/objects/contacts/batch/update"]
    assert hubspot.contacts[stored].properties["leadscore_score"] == "55"
    assert hubspot.person("buyer1@metalpro.it") is None


def test_a_stored_contact_deleted_in_hubspot_is_found_again_by_email(
    hubspot: HubSpotStandIn,
) -> None:
    kept = hubspot.add_contact("buyer2@metalpro.it")
    known = {"lead-1": RecordRef("contacts", "999"), "lead-2": RecordRef("contacts", kept)}
    written = run(hubspot, lambda c: c.push([lead(1), lead(2, score=70)], known))
    recreated = hubspot.contact_id("buyer1@metalpro.it")
    assert written == {
        "lead-1": RecordRef("contacts", str(recreated)),
        "lead-2": RecordRef("contacts", kept),
    }
    assert hubspot.log.lines() == [
        "POST /crm/v3/objects/contacts/batch/update",  # 404: contact 999 is gone
        "POST /crm/v3/objects/contacts/batch/read",  # which of the stored ids are gone
        "POST /crm/v3/objects/contacts/batch/upsert",
        "POST /crm/v3/objects/contacts/batch/update",
    ]
    assert hubspot.contacts[kept].properties["leadscore_score"] == "70"


def test_a_gone_contact_reported_per_id_is_found_again_by_email() -> None:
    with running(missing_update="207") as hubspot:
        kept = hubspot.add_contact("buyer2@metalpro.it")
        known = {"lead-1": RecordRef("contacts", "999"), "lead-2": RecordRef("contacts", kept)}
        written = run(hubspot, lambda c: c.push([lead(1), lead(2, score=70)], known))
        assert written == {
            "lead-1": RecordRef("contacts", str(hubspot.contact_id("buyer1@metalpro.it"))),
            "lead-2": RecordRef("contacts", kept),
        }
        assert hubspot.log.lines() == [
            "POST /crm/v3/objects/contacts/batch/update",  # 207: 999 not found, 2 written
            "POST /crm/v3/objects/contacts/batch/upsert",  # lead 1 only
        ]
        assert [i["id"] for i in hubspot.log.calls[1].body["inputs"]] == ["buyer1@metalpro.it"]
        assert hubspot.contacts[kept].properties["leadscore_score"] == "70"


def test_without_create_missing_only_existing_contacts_are_written(
    hubspot: HubSpotStandIn,
) -> None:
    existing = hubspot.add_contact("buyer2@metalpro.it")
    written = run(hubspot, lambda c: c.push([lead(1), lead(2)], {}), create_missing=False)
    assert written == {"lead-2": RecordRef("contacts", existing)}
    assert hubspot.log.lines() == [
        "POST /crm/v3/objects/contacts/batch/read",
        "POST /crm/v3/objects/contacts/batch/update",
    ]
    assert hubspot.log.calls[0].body["idProperty"] == "email"
    assert hubspot.person("buyer1@metalpro.it") is None
    assert len(hubspot.contacts) == 1


def test_a_full_batch_goes_in_one_call_and_a_shared_email_is_written_once(
    hubspot: HubSpotStandIn,
) -> None:
    leads = [lead(n) for n in range(99)] + [
        lead(100, email="buyer0@metalpro.it", score=80, updated_at=NOW + timedelta(minutes=1))
    ]
    assert len(leads) == HubSpotConnector.max_batch
    written = run(hubspot, lambda c: c.push(leads, {}))
    assert hubspot.log.lines() == ["POST /crm/v3/objects/contacts/batch/upsert"]
    assert len(hubspot.log.calls[0].body["inputs"]) == 99
    assert written["lead-0"] == written["lead-100"]
    assert len(written) == 100
    person = hubspot.person("buyer0@metalpro.it")
    assert person is not None
    assert person["leadscore_score"] == "80"  # the newer snapshot of the two


def test_more_than_a_batch_is_refused_before_calling_hubspot(hubspot: HubSpotStandIn) -> None:
    with pytest.raises(CrmError) as caught:
        run(hubspot, lambda c: c.push([lead(n) for n in range(101)], {}))
    assert caught.value.permanent
    assert hubspot.log.lines() == []


# -- limits and errors ------------------------------------------------------------------


def test_seconds_until_midnight_is_counted_in_the_accounts_time_zone() -> None:
    now = datetime(2026, 11, 26, 22, 0, tzinfo=UTC)
    assert seconds_until_midnight(now, UTC) == 2 * 3600
    assert seconds_until_midnight(now, ZoneInfo("Europe/Rome")) == 1 * 3600  # 23:00 there
    assert seconds_until_midnight(now, ZoneInfo("America/New_York")) == 7 * 3600  # 17:00 there
    # The spring-forward night has 23 hours in Rome: midnight to midnight is 23 h.
    before_dst = datetime(2026, 3, 28, 23, 0, tzinfo=UTC)  # 00:00 on the 29th in Rome
    assert seconds_until_midnight(before_dst, ZoneInfo("Europe/Rome")) == 23 * 3600


def _expected_to_midnight(zone: Any) -> float:
    return seconds_until_midnight(datetime.now(UTC), zone)


@pytest.mark.parametrize("zone", [None, "Pacific/Auckland"])
def test_the_daily_quota_waits_until_midnight_in_the_accounts_time_zone(
    hubspot: HubSpotStandIn, zone: str | None
) -> None:
    hubspot.fail_next(429, policy="DAILY")
    options = {"time_zone": zone} if zone else {}
    with pytest.raises(CrmRateLimited) as caught:
        run(hubspot, lambda c: c.push([lead(1)], {}), options=options)
    expected = _expected_to_midnight(ZoneInfo(zone) if zone else UTC)
    assert caught.value.retry_after is not None
    assert abs(caught.value.retry_after - expected) < 5
    assert caught.value.status == 429
    assert not caught.value.permanent


def test_the_ten_second_limit_waits_for_retry_after_or_ten_seconds(
    hubspot: HubSpotStandIn,
) -> None:
    hubspot.fail_next(429, policy="TEN_SECONDLY", retry_after=3)
    hubspot.fail_next(429, policy="SECONDLY")
    waits = []
    for _ in range(2):
        with pytest.raises(CrmRateLimited) as caught:
            run(hubspot, lambda c: c.create_task(_task(), RecordRef("contacts", "1")))
        waits.append(caught.value.retry_after)
    assert waits == [3.0, 10.0]


def test_errors_that_retrying_cannot_fix_are_permanent(hubspot: HubSpotStandIn) -> None:
    # A field map naming a property that the portal does not have: HubSpot's 400.
    with pytest.raises(CrmError) as unknown_property:
        run(hubspot, lambda c: c.push([lead(1)], {}), field_map={"letter": "lead_grade"})
    assert unknown_property.value.permanent
    assert unknown_property.value.status == 400
    assert "PROPERTY_DOESNT_EXIST" in str(unknown_property.value)
    # A revoked or wrong token: 401.
    with pytest.raises(CrmError) as bad_token:
        run(hubspot, lambda c: c.push([lead(1)], {}), credentials={"token": "pat-na1-revoked"})
    assert (bad_token.value.status, bad_token.value.permanent) == (401, True)
    assert hubspot.contacts == {}


def test_server_errors_and_network_failures_are_retried(hubspot: HubSpotStandIn) -> None:
    hubspot.fail_next(502)
    with pytest.raises(CrmError) as server_error:
        run(hubspot, lambda c: c.push([lead(1)], {}))
    assert (server_error.value.status, server_error.value.permanent) == (502, False)
    with pytest.raises(CrmError) as unreachable:
        run(hubspot, lambda c: c.push([lead(1)], {}), base_url=f"http://127.0.0.1:{free_port()}")
    assert not unreachable.value.permanent
    assert not isinstance(unreachable.value, CrmRateLimited)
    # Once HubSpot answers again the same push succeeds.
    assert "lead-1" in run(hubspot, lambda c: c.push([lead(1)], {}))


# -- tasks, erasure, merge --------------------------------------------------------------


def _task(owner: str | None = "rep-ben") -> HandoverTask:
    return HandoverTask(
        lead_id="lead-1",
        owner=owner,
        subject="Call Anna Rossi within 24 h",
        body="Letter A, score 92: asked for a quote.",
        due_at=datetime(2026, 11, 27, 10, 0, tzinfo=ZoneInfo("Europe/Rome")),
    )


def test_handover_creates_a_high_priority_call_task_for_the_mapped_owner(
    hubspot: HubSpotStandIn,
) -> None:
    contact = hubspot.add_contact("buyer1@metalpro.it")
    task_id = run(hubspot, lambda c: c.create_task(_task(), RecordRef("contacts", contact)))
    assert hubspot.tasks() == [
        {
            "id": task_id,
            "hs_timestamp": "2026-11-27T09:00:00.000Z",
            "hs_task_subject": "Call Anna Rossi within 24 h",
            "hs_task_body": "Letter A, score 92: asked for a quote.",
            "hs_task_status": "NOT_STARTED",
            "hs_task_priority": "HIGH",
            "hs_task_type": "CALL",
            "hubspot_owner_id": "102",
            "contacts": [contact],
        }
    ]


def test_a_task_for_an_unmapped_owner_goes_to_hubspots_default(hubspot: HubSpotStandIn) -> None:
    contact = hubspot.add_contact("buyer1@metalpro.it")
    run(
        hubspot, lambda c: c.create_task(_task(owner="rep-unknown"), RecordRef("contacts", contact))
    )
    assert "hubspot_owner_id" not in hubspot.tasks()[0]


def test_erase_deletes_the_contact_and_a_missing_one_is_not_an_error(
    hubspot: HubSpotStandIn,
) -> None:
    contact = hubspot.add_contact("buyer1@metalpro.it")

    async def twice(connector: HubSpotConnector) -> None:
        await connector.erase(RecordRef("contacts", contact))
        await connector.erase(RecordRef("contacts", contact))

    run(hubspot, twice)
    assert hubspot.log.lines() == [f"DELETE /crm/v3/objects/contacts/{contact}"] * 2
    assert hubspot.person("buyer1@metalpro.it") is None


def test_erase_with_hard_delete_uses_the_gdpr_delete(hubspot: HubSpotStandIn) -> None:
    contact = hubspot.add_contact("buyer1@metalpro.it")
    run(hubspot, lambda c: c.erase(RecordRef("contacts", contact)), options={"hard_delete": True})
    assert hubspot.log.lines() == ["POST /crm/v3/objects/contacts/gdpr-delete"]
    assert hubspot.log.calls[0].body == {"objectId": contact}
    assert hubspot.erased == [contact]


def test_merge_merges_the_contacts_in_hubspot(hubspot: HubSpotStandIn) -> None:
    survivor = hubspot.add_contact("anna@metalpro.it", leadscore_letter="A")
    merged = hubspot.add_contact("a.rossi@metalpro.it", phone="+39 02 1234")
    result = run(
        hubspot,
        lambda c: c.merge(RecordRef("contacts", survivor), RecordRef("contacts", merged)),
    )
    assert result == RecordRef("contacts", survivor)
    assert hubspot.log.calls[0].body == {"primaryObjectId": survivor, "objectIdToMerge": merged}
    assert list(hubspot.contacts) == [survivor]
    assert hubspot.contacts[survivor].properties["phone"] == "+39 02 1234"


# -- notifications ----------------------------------------------------------------------


def test_a_signed_notification_is_accepted_and_a_forged_or_stale_one_refused(
    hubspot: HubSpotStandIn,
) -> None:
    async def verify(connector: HubSpotConnector) -> list[str]:
        refused = []
        good = hubspot.outcome_notification("buyer1@metalpro.it", "deal.won", HOOK_URL)
        connector.verify_notification(inbound(good), datetime.now(UTC))
        method, headers, body = good
        cases = {
            "other body": (method, headers, body.replace(b"closedwon", b"closedlost")),
            "other url": good,
            "other secret": (method, {**headers, "x-hubspot-signature-v3": "AAAA"}, body),
            "no signature": (method, {"x-hubspot-request-timestamp": "1"}, body),
            "stale": hubspot.sign(
                method,
                HOOK_URL,
                body,
                int((datetime.now(UTC) - timedelta(minutes=6)).timestamp() * 1000),
            ),
        }
        for name, message in cases.items():
            url = HOOK_URL + "?x=1" if name == "other url" else HOOK_URL
            try:
                connector.verify_notification(inbound(message, url), datetime.now(UTC))
            except NotificationRejected:
                refused.append(name)
        return refused

    assert run(hubspot, verify) == [
        "other body",
        "other url",
        "other secret",
        "no signature",
        "stale",
    ]


def test_the_signed_uri_is_compared_with_hubspots_decoded_escapes(hubspot: HubSpotStandIn) -> None:
    signed_url = "https://scores.example.com/v1/crm/hubspot/notifications?portal=a:b"
    received_url = "https://scores.example.com/v1/crm/hubspot/notifications?portal=a%3Ab"
    message = hubspot.sign("POST", signed_url, b"[]")

    async def verify(connector: HubSpotConnector) -> None:
        connector.verify_notification(inbound(message, received_url), datetime.now(UTC))

    run(hubspot, verify)


def test_a_proxy_facing_notification_url_can_be_configured(hubspot: HubSpotStandIn) -> None:
    message = hubspot.sign("POST", HOOK_URL, b"[]")

    async def verify(connector: HubSpotConnector) -> None:
        connector.verify_notification(
            inbound(message, "http://10.0.0.5:8000/v1/crm/hubspot/notifications"),
            datetime.now(UTC),
        )

    run(hubspot, verify, options={"notification_url": HOOK_URL})


def test_every_outcome_hubspot_can_express_is_parsed(hubspot: HubSpotStandIn) -> None:
    contact = hubspot.add_contact("buyer1@metalpro.it")
    expected = ["lead.accepted", "lead.contacted", "opportunity.created", "deal.won", "deal.lost"]
    found = []
    for outcome_type in expected:
        message = hubspot.outcome_notification("buyer1@metalpro.it", outcome_type, HOOK_URL)  # type: ignore[arg-type]
        event = json.loads(message[2])[0]
        outcomes = receive(hubspot, message)
        assert len(outcomes) == 1
        outcome = outcomes[0]
        assert outcome.record == RecordRef("contacts", contact)
        assert outcome.occurred_at == datetime.fromtimestamp(event["occurredAt"] / 1000, UTC)
        found.append(outcome.type)
    assert found == expected
    # Deal outcomes name the deal; won and lost are the same deal as the created one.
    deals = {o.dedup_key for o in receive(hubspot, message)}
    assert deals == {f"deal:{next(iter(hubspot.deals))}:deal.lost"}


def test_a_repeated_notification_has_the_same_dedup_key(hubspot: HubSpotStandIn) -> None:
    message = hubspot.outcome_notification("buyer1@metalpro.it", "lead.contacted", HOOK_URL)
    first, again = receive(hubspot, message), receive(hubspot, message)
    assert [o.dedup_key for o in first] == [o.dedup_key for o in again]
    assert (
        first[0].dedup_key == f"contact:{hubspot.contact_id('buyer1@metalpro.it')}:lead.contacted"
    )


def test_changes_that_are_no_outcome_give_nothing(hubspot: HubSpotStandIn) -> None:
    contact = hubspot.add_contact("buyer1@metalpro.it")
    deal = hubspot.add_deal(contact)
    events = [
        {
            "subscriptionType": "deal.propertyChange",
            "objectId": int(deal),
            "propertyName": "dealstage",
            "propertyValue": "qualifiedtobuy",
            "occurredAt": 1,
            "subscriptionId": 1,
        },
        {
            "subscriptionType": "contact.propertyChange",
            "objectId": int(contact),
            "propertyName": "hs_lead_status",
            "propertyValue": "UNQUALIFIED",
            "occurredAt": 1,
            "subscriptionId": 2,
        },
        {
            "subscriptionType": "contact.propertyChange",
            "objectId": int(contact),
            "propertyName": "firstname",
            "propertyValue": "Anna",
            "occurredAt": 1,
            "subscriptionId": 3,
        },
        {
            "subscriptionType": "contact.deletion",
            "objectId": int(contact),
            "occurredAt": 1,
            "subscriptionId": 4,
        },
    ]
    assert receive(hubspot, hubspot.sign("POST", HOOK_URL, json.dumps(events).encode())) == []


def test_generic_object_events_and_the_stage_cache(hubspot: HubSpotStandIn) -> None:
    contact = hubspot.add_contact("buyer1@metalpro.it")
    deal = hubspot.add_deal(contact, "closedwon")
    event = {
        "subscriptionType": "object.propertyChange",
        "objectTypeId": "0-3",
        "objectId": int(deal),
        "propertyName": "dealstage",
        "propertyValue": "closedwon",
        "occurredAt": 1764149400000,
        "subscriptionId": 9,
    }
    tokens = MemoryTokenCache()

    async def twice(connector: HubSpotConnector) -> list[Outcome]:
        outcomes = []
        for _ in range(2):
            request = inbound(hubspot.sign("POST", HOOK_URL, json.dumps([event]).encode()))
            outcomes += await connector.parse_notification(request)
        return outcomes

    outcomes = run(hubspot, twice, tokens=tokens)
    assert [o.type for o in outcomes] == ["deal.won", "deal.won"]
    # The pipelines are read once and kept in the token cache (shared by replicas).
    assert hubspot.log.lines().count("GET /crm/v3/pipelines/deals") == 1
    assert tokens.get()["deal_stages"]["closedwon"]["probability"] == "1.0"
    # A stage unknown to the cache (added since) makes the connector read them again.
    hubspot.pipelines[0]["stages"].append(
        {
            "id": "wonbig",
            "label": "Won big",
            "displayOrder": 9,
            "archived": False,
            "metadata": {"isClosed": "true", "probability": "1.0"},
        }
    )
    event["propertyValue"] = "wonbig"
    assert [o.type for o in run(hubspot, twice, tokens=tokens)] == ["deal.won", "deal.won"]
    assert hubspot.log.lines().count("GET /crm/v3/pipelines/deals") == 2


def test_a_generic_deal_creation_event_is_an_opportunity(hubspot: HubSpotStandIn) -> None:
    contact = hubspot.add_contact("buyer1@metalpro.it")
    deal = hubspot.add_deal(contact)
    events = [
        {
            "subscriptionType": "object.creation",
            "objectTypeId": "0-3",
            "objectId": int(deal),
            "occurredAt": 1764149400000,
            "subscriptionId": 5,
        },
        {
            "subscriptionType": "object.creation",
            "objectTypeId": "0-1",
            "objectId": int(contact),
            "occurredAt": 1764149400000,
            "subscriptionId": 6,
        },
    ]
    outcomes = receive(hubspot, hubspot.sign("POST", HOOK_URL, json.dumps(events).encode()))
    assert [(o.type, o.dedup_key, o.record) for o in outcomes] == [
        ("opportunity.created", f"deal:{deal}:opportunity.created", RecordRef("contacts", contact))
    ]
    assert outcomes[0].occurred_at == datetime(2025, 11, 26, 9, 30, tzinfo=UTC)


def test_a_deal_without_a_contact_is_left_for_the_pull(hubspot: HubSpotStandIn) -> None:
    deal = hubspot.add_deal(None)
    event = {
        "subscriptionType": "deal.creation",
        "objectId": int(deal),
        "occurredAt": 1,
        "subscriptionId": 1,
    }
    assert receive(hubspot, hubspot.sign("POST", HOOK_URL, json.dumps([event]).encode())) == []


# -- pull -------------------------------------------------------------------------------


def test_pull_pages_through_changed_deals_and_lead_statuses_paced_to_the_search_limit(
    hubspot: HubSpotStandIn,
) -> None:
    since = datetime.now(UTC) - timedelta(minutes=1)
    contacts = [hubspot.add_contact(f"buyer{n}@metalpro.it") for n in range(3)]
    won = [hubspot.add_deal(contacts[0], "closedwon") for _ in range(150)]
    lost = hubspot.add_deal(contacts[1], "closedlost")
    hubspot.add_contact("called@metalpro.it", hs_lead_status="CONNECTED")
    hubspot.add_contact("new@metalpro.it", hs_lead_status="NEW")
    outcomes, cursor = run(hubspot, lambda c: c.pull_changes(since))
    assert [line for line in hubspot.log.lines() if "search" in line] == [
        "POST /crm/v3/objects/deals/search",
        "POST /crm/v3/objects/deals/search",
        "POST /crm/v3/objects/contacts/search",
    ]
    searches = [call.body for call in hubspot.log.calls if call.path.endswith("/search")]
    assert searches[0]["limit"] == 100 and "after" not in searches[0]
    assert searches[1]["after"] == "100"
    assert searches[0]["filterGroups"][0]["filters"][0] == {
        "propertyName": "hs_lastmodifieddate",
        "operator": "GTE",
        "value": str(int(since.timestamp() * 1000)),
    }
    by_type: dict[str, set[str]] = {}
    for outcome in outcomes:
        by_type.setdefault(outcome.type, set()).add(outcome.dedup_key)
    assert by_type["deal.won"] == {f"deal:{d}:deal.won" for d in won}
    assert by_type["deal.lost"] == {f"deal:{lost}:deal.lost"}
    assert len(by_type["opportunity.created"]) == 151
    assert by_type["lead.contacted"] == {
        f"contact:{hubspot.contact_id('called@metalpro.it')}:lead.contacted"
    }
    assert "lead.accepted" not in by_type
    assert since <= cursor <= datetime.now(UTC)


def test_pull_follows_the_search_limit_when_calls_come_fast(hubspot: HubSpotStandIn) -> None:
    for n in range(3):
        hubspot.add_deal(hubspot.add_contact(f"buyer{n}@metalpro.it"), "closedwon")
    since = datetime.now(UTC) - timedelta(minutes=1)

    async def three_pulls(connector: HubSpotConnector) -> int:
        total = 0
        for _ in range(3):  # six searches: more than HubSpot's 4 per second if not paced
            outcomes, _cursor = await connector.pull_changes(since)
            total += len(outcomes)
        return total

    assert run(hubspot, three_pulls) == 3 * 6


def test_a_pulled_win_happened_at_the_deals_close_date(hubspot: HubSpotStandIn) -> None:
    contact = hubspot.add_contact("buyer1@metalpro.it")
    deal = hubspot.add_deal(contact, "closedwon", closedate="2026-11-20T15:00:00.000Z")
    outcomes, _cursor = run(hubspot, lambda c: c.pull_changes(NOW))
    won = [o for o in outcomes if o.type == "deal.won"]
    assert [(o.dedup_key, o.occurred_at, o.record) for o in won] == [
        (
            f"deal:{deal}:deal.won",
            datetime(2026, 11, 20, 15, 0, tzinfo=UTC),
            RecordRef("contacts", contact),
        )
    ]
    assert won[0].properties["amount"] == "12000"


def test_the_pull_cursor_moves_forward_and_a_stale_cursor_finds_nothing_new(
    hubspot: HubSpotStandIn,
) -> None:
    hubspot.add_deal(hubspot.add_contact("buyer1@metalpro.it"), "closedwon")
    outcomes, cursor = run(
        hubspot, lambda c: c.pull_changes(datetime.now(UTC) + timedelta(minutes=1))
    )
    assert outcomes == []
    assert cursor > datetime.now(UTC)  # never goes back before `since`


# -- setup ------------------------------------------------------------------------------


def test_setup_creates_the_group_and_properties_then_reports_them_existing() -> None:
    with running(custom_properties=False) as hubspot:
        tokens = MemoryTokenCache()
        first = run(hubspot, lambda c: c.setup(), tokens=tokens)
        second = run(hubspot, lambda c: c.setup(), tokens=tokens)
        names = [
            "leadscore_letter",
            "leadscore_score",
            "leadscore_tier",
            "leadscore_stage",
            "leadscore_owner",
            "leadscore_next_action",
            "leadscore_next_action_due",
            "leadscore_lead_id",
        ]
        assert first.created == ["property group leadscore", *names]
        assert first.existing == []
        assert second.created == []
        assert second.existing == ["property group leadscore", *names]
        assert hubspot.property_definitions["leadscore_next_action_due"]["type"] == "datetime"
        assert hubspot.property_definitions["leadscore_score"]["fieldType"] == "number"
        assert any(
            "Private Apps" in step and "/v1/crm/hubspot/notifications" in step
            for step in first.manual_steps
        )
        # The task association type is read from HubSpot's schema and kept.
        assert tokens.get()["task_contact_association_type_id"] == 204
        # Once set up, a push writes the fields it created.
        run(hubspot, lambda c: c.push([lead(1)], {}))
        person = hubspot.person("buyer1@metalpro.it")
        assert person is not None and person["leadscore_letter"] == "C"


def test_setup_without_a_client_secret_says_how_to_get_one(hubspot: HubSpotStandIn) -> None:
    report = run(hubspot, lambda c: c.setup(), credentials={"token": hubspot.token})
    assert any("client_secret" in step for step in report.manual_steps)


def test_an_unknown_time_zone_is_reported_by_setup_and_the_quota_counted_in_utc(
    hubspot: HubSpotStandIn,
) -> None:
    options = {"time_zone": "Europe/Atlantis"}
    report = run(hubspot, lambda c: c.setup(), options=options)
    assert any("Europe/Atlantis" in step for step in report.manual_steps)
    hubspot.fail_next(429, policy="DAILY")
    with pytest.raises(CrmRateLimited) as caught:
        run(hubspot, lambda c: c.push([lead(1)], {}), options=options)
    assert caught.value.retry_after is not None
    assert abs(caught.value.retry_after - _expected_to_midnight(UTC)) < 5


# -- the stand-in itself ----------------------------------------------------------------


def test_the_stand_in_refuses_what_hubspot_refuses(hubspot: HubSpotStandIn) -> None:
    auth = {"Authorization": f"Bearer {hubspot.token}"}
    upsert = f"{hubspot.base_url}/crm/v3/objects/contacts/batch/upsert"

    def inputs(n: int) -> list[dict[str, Any]]:
        return [
            {"id": f"b{i}@x.it", "idProperty": "email", "properties": {"leadscore_letter": "A"}}
            for i in range(n)
        ]

    with httpx.Client(timeout=10) as http:
        answers = {
            "no token": http.post(upsert, json={"inputs": inputs(1)}),
            "101 inputs": http.post(upsert, json={"inputs": inputs(101)}, headers=auth),
            "unknown field": http.post(
                upsert, json={"inputs": inputs(1), "mode": "fast"}, headers=auth
            ),
            "unknown property": http.post(
                upsert,
                json={"inputs": [{**inputs(1)[0], "properties": {"grade": "A"}}]},
                headers=auth,
            ),
            "duplicate email": http.post(
                upsert, json={"inputs": [inputs(1)[0], inputs(1)[0]]}, headers=auth
            ),
        }
    statuses = {name: answer.status_code for name, answer in answers.items()}
    assert statuses == {
        "no token": 401,
        "101 inputs": 400,
        "unknown field": 400,
        "unknown property": 400,
        "duplicate email": 400,
    }
    assert answers["no token"].json()["category"] == "INVALID_AUTHENTICATION"
    assert "PROPERTY_DOESNT_EXIST" in answers["unknown property"].json()["message"]
    assert all(answer.json()["status"] == "error" for answer in answers.values())
    assert hubspot.contacts == {}
