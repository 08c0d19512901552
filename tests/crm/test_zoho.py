"""The Zoho CRM connector against the Zoho stand-in on loopback: the calls it makes, and what
ends up in the CRM's records."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
import pytest
from tests.crm.helpers import connector_runner, standin_fixtures
from tests.crm.standins.zoho import CHANNEL_ID, NOTIFICATION_TOKEN, USERS, ZohoStandIn, running

from leadscore_api.crm.base import (
    CrmError,
    CrmRateLimited,
    HandoverTask,
    InboundRequest,
    LeadSnapshot,
    MemoryTokenCache,
    NotificationRejected,
    OutcomeType,
    RecordRef,
)
from leadscore_api.crm.zoho import ZohoConnector

T = TypeVar("T")
NOW = datetime(2026, 11, 26, 9, 30, tzinfo=UTC)
NOTIFY_URL = "https://leadscore.example/v1/crm/zoho/notifications"


served, zoho = standin_fixtures(running, "zoho")


run = connector_runner(ZohoConnector)


def lead(
    lead_id: str = "L1",
    email: str | None = "anna.rossi@metalpro.it",
    *,
    letter: str = "C",
    score: int = 20,
    stage: str = "new",
    owner: str | None = None,
    **attributes: Any,
) -> LeadSnapshot:
    return LeadSnapshot(
        lead_id=lead_id,
        email=email,
        letter=letter,
        score=score,
        tier="warm" if score < 80 else "hot",
        stage=stage,
        owner=owner,
        next_action="call" if owner else None,
        next_action_due=NOW + timedelta(hours=24) if owner else None,
        updated_at=NOW,
        attributes=attributes,
    )


def api_lines(stand_in: ZohoStandIn) -> list[str]:
    return stand_in.log.lines()


def notification(body: dict[str, Any]) -> InboundRequest:
    return InboundRequest(
        method="POST",
        url=NOTIFY_URL,
        headers={"content-type": "application/json"},
        body=json.dumps(body).encode(),
    )


def inbound(made: tuple[str, dict[str, str], bytes]) -> InboundRequest:
    method, headers, body = made
    return InboundRequest(method=method, url=NOTIFY_URL, headers=headers, body=body)


# ------------------------------------------------------------------------------- scores out


def test_upsert_updates_the_existing_record_and_creates_a_missing_one(zoho: ZohoStandIn) -> None:
    existing = zoho.add_record("Leads", Email="anna.rossi@metalpro.it", Last_Name="Rossi")
    leads = [
        lead("L1", "anna.rossi@metalpro.it", letter="B", score=61),
        lead("L2", "marco@ferro.it", company="Ferro Srl", first_name="Marco"),
        lead("L3", "nobody-name@ferro.it"),
    ]

    refs = run(zoho, lambda c: c.push(leads, {}))

    assert api_lines(zoho) == [
        "POST /oauth/v2/token",
        "POST /crm/v8/Leads/upsert",
        "POST /crm/v8/Leads",
    ]
    upsert = zoho.log.calls[1].body
    assert upsert["duplicate_check_fields"] == ["Email"]
    assert "Last_Name" not in upsert["data"][0]  # an existing record keeps its name
    assert refs["L1"] == RecordRef("Leads", existing)
    anna = zoho.person("anna.rossi@metalpro.it")
    assert anna is not None
    assert anna["Last_Name"] == "Rossi"
    assert (anna["Leadscore_Letter"], anna["Leadscore_Score"], anna["Leadscore_Lead_Id"]) == (
        "B",
        61,
        "L1",
    )
    marco = zoho.person("marco@ferro.it")
    assert marco is not None
    assert refs["L2"] == RecordRef("Leads", marco["id"])
    assert (marco["First_Name"], marco["Company"], marco["Leadscore_Letter"]) == (
        "Marco",
        "Ferro Srl",
        "C",
    )
    # Zoho requires Last_Name to create a lead: a placeholder, documented in docs/crm/zoho.md.
    assert marco["Last_Name"] == "(unknown)"
    assert zoho.person("nobody-name@ferro.it") is not None


def test_stored_record_id_is_updated_by_id_without_a_search(zoho: ZohoStandIn) -> None:
    record_id = zoho.add_record("Leads", Email="old@metalpro.it", Last_Name="Rossi")
    known = {"L1": RecordRef("Leads", record_id)}
    sql = lead("L1", "new-address@metalpro.it", letter="A", score=92, owner="anna")

    refs = run(zoho, lambda c: c.push([sql], known))

    assert api_lines(zoho) == ["POST /oauth/v2/token", "PUT /crm/v8/Leads"]
    assert refs == known
    record = zoho.records["Leads"][record_id]
    assert record["Owner"] == {"id": USERS["anna"]}
    assert record["Leadscore_Next_Action_Due"] == "2026-11-27T09:30:00+00:00"
    assert (record["Leadscore_Letter"], record["Leadscore_Owner"]) == ("A", "anna")


def test_a_record_deleted_in_zoho_is_not_created_again(zoho: ZohoStandIn) -> None:
    known = {
        "L1": RecordRef("Leads", "4876876000000000042"),
        "L2": RecordRef("Leads", "4876876000000000043"),
    }
    # Someone made a new record for L2's person meanwhile: that one is updated.
    again = zoho.add_record("Leads", Email="marco@ferro.it", Last_Name="Ferro")

    refs = run(zoho, lambda c: c.push([lead("L1"), lead("L2", "marco@ferro.it")], known))

    assert api_lines(zoho)[1:] == [
        "PUT /crm/v8/Leads",
        "GET /crm/v8/Leads/search",
        "GET /crm/v8/Leads/search",
        "PUT /crm/v8/Leads",
    ]
    assert refs == {"L2": RecordRef("Leads", again)}
    assert zoho.person("anna.rossi@metalpro.it") is None
    marco = zoho.person("marco@ferro.it")
    assert marco is not None and marco["Leadscore_Lead_Id"] == "L2"


def test_without_create_missing_only_found_records_are_updated(zoho: ZohoStandIn) -> None:
    found = zoho.add_record("Leads", Email="anna.rossi@metalpro.it", Last_Name="Rossi")
    leads = [lead("L1", "anna.rossi@metalpro.it"), lead("L2", "marco@ferro.it")]

    refs = run(zoho, lambda c: c.push(leads, {}), create_missing=False)

    assert api_lines(zoho)[1:] == [
        "GET /crm/v8/Leads/search",
        "GET /crm/v8/Leads/search",
        "PUT /crm/v8/Leads",
    ]
    assert [c.query["email"] for c in zoho.log.calls[1:3]] == [
        "anna.rossi@metalpro.it",
        "marco@ferro.it",
    ]
    assert refs == {"L1": RecordRef("Leads", found)}
    assert zoho.person("marco@ferro.it") is None


def test_a_hundred_leads_go_in_one_upsert_and_more_are_refused(zoho: ZohoStandIn) -> None:
    for i in range(100):
        zoho.add_record("Leads", Email=f"p{i}@x.it", Last_Name=f"P{i}")
    leads = [lead(f"L{i}", f"p{i}@x.it") for i in range(100)]

    refs = run(zoho, lambda c: c.push(leads, {}))

    assert ZohoConnector.max_batch == 100
    assert api_lines(zoho) == ["POST /oauth/v2/token", "POST /crm/v8/Leads/upsert"]
    assert len(zoho.log.calls[1].body["data"]) == 100
    assert len(refs) == 100
    with pytest.raises(CrmError) as too_many:
        run(zoho, lambda c: c.push([*leads, lead("L100", "p100@x.it")], {}))
    assert too_many.value.permanent


def test_contacts_module_writes_contacts(zoho: ZohoStandIn) -> None:
    refs = run(zoho, lambda c: c.push([lead()], {}), options={"module": "Contacts"})

    assert api_lines(zoho)[1:] == ["POST /crm/v8/Contacts/upsert", "POST /crm/v8/Contacts"]
    contact = zoho.find("Contacts", "anna.rossi@metalpro.it")
    assert contact is not None
    assert refs["L1"] == RecordRef("Contacts", contact["id"])
    assert zoho.find("Leads", "anna.rossi@metalpro.it") is None


# -------------------------------------------------------------------- tokens, limits, errors


def test_access_token_is_cached_and_refreshed_on_expiry_and_on_invalid_token(
    zoho: ZohoStandIn,
) -> None:
    tokens = MemoryTokenCache()
    zoho.add_record("Leads", Email="anna.rossi@metalpro.it", Last_Name="Rossi")

    async def two_pushes(c: ZohoConnector) -> None:
        await c.push([lead()], {})
        await c.push([lead(score=30)], {})

    run(zoho, two_pushes, tokens)
    assert api_lines(zoho).count("POST /oauth/v2/token") == 1
    cached = tokens.get()
    assert cached["api_domain"] == zoho.api_domain
    assert 3500 < cached["expires_at"] - time.time() <= 3600
    refresh = zoho.log.calls[0].body
    assert "grant_type=refresh_token" in refresh and "refresh_token=1000." in refresh

    # Another replica (same cache) reuses the token; an expired one is refreshed first.
    zoho.log.clear()
    tokens.put({"expires_at": time.time() - 1})
    run(zoho, lambda c: c.push([lead()], {}), tokens)
    assert api_lines(zoho) == ["POST /oauth/v2/token", "POST /crm/v8/Leads/upsert"]

    # Zoho says the token is invalid (revoked, expired early): refresh once and repeat.
    zoho.log.clear()
    zoho.expire_tokens()
    run(zoho, lambda c: c.push([lead()], {}), tokens)
    assert api_lines(zoho) == [
        "POST /crm/v8/Leads/upsert",
        "POST /oauth/v2/token",
        "POST /crm/v8/Leads/upsert",
    ]


def test_refreshes_stop_before_zohos_limit_of_ten_per_ten_minutes(zoho: ZohoStandIn) -> None:
    # Ten replicas without a shared cache each refresh: Zoho blocks the eleventh.
    for _ in range(10):
        run(zoho, lambda c: c.erase(RecordRef("Leads", "1")))
    with pytest.raises(CrmRateLimited) as blocked:
        run(zoho, lambda c: c.erase(RecordRef("Leads", "1")))
    assert blocked.value.retry_after == 600
    assert api_lines(zoho) == ["POST /oauth/v2/token", "DELETE /crm/v8/Leads"] * 10 + [
        "POST /oauth/v2/token"
    ]

    # With the shared cache the connector counts its refreshes and does not even ask.
    zoho.log.clear()
    tokens = MemoryTokenCache()
    tokens.put({"refreshes": [time.time() - 500] + [time.time() - 60] * 9})
    with pytest.raises(CrmRateLimited) as waiting:
        run(zoho, lambda c: c.erase(RecordRef("Leads", "1")), tokens)
    assert waiting.value.retry_after is not None
    assert 95 <= waiting.value.retry_after <= 100
    assert api_lines(zoho) == []


@pytest.mark.parametrize(
    ("details", "retry_after"),
    [
        ({}, 5.0),  # TOO_MANY_REQUESTS: the org's concurrency limit, frees in seconds
        ({"code": "LIMIT_EXCEEDED", "message": "API credits exhausted"}, 3600.0),
        ({"code": "LIMIT_EXCEEDED", "retry_after": 1200}, 1200.0),
    ],
)
def test_rate_limits_become_crm_rate_limited(
    zoho: ZohoStandIn, details: dict[str, Any], retry_after: float
) -> None:
    zoho.fail_next(429, **details)
    with pytest.raises(CrmRateLimited) as limited:
        run(zoho, lambda c: c.push([lead()], {}))
    assert limited.value.retry_after == retry_after
    assert limited.value.status == 429
    assert not limited.value.permanent


def test_server_errors_are_retried_and_refused_data_is_permanent(zoho: ZohoStandIn) -> None:
    zoho.fail_next(500)
    with pytest.raises(CrmError) as server:
        run(zoho, lambda c: c.push([lead()], {}))
    assert not server.value.permanent and server.value.status == 500

    # A field the CRM does not have (setup not run, typo in field_map): INVALID_DATA.
    with pytest.raises(CrmError) as refused:
        run(zoho, lambda c: c.push([lead()], {}), field_map={"letter": "Lead_Score_Letter"})
    assert refused.value.permanent
    assert "INVALID_DATA" in str(refused.value) and "Lead_Score_Letter" in str(refused.value)

    bad = {**zoho.connector_config().credentials, "refresh_token": "1000.revoked"}
    with pytest.raises(CrmError) as revoked:
        run(zoho, lambda c: c.push([lead()], {}), credentials=bad)
    assert revoked.value.permanent and "invalid_code" in str(revoked.value)


# -------------------------------------------------------------------- tasks, erase, merge


def test_handover_task_for_the_mapped_owner_on_the_lead(zoho: ZohoStandIn) -> None:
    record_id = zoho.add_record("Leads", Email="anna.rossi@metalpro.it", Last_Name="Rossi")
    task = HandoverTask(
        lead_id="L1",
        owner="anna",
        subject="Call Anna Rossi within 24 h",
        body="Letter A, score 92.",
        due_at=datetime(2026, 11, 27, 23, 30, tzinfo=UTC),
    )

    task_id = run(zoho, lambda c: c.create_task(task, RecordRef("Leads", record_id)))

    assert api_lines(zoho)[1:] == ["POST /crm/v8/Tasks"]
    [created] = zoho.tasks()
    assert created["id"] == task_id
    assert created["What_Id"] == {"id": record_id} and created["$se_module"] == "Leads"
    assert created["Owner"] == {"id": USERS["anna"]}
    assert (created["Due_Date"], created["Status"], created["Priority"]) == (
        "2026-11-27",
        "Not Started",
        "High",
    )
    assert "2026-11-27T23:30:00+00:00" in created["Description"]


def test_handover_task_on_a_contact_with_an_unmapped_owner(zoho: ZohoStandIn) -> None:
    contact = zoho.add_record("Contacts", Email="anna.rossi@metalpro.it", Last_Name="Rossi")
    task = HandoverTask("L1", "someone-else", "Call", "", NOW)

    run(zoho, lambda c: c.create_task(task, RecordRef("Contacts", contact)))

    [created] = zoho.tasks()
    assert created["Who_Id"] == {"id": contact}
    assert "What_Id" not in created and "Owner" not in created


def test_erase_deletes_the_record_and_a_gone_one_is_no_error(zoho: ZohoStandIn) -> None:
    record_id = zoho.add_record("Leads", Email="anna.rossi@metalpro.it", Last_Name="Rossi")
    ref = RecordRef("Leads", record_id)

    async def twice(c: ZohoConnector) -> None:
        await c.erase(ref)
        await c.erase(ref)

    run(zoho, twice)

    assert api_lines(zoho)[1:] == ["DELETE /crm/v8/Leads", "DELETE /crm/v8/Leads"]
    assert zoho.log.calls[1].query == {"ids": record_id}
    assert zoho.person("anna.rossi@metalpro.it") is None


def test_merge_clears_our_fields_on_the_merged_record(zoho: ZohoStandIn) -> None:
    survivor = zoho.add_record("Leads", Email="a@x.it", Last_Name="A", Leadscore_Letter="A")
    merged = zoho.add_record(
        "Leads", Email="b@x.it", Last_Name="B", Leadscore_Letter="C", Leadscore_Score=20
    )

    result = run(zoho, lambda c: c.merge(RecordRef("Leads", survivor), RecordRef("Leads", merged)))

    assert result == RecordRef("Leads", survivor)
    assert api_lines(zoho)[1:] == ["PUT /crm/v8/Leads"]
    assert "Leadscore_Letter" not in zoho.records["Leads"][merged]
    assert zoho.records["Leads"][merged]["Last_Name"] == "B"
    assert zoho.records["Leads"][survivor]["Leadscore_Letter"] == "A"


# ----------------------------------------------------------------------------- outcomes in


def test_notification_token_and_channel_are_verified(zoho: ZohoStandIn) -> None:
    connector = ZohoConnector(zoho.connector_config(), httpx.AsyncClient(), MemoryTokenCache())
    good = {"channel_id": int(CHANNEL_ID), "token": NOTIFICATION_TOKEN, "module": "Deals"}

    connector.verify_notification(notification(good), NOW)
    for bad in (
        {**good, "token": NOTIFICATION_TOKEN + "x"},
        {**good, "channel_id": 1000000068002},
        {"channel_id": int(CHANNEL_ID), "module": "Deals"},
    ):
        with pytest.raises(NotificationRejected):
            connector.verify_notification(notification(bad), NOW)
    with pytest.raises(NotificationRejected):
        connector.verify_notification(
            InboundRequest("POST", NOTIFY_URL, {}, b"token=" + NOTIFICATION_TOKEN.encode()), NOW
        )


def test_deal_and_lead_notifications_become_outcomes(zoho: ZohoStandIn) -> None:
    anna = zoho.add_record("Leads", Email="anna.rossi@metalpro.it", Last_Name="Rossi")
    zoho.add_record("Leads", Email="marco@ferro.it", Last_Name="Ferro")
    # A stage of the user's own named freely: won is the Deal Category, not the name.
    zoho.add_stage("Signed", "Closed Won", 100)
    tokens = MemoryTokenCache()

    async def parse(c: ZohoConnector, made: tuple[str, dict[str, str], bytes]) -> list[Any]:
        request = inbound(made)
        c.verify_notification(request, NOW)
        return await c.parse_notification(request)

    async def scenario(c: ZohoConnector) -> dict[str, list[Any]]:
        out: dict[str, list[Any]] = {}
        outcome: OutcomeType
        for outcome in ("lead.contacted", "lead.accepted", "opportunity.created", "deal.won"):
            made = zoho.outcome_notification("anna.rossi@metalpro.it", outcome, NOTIFY_URL)
            out[outcome] = await parse(c, made)
        made = zoho.outcome_notification("marco@ferro.it", "deal.lost", NOTIFY_URL)
        out["deal.lost"] = await parse(c, made)
        # A person we never wrote (a contact entered by hand in Zoho): still an outcome, by email.
        made = zoho.outcome_notification("stranger@else.it", "deal.won", NOTIFY_URL)
        out["stranger"] = await parse(c, made)
        deal = next(iter(zoho.records["Deals"].values()))
        deal["Stage"] = "Signed"
        out["signed"] = await parse(c, zoho.notification("Deals", "update", deal["id"], ["Stage"]))
        deal["Stage"] = "Needs Analysis"
        out["open"] = await parse(c, zoho.notification("Deals", "update", deal["id"], ["Stage"]))
        return out

    out = run(zoho, scenario, tokens)

    [contacted] = out["lead.contacted"]
    assert contacted.type == "lead.contacted"
    assert contacted.record == RecordRef("Leads", anna)
    assert contacted.email == "anna.rossi@metalpro.it"
    assert contacted.dedup_key == f"Leads:{anna}:lead.contacted"
    assert [o.type for o in out["lead.accepted"]] == ["lead.accepted"]
    [created] = out["opportunity.created"]
    contact = zoho.find("Contacts", "anna.rossi@metalpro.it")
    assert contact is not None  # the lead was converted into a contact with its email
    assert created.type == "opportunity.created"
    assert created.record == RecordRef("Contacts", contact["id"])
    assert created.email == "anna.rossi@metalpro.it"
    [won] = out["deal.won"]
    assert won.type == "deal.won"
    assert won.properties["deal_id"] == created.properties["deal_id"]
    assert won.properties["stage"] == "Closed Won"
    assert won.dedup_key == f"Deals:{won.properties['deal_id']}:deal.won"
    [lost] = out["deal.lost"]
    assert (lost.type, lost.email) == ("deal.lost", "marco@ferro.it")
    assert [(o.type, o.email) for o in out["stranger"]] == [("deal.won", "stranger@else.it")]
    assert [o.type for o in out["signed"]] == ["deal.won"]
    assert out["open"] == []
    # The stage metadata was read once and then taken from the cache.
    assert api_lines(zoho).count("GET /crm/v8/settings/fields") == 1
    assert tokens.get()["deal_stages"]["Signed"] == "Closed Won"


def test_pull_changes_pages_through_deals_and_leads_and_moves_the_cursor(zoho: ZohoStandIn) -> None:
    since = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    zoho.reset(page_size=2, page_token_after=4)
    anna = zoho.add_record("Contacts", Email="anna@x.it", Last_Name="A")
    old = (since - timedelta(days=3)).isoformat()
    for i in range(5):
        modified = (since + timedelta(minutes=i + 1)).isoformat()
        zoho.add_record(
            "Deals",
            Deal_Name=f"D{i}",
            Stage="Closed Won" if i == 4 else "Needs Analysis",
            Contact_Name={"id": anna, "name": "A"},
            Created_Time=old if i < 4 else modified,
            Modified_Time=modified,
        )
    zoho.add_record(
        "Leads",
        Email="marco@x.it",
        Last_Name="M",
        Lead_Status="Contacted",
        Modified_Time=(since + timedelta(minutes=10)).isoformat(),
    )
    zoho.add_record(
        "Leads", Email="old@x.it", Last_Name="O", Lead_Status="Contacted", Modified_Time=old
    )

    outcomes, cursor = run(zoho, lambda c: c.pull_changes(since))

    deal_calls = [c for c in zoho.log.calls if c.path == "/crm/v8/Deals"]
    assert [(c.query.get("page"), c.query.get("page_token")) for c in deal_calls] == [
        ("1", None),
        ("2", None),
        (None, deal_calls[2].query.get("page_token")),
    ]
    assert deal_calls[2].query["page_token"]
    assert deal_calls[0].query["sort_by"] == "Modified_Time"
    assert deal_calls[0].headers["if-modified-since"] == (since - timedelta(seconds=1)).isoformat()
    assert sorted((o.type, o.email) for o in outcomes) == [
        ("deal.won", "anna@x.it"),
        ("lead.contacted", "marco@x.it"),
        ("opportunity.created", "anna@x.it"),
    ]
    assert cursor == since + timedelta(minutes=10)

    # Nothing changed since the cursor: Zoho answers 304, no outcomes, the cursor stays.
    zoho.log.clear()
    again, cursor2 = run(zoho, lambda c: c.pull_changes(cursor + timedelta(seconds=2)))
    assert again == [] and cursor2 == cursor + timedelta(seconds=2)
    assert "GET /crm/v8/Deals" in api_lines(zoho)


def test_pull_renews_a_channel_close_to_its_expiry(zoho: ZohoStandIn) -> None:
    tokens = MemoryTokenCache()
    soon = (datetime.now(UTC) + timedelta(hours=2)).replace(microsecond=0).isoformat()
    tokens.put({"channel_expiry": soon})

    run(zoho, lambda c: c.pull_changes(datetime.now(UTC)), tokens)

    # The channel is unknown to Zoho (lapsed): the update is refused, it is enabled anew.
    assert api_lines(zoho)[1:3] == ["PATCH /crm/v8/actions/watch", "POST /crm/v8/actions/watch"]
    renewed = datetime.fromisoformat(tokens.get()["channel_expiry"])
    assert renewed > datetime.now(UTC) + timedelta(days=6)
    zoho.log.clear()

    tokens.put({"channel_expiry": soon})
    run(zoho, lambda c: c.pull_changes(datetime.now(UTC)), tokens)
    assert [line for line in api_lines(zoho) if "watch" in line] == ["PATCH /crm/v8/actions/watch"]
    zoho.log.clear()

    run(zoho, lambda c: c.pull_changes(datetime.now(UTC)), tokens)
    assert not [line for line in api_lines(zoho) if "watch" in line]


# ----------------------------------------------------------------------------------- setup


def test_setup_creates_the_fields_and_the_channel_then_finds_them(zoho: ZohoStandIn) -> None:
    zoho.reset(custom_fields=False)
    report = run(zoho, lambda c: c.setup())

    fields = ZohoConnector.default_field_map.values()
    assert report.created[:8] == list(fields)
    assert report.created[8].startswith(f"notification channel {CHANNEL_ID}")
    assert report.existing == []
    assert any("ZohoCRM.settings.fields.ALL" in step for step in report.manual_steps)
    creates = [
        c.body["fields"][0] for c in zoho.log.calls if c.method == "POST" and "fields" in c.path
    ]
    assert creates[1] == {"field_label": "Leadscore Score", "data_type": "integer", "length": 9}
    assert zoho.fields["Leads"]["Leadscore_Next_Action_Due"]["data_type"] == "datetime"
    [watch] = zoho.log.calls[-1].body["watch"]
    assert watch["events"] == ["Deals.all", "Leads.edit"]
    assert [c["module"]["api_name"] for c in watch["notification_condition"]] == [
        "Deals",
        "Leads",
    ]
    assert (watch["token"], watch["notify_url"]) == (NOTIFICATION_TOKEN, NOTIFY_URL)
    assert zoho.channels[CHANNEL_ID]["token"] == NOTIFICATION_TOKEN

    zoho.log.clear()
    options = {**zoho.connector_config().options, "notification_condition": "false"}
    again = run(zoho, lambda c: c.setup(), options=options)
    assert again.existing == list(fields)
    assert [c for c in zoho.log.calls if c.method == "POST" and "fields" in c.path] == []
    # Turned off (e.g. `--option notification_condition=false`): every change is notified.
    [watch] = zoho.log.calls[-1].body["watch"]
    assert "notification_condition" not in watch


def test_setup_without_the_scope_to_create_fields_says_what_to_click(zoho: ZohoStandIn) -> None:
    zoho.reset(custom_fields=False, can_create_fields=False)
    report = run(zoho, lambda c: c.setup(), options={"module": "Leads"})

    assert report.created == []
    assert len(report.manual_steps) >= 8
    assert any("'Leadscore Letter' (text)" in s and "Leads" in s for s in report.manual_steps)
    assert any("options.notify_url" in s for s in report.manual_steps)


# ------------------------------------------------------------------ one lead, new to won


def test_exact_calls_for_one_lead_from_new_to_sql_to_won(zoho: ZohoStandIn) -> None:
    tokens = MemoryTokenCache()
    email = "anna.rossi@metalpro.it"

    async def journey(c: ZohoConnector) -> list[Any]:
        refs = await c.push([lead("L1", email, letter="C", score=20, last_name="Rossi")], {})
        sql = lead("L1", email, letter="A", score=92, stage="sql", owner="anna")
        refs = await c.push([sql], refs)
        task = HandoverTask("L1", "anna", "Call Anna Rossi", "Letter A, score 92.", NOW)
        await c.create_task(task, refs["L1"])
        request = inbound(zoho.outcome_notification(email, "deal.won", NOTIFY_URL))
        c.verify_notification(request, NOW)
        return await c.parse_notification(request)

    outcomes = run(zoho, journey, tokens)

    assert api_lines(zoho) == [
        "POST /oauth/v2/token",
        "POST /crm/v8/Leads/upsert",  # new: Zoho cannot create without Last_Name ...
        "POST /crm/v8/Leads",  # ... so it is created with it
        "PUT /crm/v8/Leads",  # SQL: by the stored id
        "POST /crm/v8/Tasks",
        "GET /crm/v8/Deals",
        "GET /crm/v8/settings/fields",
        "GET /crm/v8/Contacts",
    ]
    calls = zoho.log.calls
    assert all(c.headers["host"].startswith("localhost:") for c in calls[1:])  # api_domain
    assert all(c.headers["authorization"].startswith("Zoho-oauthtoken ") for c in calls[1:])
    record_id = zoho.find("Leads", email)["id"]  # type: ignore[index]
    assert calls[2].body["data"] == [
        {
            "Email": email,
            "Last_Name": "Rossi",
            "Leadscore_Letter": "C",
            "Leadscore_Score": 20,
            "Leadscore_Tier": "warm",
            "Leadscore_Stage": "new",
            "Leadscore_Owner": None,
            "Leadscore_Next_Action": None,
            "Leadscore_Next_Action_Due": None,
            "Leadscore_Lead_Id": "L1",
        }
    ]
    assert calls[3].body["data"] == [
        {
            "id": record_id,
            "Leadscore_Letter": "A",
            "Leadscore_Score": 92,
            "Leadscore_Tier": "hot",
            "Leadscore_Stage": "sql",
            "Leadscore_Owner": "anna",
            "Leadscore_Next_Action": "call",
            "Leadscore_Next_Action_Due": "2026-11-27T09:30:00+00:00",
            "Leadscore_Lead_Id": "L1",
            "Owner": {"id": USERS["anna"]},
        }
    ]
    assert calls[4].body["data"][0]["What_Id"] == {"id": record_id}
    [won] = outcomes
    assert calls[5].query["ids"] == won.properties["deal_id"]
    assert (won.type, won.email) == ("deal.won", email)
    assert won.properties["stage"] == "Closed Won"
    person = zoho.person(email)
    assert person is not None
    assert (person["Leadscore_Letter"], person["Leadscore_Score"]) == ("A", 92)
