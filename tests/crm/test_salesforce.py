"""The Salesforce connector against a local Salesforce stand-in (login host + instance host)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
import pytest
from tests.crm.helpers import connector_runner, standin_fixtures
from tests.crm.standins.salesforce import REP_USER, SalesforceStandIn, running

from leadscore_api.crm import salesforce_outbound as outbound
from leadscore_api.crm.base import (
    CrmError,
    CrmPartialFailure,
    CrmRateLimited,
    HandoverTask,
    InboundRequest,
    LeadSnapshot,
    MemoryTokenCache,
    NotificationRejected,
    RecordRef,
)
from leadscore_api.crm.salesforce import SalesforceConnector

T = TypeVar("T")
NOTIFY_URL = "https://leadscore.example.com/v1/crm/salesforce/notifications"
API = "/services/data/v62.0"


# ``org``: a fresh org for each test behind the module's two servers (login and instance host).
served, org = standin_fixtures(running, "org")


run = connector_runner(SalesforceConnector)


def snapshot(email: str | None, **changes: Any) -> LeadSnapshot:
    values: dict[str, Any] = {
        "lead_id": f"lead-{email}",
        "email": email,
        "letter": "C",
        "score": 20,
        "tier": "cold",
        "stage": "new",
        "owner": None,
        "next_action": None,
        "next_action_due": None,
        "updated_at": datetime(2026, 11, 26, 9, 0, tzinfo=UTC),
        "attributes": {},
    }
    values.update(changes)
    return LeadSnapshot(**values)


def inbound(body: bytes, url: str = NOTIFY_URL) -> InboundRequest:
    return InboundRequest("POST", url, {"content-type": "text/xml; charset=utf-8"}, body)


# -- scores out -------------------------------------------------------------------------------


def test_a_new_person_becomes_a_lead_with_placeholders_for_what_salesforce_requires(
    org: SalesforceStandIn,
) -> None:
    lead = snapshot("anna.rossi@metalpro.it", attributes={"first_name": "Anna"})

    written = run(org, lambda c: c.push([lead], {}))

    record = org.person("anna.rossi@metalpro.it")
    assert record is not None
    assert written == {lead.lead_id: RecordRef("Lead", record["Id"])}
    assert record["FirstName"] == "Anna"
    assert record["LastName"] == "[not provided]"
    assert record["Company"] == "[not provided]"
    assert record["Leadscore_Letter__c"] == "C"
    assert record["Leadscore_Score__c"] == 20
    assert record["Leadscore_Lead_Id__c"] == lead.lead_id
    assert org.log.lines() == [
        "POST /services/oauth2/token",
        f"GET {API}/query",
        f"POST {API}/composite/sobjects",
    ]
    assert org.log.calls[2].body["allOrNone"] is False


def test_an_existing_lead_is_found_by_email_whatever_its_case_and_updated(
    org: SalesforceStandIn,
) -> None:
    lead_id = org.add("Lead", LastName="Rossi", Company="MetalPro", Email="Anna.Rossi@MetalPro.it")
    due = datetime(2026, 11, 27, 10, 30, tzinfo=UTC)
    lead = snapshot(
        "anna.rossi@metalpro.it", letter="A", score=92, owner="maria", next_action_due=due
    )

    written = run(org, lambda c: c.push([lead], {}), owner_map={"maria": REP_USER})

    assert written == {lead.lead_id: RecordRef("Lead", lead_id)}
    record = org.person("anna.rossi@metalpro.it")
    assert record is not None
    assert (record["Company"], record["Leadscore_Letter__c"], record["OwnerId"]) == (
        "MetalPro",
        "A",
        REP_USER,
    )
    assert record["Leadscore_Next_Action_Due__c"] == "2026-11-27T10:30:00.000+0000"
    assert f"POST {API}/composite/sobjects" not in org.log.lines()


def test_create_missing_false_leaves_unknown_people_alone(org: SalesforceStandIn) -> None:
    written = run(org, lambda c: c.push([snapshot("new@example.com")], {}), create_missing=False)

    assert written == {}
    assert org.person("new@example.com") is None
    assert f"POST {API}/composite/sobjects" not in org.log.lines()


def test_a_stored_record_id_is_written_without_a_search(org: SalesforceStandIn) -> None:
    lead_id = org.add("Lead", LastName="Rossi", Company="MetalPro", Email="old@example.com")
    lead = snapshot("new-address@example.com", letter="B")

    written = run(org, lambda c: c.push([lead], {lead.lead_id: RecordRef("Lead", lead_id)}))

    assert written == {lead.lead_id: RecordRef("Lead", lead_id)}
    assert org.log.lines() == ["POST /services/oauth2/token", f"PATCH {API}/composite/sobjects"]
    assert org.records["Lead"][lead_id]["Leadscore_Letter__c"] == "B"


def test_an_email_with_a_quote_is_escaped_in_soql_and_still_matches(
    org: SalesforceStandIn,
) -> None:
    lead_id = org.add("Lead", LastName="O'Brien", Company="Pub", Email="o'brien@example.com")
    lead = snapshot("o'brien@example.com")

    written = run(org, lambda c: c.push([lead], {}))

    assert written == {lead.lead_id: RecordRef("Lead", lead_id)}
    query = org.log.calls[1].query["q"]
    assert "'o\\'brien@example.com'" in query


def test_a_full_batch_goes_out_in_one_update_and_one_create_call(org: SalesforceStandIn) -> None:
    existing = {}
    for n in range(100):
        email = f"existing-{n:03d}@example-company.com"
        existing[email] = org.add("Lead", LastName="X", Company="Y", Email=email)
    leads = [snapshot(email) for email in existing] + [
        snapshot(f"fresh-{n:03d}@example-company.com") for n in range(100)
    ]
    assert len(leads) == SalesforceConnector.max_batch == 200

    written = run(org, lambda c: c.push(leads, {}))

    assert len(written) == 200
    assert all(written[f"lead-{e}"].record_id == i for e, i in existing.items())
    writes = [call for call in org.log.calls if call.path.endswith("/composite/sobjects")]
    assert [(call.method, len(call.body["records"])) for call in writes] == [
        ("PATCH", 100),
        ("POST", 100),
    ]
    # The SOQL went out in as many GETs as keep each URL under Salesforce's 16,384 bytes.
    for call in org.log.calls:
        if call.path.endswith("/query"):
            assert len(str(httpx.URL(org.instance_url + call.path, params=call.query))) < 16_384

    with pytest.raises(CrmError) as too_many:
        run(org, lambda c: c.push([*leads, snapshot("one-more@example.com")], {}))
    assert too_many.value.permanent


def test_a_record_salesforce_refuses_is_reported_and_does_not_sink_the_others(
    org: SalesforceStandIn,
) -> None:
    leads = [snapshot("good@example.com"), snapshot("anna@localhost"), snapshot("b@example.org")]

    async def push(connector: SalesforceConnector) -> tuple[dict[str, RecordRef], dict[str, str]]:
        written = await connector.push(leads, {})
        return written, connector.last_push_errors

    written, errors = run(org, push)

    assert set(written) == {"lead-good@example.com", "lead-b@example.org"}
    assert list(errors) == ["lead-anna@localhost"]
    assert "INVALID_EMAIL_ADDRESS" in errors["lead-anna@localhost"]
    assert org.person("b@example.org") is not None


def test_a_locked_row_makes_the_batch_retryable_and_keeps_what_was_written(
    org: SalesforceStandIn,
) -> None:
    org.add("Lead", LastName="X", Company="Y", Email="locked@example.com")
    org.fail_record("locked@example.com")
    leads = [snapshot("locked@example.com"), snapshot("free@example.com")]

    with pytest.raises(CrmPartialFailure) as failure:
        run(org, lambda c: c.push(leads, {}))

    assert not failure.value.permanent
    assert list(failure.value.failed) == ["lead-locked@example.com"]
    assert "UNABLE_TO_LOCK_ROW" in failure.value.failed["lead-locked@example.com"]
    assert set(failure.value.written) == {"lead-free@example.com"}


def test_a_converted_lead_is_followed_to_the_contact_it_became(org: SalesforceStandIn) -> None:
    contact_id = org.add("Contact", LastName="Rossi", Email="anna@metalpro.it")
    lead_id = org.add(
        "Lead",
        LastName="Rossi",
        Company="MetalPro",
        Email="anna@metalpro.it",
        IsConverted=True,
        ConvertedContactId=contact_id,
    )
    lead = snapshot("anna@metalpro.it", letter="A")

    by_email = run(org, lambda c: c.push([lead], {}))
    by_stored_id = run(org, lambda c: c.push([lead], {lead.lead_id: RecordRef("Lead", lead_id)}))

    assert by_email == by_stored_id == {lead.lead_id: RecordRef("Contact", contact_id)}
    assert org.records["Contact"][contact_id]["Leadscore_Letter__c"] == "A"
    assert len(org.records["Lead"]) == 1  # no duplicate lead created


# -- tokens, limits, errors -------------------------------------------------------------------


def test_the_token_is_cached_shared_and_fetched_again_once_when_the_session_expires(
    org: SalesforceStandIn,
) -> None:
    cache = MemoryTokenCache()
    lead = snapshot("anna@example.com")
    run(org, lambda c: c.push([lead], {}), cache)
    run(org, lambda c: c.push([lead], {}), cache)  # another replica, same cache
    assert org.log.lines().count("POST /services/oauth2/token") == 1
    assert cache.get()["instance_url"] == org.instance_url != org.base_url
    assert org.log.calls[0].body == (
        f"client_id={org.client_id}&client_secret={org.client_secret}&grant_type=client_credentials"
    )

    org.expire_sessions()
    org.log.clear()
    run(org, lambda c: c.push([lead], {}), cache)

    assert org.log.lines() == [
        f"GET {API}/query",
        "POST /services/oauth2/token",
        f"GET {API}/query",
        f"PATCH {API}/composite/sobjects",
    ]
    assert cache.get()["access_token"] == org.tokens_issued[-1]


def test_the_refresh_token_flow_keeps_a_rotated_refresh_token(org: SalesforceStandIn) -> None:
    org.rotate_refresh_tokens = True
    cache = MemoryTokenCache()
    credentials = {
        "client_id": org.client_id,
        "client_secret": org.client_secret,
        "refresh_token": org.refresh_token,
        "organization_id": org.organization_id,
    }
    lead = snapshot("anna@example.com")
    run(org, lambda c: c.push([lead], {}), cache, credentials=credentials)
    org.expire_sessions()
    run(org, lambda c: c.push([lead], {}), cache, credentials=credentials)

    grants = [call.body for call in org.log.calls if call.path == "/services/oauth2/token"]
    assert len(grants) == 2
    assert f"refresh_token={org.refresh_token}" in grants[0]
    assert "grant_type=refresh_token" in grants[1]
    assert f"refresh_token={org.refresh_token}" not in grants[1]  # the rotated one


def test_wrong_credentials_are_a_permanent_error(org: SalesforceStandIn) -> None:
    credentials = {"client_id": org.client_id, "client_secret": "wrong"}

    with pytest.raises(CrmError) as refused:
        run(org, lambda c: c.push([snapshot("a@example.com")], {}), credentials=credentials)

    assert refused.value.permanent
    assert "invalid_client" in str(refused.value)


def test_the_daily_allocation_used_up_waits_an_hour_and_keeps_the_usage_reading(
    org: SalesforceStandIn,
) -> None:
    cache = MemoryTokenCache()
    org.api_max = 3
    lead = snapshot("a@example.com")
    run(org, lambda c: c.push([lead], {}), cache)  # query + create: 2 of 3
    assert cache.get()["api_usage"] == "2/3"

    with pytest.raises(CrmRateLimited) as limited:
        run(org, lambda c: c.push([lead, snapshot("b@example.com")], {}), cache)

    assert limited.value.retry_after == 3600
    assert "rolling 24 h" in str(limited.value)
    assert "no Retry-After" in str(limited.value)

    with pytest.raises(CrmRateLimited) as configured:
        run(org, lambda c: c.push([lead], {}), cache, options={"limit_retry_after": 600})
    assert configured.value.retry_after == 600


def test_the_concurrent_request_cap_waits_a_minute(org: SalesforceStandIn) -> None:
    org.fail_next(403, message="ConcurrentPerOrgLongTxn Limit exceeded.")

    with pytest.raises(CrmRateLimited) as limited:
        run(org, lambda c: c.push([snapshot("a@example.com")], {}))

    assert limited.value.retry_after == 60


def test_server_trouble_is_retryable_and_a_bad_field_map_is_not(org: SalesforceStandIn) -> None:
    org.fail_next(503)
    with pytest.raises(CrmError) as unavailable:
        run(org, lambda c: c.push([snapshot("a@example.com")], {}))
    assert not unavailable.value.permanent
    assert unavailable.value.status == 503

    with pytest.raises(CrmError) as bad_field:
        run(
            org,
            lambda c: c.push([snapshot("a@example.com")], {}),
            field_map={"letter": "Grade__c"},
        )
    assert bad_field.value.permanent
    assert "INVALID_FIELD" in str(bad_field.value)


def test_bad_options_are_refused_naming_the_option(org: SalesforceStandIn) -> None:
    for options, named in (
        ({"object": "Account"}, "options.object"),
        ({"api_version": "latest"}, "options.api_version"),
        ({"status_map": {"Working": "lead.called"}}, "options.status_map"),
        ({"limit_retry_after": "an hour"}, "options.limit_retry_after"),
    ):
        with pytest.raises(ValueError, match=named):
            run(org, lambda c: c.push([], {}), options=options)


# -- tasks, erase, merge ----------------------------------------------------------------------


def test_the_handover_task_goes_to_the_mapped_owner_with_date_and_reminder(
    org: SalesforceStandIn,
) -> None:
    lead_id = org.add("Lead", LastName="Rossi", Company="MetalPro", Email="anna@metalpro.it")
    due = datetime(2026, 11, 27, 23, 30, tzinfo=UTC) + timedelta(hours=1)  # next day in UTC
    task = HandoverTask("lead-1", "maria", "Call Anna Rossi within 24 h", "Score A 92", due)

    task_id = run(
        org,
        lambda c: c.create_task(task, RecordRef("Lead", lead_id)),
        owner_map={"maria": REP_USER},
    )

    [stored] = org.tasks()
    assert stored["Id"] == task_id
    assert {k: stored[k] for k in ("Subject", "OwnerId", "WhoId", "Status", "Priority")} == {
        "Subject": "Call Anna Rossi within 24 h",
        "OwnerId": REP_USER,
        "WhoId": lead_id,
        "Status": "Not Started",
        "Priority": "High",
    }
    assert stored["ActivityDate"] == "2026-11-28"
    assert stored["ReminderDateTime"] == "2026-11-28T00:30:00.000+0000"
    assert stored["Description"] == "Score A 92"


def test_erase_deletes_the_record_and_a_record_already_gone_is_fine(
    org: SalesforceStandIn,
) -> None:
    lead_id = org.add("Lead", LastName="Rossi", Company="MetalPro", Email="anna@metalpro.it")

    async def erase_twice(connector: SalesforceConnector) -> None:
        await connector.erase(RecordRef("Lead", lead_id))
        await connector.erase(RecordRef("Lead", lead_id))  # ENTITY_IS_DELETED
        await connector.erase(RecordRef("Lead", "00Q5g0000099999AAA"))  # NOT_FOUND

    run(org, erase_twice)

    assert org.person("anna@metalpro.it") is None
    assert [call.line for call in org.log.calls[1:]] == [
        f"DELETE {API}/sobjects/Lead/{lead_id}"
    ] * 2 + [f"DELETE {API}/sobjects/Lead/00Q5g0000099999AAA"]


def test_merge_clears_our_fields_on_the_merged_record_and_keeps_the_survivor(
    org: SalesforceStandIn,
) -> None:
    survivor, merged = snapshot("anna@metalpro.it", letter="A"), snapshot("anna@gmail.com")
    records = run(org, lambda c: c.push([survivor, merged], {}))

    result = run(org, lambda c: c.merge(records[survivor.lead_id], records[merged.lead_id]))

    assert result == records[survivor.lead_id]
    gone = org.person("anna@gmail.com")
    kept = org.person("anna@metalpro.it")
    assert gone is not None and kept is not None
    assert gone["Leadscore_Letter__c"] is None and gone["Leadscore_Lead_Id__c"] is None
    assert gone["LastName"] == "[not provided]"  # the record itself stays, with its data
    assert kept["Leadscore_Letter__c"] == "A"


# -- outcomes in ------------------------------------------------------------------------------


def test_an_outbound_message_from_our_org_is_accepted_and_others_are_rejected(
    org: SalesforceStandIn,
) -> None:
    run(org, lambda c: c.push([snapshot("anna@metalpro.it")], {}))
    _method, _headers, body = org.outcome_notification("anna@metalpro.it", "deal.won", NOTIFY_URL)
    now = datetime.now(UTC)
    connector = SalesforceConnector(org.connector_config(), httpx.AsyncClient(), MemoryTokenCache())
    connector.verify_notification(inbound(body), now)

    other_org = body.replace(org.organization_id.encode(), b"00D000000000001EAA")
    with pytest.raises(NotificationRejected, match="OrganizationId"):
        connector.verify_notification(inbound(other_org), now)
    for bad in (b"not xml", b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "b">]><x>&a;</x>'):
        with pytest.raises(NotificationRejected):
            connector.verify_notification(inbound(bad), now)

    short_org = org.connector_config(
        credentials={
            "client_id": "x",
            "client_secret": "y",
            "organization_id": org.organization_id[:15],
            "notification_token": "s3cret-path-token",
        }
    )
    with_token = SalesforceConnector(short_org, httpx.AsyncClient(), MemoryTokenCache())
    with_token.verify_notification(inbound(body, NOTIFY_URL + "?token=s3cret-path-token"), now)
    for url in (NOTIFY_URL, NOTIFY_URL + "?token=guess"):
        with pytest.raises(NotificationRejected, match="token"):
            with_token.verify_notification(inbound(body, url), now)

    ack = connector.acknowledgement(inbound(body))
    assert (ack.status, ack.media_type) == (200, "text/xml")
    found = ET.fromstring(ack.body).find(".//{http://soap.sforce.com/2005/09/outbound}Ack")
    assert found is not None and found.text == "true"


def test_deal_notifications_become_created_won_and_lost_on_the_converted_lead(
    org: SalesforceStandIn,
) -> None:
    records = run(org, lambda c: c.push([snapshot("anna@metalpro.it"), snapshot("bo@x.com")], {}))
    anna, bo = records["lead-anna@metalpro.it"], records["lead-bo@x.com"]

    created = org.outcome_notification("anna@metalpro.it", "opportunity.created", NOTIFY_URL)
    won = org.outcome_notification("anna@metalpro.it", "deal.won", NOTIFY_URL)
    lost = org.outcome_notification("bo@x.com", "deal.lost", NOTIFY_URL)

    async def parse(
        connector: SalesforceConnector,
    ) -> list[list[tuple[str, str, RecordRef | None]]]:
        results: list[list[tuple[str, str, RecordRef | None]]] = []
        for _m, _h, body in (created, won, lost, won):
            outcomes = await connector.parse_notification(inbound(body))
            results.append([(o.type, o.dedup_key, o.record) for o in outcomes])
        return results

    first, second, third, repeated = run(org, parse)

    opp_anna = org.records["Lead"][anna.record_id]["ConvertedOpportunityId"]
    opp_bo = org.records["Lead"][bo.record_id]["ConvertedOpportunityId"]
    assert first == [("opportunity.created", f"opportunity:{opp_anna}:created", anna)]
    assert second == [*first, ("deal.won", f"opportunity:{opp_anna}:won", anna)]
    assert third == [
        ("opportunity.created", f"opportunity:{opp_bo}:created", bo),
        ("deal.lost", f"opportunity:{opp_bo}:lost", bo),
    ]
    assert repeated == second  # Salesforce's retry of the same message: same keys


def test_a_message_of_many_notifications_costs_one_query_per_kind_not_per_notification(
    org: SalesforceStandIn,
) -> None:
    emails = [f"buyer{n}@example.com" for n in range(3)]
    records = run(org, lambda c: c.push([snapshot(e) for e in emails], {}))
    org.opportunity_message_fields = ["Id", "StageName"]  # IsWon left out: stage lookup
    notifications = [
        outbound.parse(org.outcome_notification(e, "deal.won", NOTIFY_URL)[2]).notifications[0]
        for e in emails
    ]
    orphan = org.add(
        "Opportunity", Name="No contact", StageName="Closed Won", IsClosed=True, IsWon=True
    )
    notifications.append(
        outbound.Notification(
            "04l5g0000000999AAA", "Opportunity", {"Id": orphan, "StageName": "Closed Won"}
        )
    )
    body = outbound.build(
        org.organization_id, "04k5g000000ACTNAA2", org.instance_url, notifications
    )
    org.log.clear()

    outcomes = run(org, lambda c: c.parse_notification(inbound(body)))

    won = [o for o in outcomes if o.type == "deal.won"]
    assert sorted(o.record.record_id for o in won if o.record) == sorted(
        records[f"lead-{e}"].record_id for e in emails
    )  # the opportunity without a person gives nothing (yet)
    assert [line for line in org.log.lines() if "oauth2" not in line] == [f"GET {API}/query"] * 3


def test_lead_status_notifications_become_contacted_and_accepted(org: SalesforceStandIn) -> None:
    records = run(org, lambda c: c.push([snapshot("anna@metalpro.it")], {}))
    anna = records["lead-anna@metalpro.it"]
    contacted = org.outcome_notification("anna@metalpro.it", "lead.contacted", NOTIFY_URL)[2]
    accepted = org.outcome_notification("anna@metalpro.it", "lead.accepted", NOTIFY_URL)[2]

    async def parse(connector: SalesforceConnector) -> list[Any]:
        return [
            [(o.type, o.record, o.email) for o in await connector.parse_notification(inbound(b))]
            for b in (contacted, accepted)
        ]

    assert run(org, parse) == [
        [("lead.contacted", anna, "anna@metalpro.it")],
        [("lead.accepted", anna, "anna@metalpro.it")],
    ]
    by_hand = org.outcome_notification("new@example.com", "lead.contacted", NOTIFY_URL)[2]
    [entered] = run(org, lambda c: c.parse_notification(inbound(by_hand)))
    assert (entered.type, entered.email) == ("lead.contacted", "new@example.com")
    own_statuses = {"status_map": {"Working - Contacted": "lead.accepted"}}
    assert run(org, parse, options=own_statuses) == [
        [("lead.accepted", anna, "anna@metalpro.it")],
        [],
    ]


def test_without_iswon_in_the_message_the_stage_is_looked_up(org: SalesforceStandIn) -> None:
    run(org, lambda c: c.push([snapshot("anna@metalpro.it")], {}))
    org.opportunity_message_fields = ["Id", "StageName"]
    body = org.outcome_notification("anna@metalpro.it", "deal.won", NOTIFY_URL)[2]
    org.log.clear()

    outcomes = run(org, lambda c: c.parse_notification(inbound(body)))

    assert [o.type for o in outcomes] == ["opportunity.created", "deal.won"]
    assert org.log.calls[1].query["q"] == (
        "SELECT ApiName, IsClosed, IsWon FROM OpportunityStage WHERE ApiName IN ('Closed Won')"
    )


def test_in_contact_mode_the_deal_is_found_through_its_contact_role(
    org: SalesforceStandIn,
) -> None:
    options = {"object": "Contact"}
    records = run(org, lambda c: c.push([snapshot("anna@metalpro.it")], {}), options=options)
    contact = records["lead-anna@metalpro.it"]
    assert contact.object_type == "Contact"
    body = org.outcome_notification("anna@metalpro.it", "deal.won", NOTIFY_URL)[2]

    outcomes = run(org, lambda c: c.parse_notification(inbound(body)), options=options)

    assert [(o.type, o.record, o.email) for o in outcomes] == [
        ("opportunity.created", contact, "anna@metalpro.it"),
        ("deal.won", contact, "anna@metalpro.it"),
    ]


def test_pull_reads_every_page_and_returns_a_cursor_that_moves_on(org: SalesforceStandIn) -> None:
    since = datetime.now(UTC) - timedelta(minutes=1)
    emails = [f"p{n}@example.com" for n in range(5)]
    records = run(org, lambda c: c.push([snapshot(e) for e in emails], {}))
    for email in emails[:3]:
        org.outcome_notification(email, "deal.won", NOTIFY_URL)
    org.outcome_notification(emails[3], "lead.contacted", NOTIFY_URL)
    org.page_size = 2
    org.log.clear()
    options = {"pull_overlap_seconds": 0}

    outcomes, cursor = run(org, lambda c: c.pull_changes(since), options=options)

    ids = {e: records[f"lead-{e}"] for e in emails}
    assert all(o.record is not None and o.record.object_type == "Lead" for o in outcomes)
    assert sorted((o.type, o.record.record_id) for o in outcomes if o.record) == sorted(
        [("opportunity.created", ids[e].record_id) for e in emails[:3]]
        + [("deal.won", ids[e].record_id) for e in emails[:3]]
        + [("lead.accepted", ids[e].record_id) for e in emails[:3]]  # "Closed - Converted"
        + [("lead.contacted", ids[emails[3]].record_id)]
    )
    assert any("/query/" in line for line in org.log.lines())  # nextRecordsUrl followed
    latest = max(
        record["SystemModstamp"]
        for obj in ("Opportunity", "Lead")
        for record in org.records[obj].values()
    )
    assert cursor == latest

    # From the cursor on: SOQL dateTime literals have whole seconds, so the last second is read
    # again (nothing new: the same dedup keys), and a later change comes in.
    org.outcome_notification(emails[4], "deal.lost", NOTIFY_URL)
    again, moved = run(org, lambda c: c.pull_changes(cursor), options=options)
    new = [o for o in again if o.dedup_key not in {seen.dedup_key for seen in outcomes}]
    assert sorted(o.type for o in new) == ["deal.lost", "lead.accepted", "opportunity.created"]
    assert {o.record for o in new} == {ids[emails[4]]}
    assert moved > cursor
    # Pull and notification of one change give one event: the same dedup key.
    body = org.outcome_notification(emails[0], "deal.won", NOTIFY_URL)[2]
    notified = run(org, lambda c: c.parse_notification(inbound(body)))
    assert {o.dedup_key for o in notified} <= {o.dedup_key for o in outcomes}


# -- setup ------------------------------------------------------------------------------------


def test_setup_creates_the_fields_reports_existing_ones_and_lists_the_clicks(
    org: SalesforceStandIn,
) -> None:
    org.reset(custom_fields=False)
    with pytest.raises(CrmError, match="INVALID_FIELD"):
        run(org, lambda c: c.push([snapshot("anna@metalpro.it")], {}))

    first = run(org, lambda c: c.setup())
    second = run(org, lambda c: c.setup())

    assert len(first.created) == 16 and first.existing == []
    assert "Lead.Leadscore_Letter__c" in first.created
    assert "Contact.Leadscore_Next_Action_Due__c" in first.created
    assert second.created == [] and sorted(second.existing) == sorted(first.created)
    steps = " ".join(first.manual_steps)
    assert "Permission Set" in steps and "Outbound Message" in steps
    assert "/v1/crm/salesforce/notifications" in steps
    letter = next(
        call.body
        for call in org.log.calls
        if call.path.endswith("/CustomField")
        and call.body["FullName"] == "Lead.Leadscore_Letter__c"
    )
    assert letter["Metadata"]["type"] == "Text" and letter["Metadata"]["length"] == 5

    run(org, lambda c: c.push([snapshot("anna@metalpro.it")], {}))
    record = org.person("anna@metalpro.it")
    assert record is not None and record["Leadscore_Letter__c"] == "C"


# -- the whole path ---------------------------------------------------------------------------


def test_exact_calls_for_one_lead_going_new_to_sql_to_won(org: SalesforceStandIn) -> None:
    email = "anna.rossi@metalpro.it"
    new = snapshot(
        email, attributes={"first_name": "Anna", "last_name": "Rossi", "company": "MetalPro"}
    )
    due = datetime(2026, 11, 27, 9, 0, tzinfo=UTC)
    sql = snapshot(
        email,
        letter="A",
        score=92,
        tier="hot",
        stage="sql",
        owner="maria",
        next_action="call",
        next_action_due=due,
    )
    task = HandoverTask(new.lead_id, "maria", "Call Anna Rossi within 24 h", "A 92", due)
    cache = MemoryTokenCache()
    overrides: dict[str, Any] = {"owner_map": {"maria": REP_USER}}

    async def journey(connector: SalesforceConnector) -> dict[str, Any]:
        first = await connector.push([new], {})
        second = await connector.push([sql], first)
        task_id = await connector.create_task(task, second[sql.lead_id])
        return {"record": second[sql.lead_id], "task": task_id}

    result = run(org, journey, cache, **overrides)
    body = org.outcome_notification(email, "deal.won", NOTIFY_URL)[2]
    outcomes = run(org, lambda c: c.parse_notification(inbound(body)), cache, **overrides)

    record: RecordRef = result["record"]
    assert org.log.lines() == [
        "POST /services/oauth2/token",
        f"GET {API}/query",
        f"POST {API}/composite/sobjects",
        f"PATCH {API}/composite/sobjects",
        f"POST {API}/sobjects/Task",
        f"GET {API}/query",
    ]
    calls = org.log.calls
    assert calls[1].query["q"] == (
        "SELECT Id, Email, IsConverted, ConvertedContactId FROM Lead "
        f"WHERE Email IN ('{email}') ORDER BY IsConverted ASC, CreatedDate ASC"
    )
    assert calls[2].body == {
        "allOrNone": False,
        "records": [
            {
                "attributes": {"type": "Lead"},
                "LastName": "Rossi",
                "Email": email,
                "FirstName": "Anna",
                "Company": "MetalPro",
                "Leadscore_Letter__c": "C",
                "Leadscore_Score__c": 20,
                "Leadscore_Tier__c": "cold",
                "Leadscore_Stage__c": "new",
                "Leadscore_Owner__c": None,
                "Leadscore_Next_Action__c": None,
                "Leadscore_Next_Action_Due__c": None,
                "Leadscore_Lead_Id__c": new.lead_id,
            }
        ],
    }
    assert calls[3].body["records"] == [
        {
            "attributes": {"type": "Lead"},
            "id": record.record_id,
            "Leadscore_Letter__c": "A",
            "Leadscore_Score__c": 92,
            "Leadscore_Tier__c": "hot",
            "Leadscore_Stage__c": "sql",
            "Leadscore_Owner__c": "maria",
            "Leadscore_Next_Action__c": "call",
            "Leadscore_Next_Action_Due__c": "2026-11-27T09:00:00.000Z",
            "Leadscore_Lead_Id__c": new.lead_id,
            "OwnerId": REP_USER,
        }
    ]
    assert calls[4].body == {
        "Subject": "Call Anna Rossi within 24 h",
        "Description": "A 92",
        "ActivityDate": "2026-11-27",
        "IsReminderSet": True,
        "ReminderDateTime": "2026-11-27T09:00:00.000Z",
        "WhoId": record.record_id,
        "Status": "Not Started",
        "Priority": "High",
        "OwnerId": REP_USER,
    }
    opportunity = org.records["Lead"][record.record_id]["ConvertedOpportunityId"]
    assert calls[5].query["q"] == (
        "SELECT Id, Email, ConvertedOpportunityId FROM Lead "
        f"WHERE ConvertedOpportunityId IN ('{opportunity}') ORDER BY CreatedDate ASC"
    )
    won = outcomes[-1]
    assert (won.type, won.record, won.email, won.dedup_key) == (
        "deal.won",
        record,
        email,
        f"opportunity:{opportunity}:won",
    )
    assert won.properties["stage"] == "Closed Won" and won.properties["amount"] == 12000.0
    assert org.tasks()[0]["Id"] == result["task"]
