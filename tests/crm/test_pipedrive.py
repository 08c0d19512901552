"""The Pipedrive connector against a loopback stand-in of Pipedrive's API."""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import httpx
import pytest
from tests.crm.helpers import connector_runner, standin_fixtures
from tests.crm.standins.pipedrive import PipedriveStandIn, running
from tests.server import free_port

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
from leadscore_api.crm.pipedrive import PipedriveConnector

T = TypeVar("T")
NOTIFY_URL = "https://scores.example.com/v1/crm/pipedrive/notifications"


served, pd = standin_fixtures(running, "pd")


run = connector_runner(PipedriveConnector)


def lead(
    lead_id: str = "lead-1",
    email: str | None = "anna.rossi@metalpro.it",
    *,
    letter: str = "C",
    score: int = 20,
    owner: str | None = None,
    stage: str = "new",
) -> LeadSnapshot:
    return LeadSnapshot(
        lead_id=lead_id,
        email=email,
        letter=letter,
        score=score,
        tier="warm" if score < 50 else "hot",
        stage=stage,
        owner=owner,
        next_action="call" if owner else None,
        next_action_due=datetime(2026, 11, 27, 9, 30, tzinfo=UTC) if owner else None,
        updated_at=datetime(2026, 11, 26, 12, 0, tzinfo=UTC),
        attributes={"first_name": "Anna", "last_name": "Rossi"},
    )


def inbound(notification: tuple[str, dict[str, str], bytes]) -> InboundRequest:
    method, headers, body = notification
    return InboundRequest(method=method, url=NOTIFY_URL, headers=headers, body=body)


# -- scores out ------------------------------------------------------------------------------


def test_a_person_found_by_email_gets_the_scores_under_the_accounts_field_keys(
    pd: PipedriveStandIn,
) -> None:
    person_id = pd.add_person("anna.rossi@metalpro.it", "Anna Rossi")

    written = run(pd, lambda c: c.push([lead(owner="rep-sara")], {}))

    assert written == {"lead-1": RecordRef("person", str(person_id))}
    assert pd.log.lines() == [
        "GET /api/v2/personFields",
        "GET /api/v2/persons/search",
        f"PATCH /api/v2/persons/{person_id}",
    ]
    search = pd.log.calls[1]
    assert search.query == {
        "term": "anna.rossi@metalpro.it",
        "fields": "email",
        "exact_match": "true",
        "limit": "1",
    }
    assert search.headers["x-api-token"] == pd.connector_config().credentials["api_token"]
    patch = pd.log.calls[2].body
    assert patch["owner_id"] == 42
    assert patch["custom_fields"][pd.field_code("Leadscore score")] == 20  # a number field
    record = pd.person("anna.rossi@metalpro.it")
    assert record is not None
    assert record["Leadscore letter"] == "C"
    assert record["Leadscore next action due"] == "2026-11-27T09:30:00Z"
    assert record["Leadscore lead id"] == "lead-1"
    assert record["name"] == "Anna Rossi"  # not overwritten


def test_a_missing_person_is_created_with_name_primary_email_and_scores(
    pd: PipedriveStandIn,
) -> None:
    written = run(pd, lambda c: c.push([lead()], {}))

    assert pd.log.lines()[-1] == "POST /api/v2/persons"
    body = pd.log.calls[-1].body
    assert body["name"] == "Anna Rossi"
    assert body["emails"] == [{"value": "anna.rossi@metalpro.it", "primary": True, "label": "work"}]
    assert "owner_id" not in body  # no owner yet: Pipedrive's default owner
    record = pd.person("anna.rossi@metalpro.it")
    assert record is not None
    assert written == {"lead-1": RecordRef("person", str(record["id"]))}
    assert (record["Leadscore letter"], record["Leadscore score"]) == ("C", 20)
    assert record["Leadscore owner"] is None


def test_without_create_missing_an_unknown_lead_is_left_out(pd: PipedriveStandIn) -> None:
    config = pd.connector_config(create_missing=False)

    written = run(pd, lambda c: c.push([lead()], {}), config=config)

    assert written == {}
    assert "POST /api/v2/persons" not in pd.log.lines()
    assert pd.person("anna.rossi@metalpro.it") is None


def test_a_stored_person_id_is_written_without_a_search(pd: PipedriveStandIn) -> None:
    person_id = pd.add_person("anna.rossi@metalpro.it")
    known = {"lead-1": RecordRef("person", str(person_id))}

    written = run(pd, lambda c: c.push([lead(letter="B", score=61)], known))

    assert written == known
    assert pd.log.lines() == ["GET /api/v2/personFields", f"PATCH /api/v2/persons/{person_id}"]
    record = pd.person("anna.rossi@metalpro.it")
    assert record is not None and record["Leadscore letter"] == "B"


def test_a_stored_person_deleted_in_pipedrive_is_found_again_or_recreated(
    pd: PipedriveStandIn,
) -> None:
    known = {"lead-1": RecordRef("person", "99999")}

    written = run(pd, lambda c: c.push([lead()], known))

    assert pd.log.lines()[1:] == [
        "PATCH /api/v2/persons/99999",
        "GET /api/v2/persons/search",
        "POST /api/v2/persons",
    ]
    record = pd.person("anna.rossi@metalpro.it")
    assert record is not None
    assert written == {"lead-1": RecordRef("person", str(record["id"]))}


def test_one_person_per_call_as_pipedrive_has_no_batch_endpoint(pd: PipedriveStandIn) -> None:
    assert PipedriveConnector.max_batch == 1
    first = pd.add_person("a@example.com")
    second = pd.add_person("b@example.com")
    known = {"l1": RecordRef("person", str(first)), "l2": RecordRef("person", str(second))}

    run(pd, lambda c: c.push([lead("l1", "a@example.com"), lead("l2", "b@example.com")], known))

    assert pd.log.lines()[1:] == [
        f"PATCH /api/v2/persons/{first}",
        f"PATCH /api/v2/persons/{second}",
    ]


def test_field_keys_are_paged_once_and_cached_for_their_ttl(pd: PipedriveStandIn) -> None:
    tokens = MemoryTokenCache()
    config = pd.connector_config(options={"page_size": 4})
    person_id = pd.add_person("anna.rossi@metalpro.it")
    known = {"lead-1": RecordRef("person", str(person_id))}

    run(pd, lambda c: c.push([lead()], known), config=config, tokens=tokens)
    run(pd, lambda c: c.push([lead(letter="B")], known), config=config, tokens=tokens)

    # 14 fields at 4 a page: 4 pages with cursors, then no more listing while cached.
    fields_calls = [c for c in pd.log.calls if c.path == "/api/v2/personFields"]
    assert len(fields_calls) == 4
    assert "cursor" not in fields_calls[0].query
    assert all("cursor" in c.query for c in fields_calls[1:])
    assert pd.log.lines()[-1] == f"PATCH /api/v2/persons/{person_id}"
    cached = tokens.get()["person_fields"]
    assert {
        "name": "Leadscore letter",
        "code": pd.field_code("Leadscore letter"),
        "type": "varchar",
    } in cached

    expired = pd.connector_config(options={"field_cache_ttl": 0})
    pd.log.clear()
    run(pd, lambda c: c.push([lead()], known), config=expired, tokens=tokens)
    assert pd.log.lines() == ["GET /api/v2/personFields", f"PATCH /api/v2/persons/{person_id}"]


def test_a_field_missing_in_pipedrive_is_a_permanent_error_naming_setup(
    pd: PipedriveStandIn,
) -> None:
    pd.reset(with_fields=False)
    with pytest.raises(CrmError) as caught:
        run(pd, lambda c: c.push([lead()], {}))
    assert caught.value.permanent
    assert "'Leadscore letter'" in str(caught.value)
    assert "leadscore crm setup pipedrive" in str(caught.value)


def test_a_field_map_entry_for_no_field_of_ours_is_a_permanent_error(pd: PipedriveStandIn) -> None:
    config = pd.connector_config(field_map={"letter": "Leadscore letter", "mood": "Mood"})
    with pytest.raises(CrmError) as caught:
        run(pd, lambda c: c.push([lead()], {}), config=config)
    assert caught.value.permanent and "mood" in str(caught.value)
    assert pd.log.lines() == []


def test_a_field_map_may_give_field_keys_instead_of_names(pd: PipedriveStandIn) -> None:
    code = pd.field_code("Industry")
    config = pd.connector_config(field_map={"letter": code})

    run(pd, lambda c: c.push([lead()], {}), config=config)

    assert pd.log.calls[-1].body["custom_fields"] == {code: "C"}


# -- limits and errors -----------------------------------------------------------------------


def test_429_waits_for_retry_after_else_the_rate_limit_reset(pd: PipedriveStandIn) -> None:
    person_id = pd.add_person("anna.rossi@metalpro.it")
    known = {"lead-1": RecordRef("person", str(person_id))}
    tokens = MemoryTokenCache()
    run(pd, lambda c: c.push([lead()], known), tokens=tokens)  # field keys cached

    pd.fail_next(429, reset=7)
    with pytest.raises(CrmRateLimited) as by_reset:
        run(pd, lambda c: c.push([lead()], known), tokens=tokens)
    pd.fail_next(429, retry_after=30, reset=2)
    with pytest.raises(CrmRateLimited) as by_retry_after:
        run(pd, lambda c: c.push([lead()], known), tokens=tokens)

    assert by_reset.value.retry_after == 7
    assert by_retry_after.value.retry_after == 30
    assert not by_reset.value.permanent
    assert tokens.get()["rate_limit"]["reset"] == "2"


def test_searches_over_ten_in_two_seconds_are_rate_limited(pd: PipedriveStandIn) -> None:
    leads = [lead(f"l{i}", f"new{i}@example.com") for i in range(11)]
    with pytest.raises(CrmRateLimited) as caught:
        run(pd, lambda c: c.push(leads, {}))
    assert caught.value.retry_after == 2
    assert len([c for c in pd.log.calls if c.path == "/api/v2/persons/search"]) == 11


def test_a_spent_daily_budget_waits_until_the_next_utc_day_without_calling_again(
    pd: PipedriveStandIn,
) -> None:
    tokens = MemoryTokenCache()
    pd.reset(daily_budget=2)
    person_id = pd.add_person("anna.rossi@metalpro.it")
    known = {"lead-1": RecordRef("person", str(person_id))}
    run(pd, lambda c: c.push([lead()], known), tokens=tokens)  # spends both
    with pytest.raises(CrmRateLimited) as caught:
        run(pd, lambda c: c.push([lead()], known), tokens=tokens)
    calls = len(pd.log.calls)

    now = datetime.now(UTC)
    midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    expected = (midnight - now).total_seconds()
    assert caught.value.retry_after is not None
    assert abs(caught.value.retry_after - expected) < 5
    assert calls == 2  # the reading "0 left" stopped the connector before a pointless 429
    assert tokens.get()["daily_requests_left"] == "0"


def test_a_daily_limit_429_waits_until_the_next_utc_day(pd: PipedriveStandIn) -> None:
    pd.fail_next(429, daily_left=0, reset=2)
    with pytest.raises(CrmRateLimited) as caught:
        run(pd, lambda c: c.push([lead()], {}))
    assert caught.value.retry_after is not None and caught.value.retry_after > 2


@pytest.mark.parametrize(
    ("status", "permanent"), [(500, False), (502, False), (400, True), (403, True), (401, True)]
)
def test_server_errors_are_retried_and_refusals_are_not(
    pd: PipedriveStandIn, status: int, permanent: bool
) -> None:
    pd.fail_next(status)
    with pytest.raises(CrmError) as caught:
        run(pd, lambda c: c.push([lead()], {}))
    assert caught.value.status == status
    assert caught.value.permanent is permanent
    assert not isinstance(caught.value, CrmRateLimited)


def test_a_wrong_api_token_is_a_permanent_error(pd: PipedriveStandIn) -> None:
    config = pd.connector_config(credentials={"api_token": "regenerated-since"})
    with pytest.raises(CrmError) as caught:
        run(pd, lambda c: c.push([lead()], {}), config=config)
    assert (caught.value.status, caught.value.permanent) == (401, True)


def test_an_unreachable_pipedrive_is_retried(pd: PipedriveStandIn) -> None:
    config = pd.connector_config(base_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(CrmError) as caught:
        run(pd, lambda c: c.push([lead()], {}), config=config)
    assert not caught.value.permanent


def test_oauth_access_token_is_refreshed_once_cached_and_refreshed_again_on_401(
    pd: PipedriveStandIn,
) -> None:
    tokens = MemoryTokenCache()
    config = pd.connector_config(credentials=pd.oauth_credentials())
    person_id = pd.add_person("anna.rossi@metalpro.it")
    known = {"lead-1": RecordRef("person", str(person_id))}

    run(pd, lambda c: c.push([lead()], known), config=config, tokens=tokens)
    run(pd, lambda c: c.push([lead()], known), config=config, tokens=tokens)

    assert pd.log.lines().count("POST /oauth/token") == 1
    token_call = pd.log.calls[0]
    assert token_call.body == "grant_type=refresh_token&refresh_token=pd-refresh-token"
    expected = base64.b64encode(b"pd-client-id:pd-client-secret").decode()
    assert token_call.headers["authorization"] == f"Basic {expected}"
    assert pd.log.calls[1].headers["authorization"] == "Bearer access-1"
    assert "x-api-token" not in pd.log.calls[1].headers
    assert tokens.get()["api_domain"] == pd.base_url
    assert tokens.get()["expires_at"] > time.time() + 3000

    pd.access_tokens.clear()  # revoked in Pipedrive before its expiry
    pd.log.clear()
    run(pd, lambda c: c.push([lead()], known), config=config, tokens=tokens)
    assert pd.log.lines() == [
        f"PATCH /api/v2/persons/{person_id}",
        "POST /oauth/token",
        f"PATCH /api/v2/persons/{person_id}",
    ]
    assert tokens.get()["access_token"] == "access-2"


def test_an_expired_oauth_token_is_refreshed_before_the_call(pd: PipedriveStandIn) -> None:
    tokens = MemoryTokenCache()
    config = pd.connector_config(credentials=pd.oauth_credentials())
    person_id = pd.add_person("anna.rossi@metalpro.it")
    known = {"lead-1": RecordRef("person", str(person_id))}
    run(pd, lambda c: c.push([lead()], known), config=config, tokens=tokens)
    tokens.put({"expires_at": time.time() + 30})  # inside the one-minute safety margin
    pd.log.clear()

    run(pd, lambda c: c.push([lead()], known), config=config, tokens=tokens)

    assert pd.log.lines() == ["POST /oauth/token", f"PATCH /api/v2/persons/{person_id}"]
    assert pd.log.calls[1].headers["authorization"] == "Bearer access-2"


def test_a_refused_refresh_token_is_a_permanent_error(pd: PipedriveStandIn) -> None:
    credentials = {**pd.oauth_credentials(), "refresh_token": "revoked-by-the-user"}
    config = pd.connector_config(credentials=credentials)
    with pytest.raises(CrmError) as caught:
        run(pd, lambda c: c.push([lead()], {}), config=config)
    assert (caught.value.status, caught.value.permanent) == (400, True)
    assert pd.log.lines() == ["POST /oauth/token"]


# -- hand-over, erase, merge -------------------------------------------------------------------


def test_handover_creates_a_call_activity_for_the_mapped_owner_due_in_utc(
    pd: PipedriveStandIn,
) -> None:
    person_id = pd.add_person("anna.rossi@metalpro.it")
    task = HandoverTask(
        lead_id="lead-1",
        owner="rep-tom",
        subject="Call Anna Rossi within 24 h (A 92)",
        body="Asked for a quote on laser cutting.",
        due_at=datetime(2026, 11, 27, 10, 15, tzinfo=UTC),
    )

    activity_id = run(pd, lambda c: c.create_task(task, RecordRef("person", str(person_id))))

    assert pd.log.lines() == ["POST /api/v2/activities"]
    assert pd.log.calls[0].body == {
        "subject": "Call Anna Rossi within 24 h (A 92)",
        "type": "call",
        "participants": [{"person_id": person_id, "primary": True}],
        "due_date": "2026-11-27",
        "due_time": "10:15",
        "note": "Asked for a quote on laser cutting.",
        "done": False,
        "owner_id": 77,
    }
    [activity] = pd.tasks()
    assert str(activity["id"]) == activity_id
    assert activity["person_id"] == person_id


def test_handover_to_an_unmapped_rep_leaves_the_owner_to_pipedrive(pd: PipedriveStandIn) -> None:
    person_id = pd.add_person("anna.rossi@metalpro.it")
    task = HandoverTask("lead-1", "rep-unknown", "Call", "", datetime(2026, 11, 27, tzinfo=UTC))

    run(pd, lambda c: c.create_task(task, RecordRef("person", str(person_id))))

    assert "owner_id" not in pd.log.calls[0].body
    assert pd.tasks()[0]["owner_id"] == 1


def test_erase_deletes_the_person_and_a_gone_person_is_no_error(pd: PipedriveStandIn) -> None:
    person_id = pd.add_person("anna.rossi@metalpro.it")
    record = RecordRef("person", str(person_id))

    run(pd, lambda c: c.erase(record))
    run(pd, lambda c: c.erase(record))

    assert pd.log.lines() == [f"DELETE /api/v2/persons/{person_id}"] * 2
    assert pd.person("anna.rossi@metalpro.it") is None


def test_merge_folds_the_merged_person_into_the_survivor(pd: PipedriveStandIn) -> None:
    survivor = pd.add_person("anna.rossi@metalpro.it")
    merged = pd.add_person("a.rossi@gmail.com")

    result = run(
        pd,
        lambda c: c.merge(RecordRef("person", str(survivor)), RecordRef("person", str(merged))),
    )

    assert result == RecordRef("person", str(survivor))
    assert pd.log.lines() == [f"PUT /api/v1/persons/{merged}/merge"]
    assert pd.log.calls[0].body == {"merge_with_id": survivor}
    assert merged not in pd.persons
    assert pd.person("a.rossi@gmail.com") is not None  # its email now on the survivor

    again = run(
        pd,
        lambda c: c.merge(RecordRef("person", str(survivor)), RecordRef("person", str(merged))),
    )
    assert again == RecordRef("person", str(survivor))  # already merged: nothing to do


# -- outcomes in -------------------------------------------------------------------------------


def test_notifications_need_the_webhooks_basic_credentials(pd: PipedriveStandIn) -> None:
    connector = PipedriveConnector(pd.connector_config(), httpx.AsyncClient(), MemoryTokenCache())
    good = inbound(pd.outcome_notification("anna.rossi@metalpro.it", "deal.won", NOTIFY_URL))
    now = datetime.now(UTC)

    connector.verify_notification(good, now)

    wrong = base64.b64encode(b"leadscore:guessed").decode()
    for headers in (
        {**good.headers, "authorization": f"Basic {wrong}"},
        {"content-type": "application/json"},
        {**good.headers, "authorization": "Bearer something"},
        {**good.headers, "authorization": "Basic %%%"},
    ):
        with pytest.raises(NotificationRejected):
            connector.verify_notification(
                InboundRequest("POST", NOTIFY_URL, headers, good.body), now
            )
    unconfigured = PipedriveConnector(
        pd.connector_config(credentials={"api_token": "x"}),
        httpx.AsyncClient(),
        MemoryTokenCache(),
    )
    with pytest.raises(NotificationRejected):
        unconfigured.verify_notification(good, now)


@pytest.mark.parametrize(
    "outcome", ["opportunity.created", "deal.won", "deal.lost", "lead.contacted", "lead.accepted"]
)
def test_each_pipedrive_change_becomes_its_outcome(
    pd: PipedriveStandIn, outcome: OutcomeType
) -> None:
    person_id = pd.add_person("anna.rossi@metalpro.it")
    notification = inbound(pd.outcome_notification("anna.rossi@metalpro.it", outcome, NOTIFY_URL))

    async def parse(connector: PipedriveConnector) -> Any:
        connector.verify_notification(notification, datetime.now(UTC))
        return await connector.parse_notification(notification)

    [parsed] = run(pd, parse)
    again = run(pd, lambda c: c.parse_notification(notification))

    assert parsed.type == outcome
    assert parsed.record == RecordRef("person", str(person_id))
    assert again[0].dedup_key == parsed.dedup_key  # a redelivery is the same event
    if outcome.startswith(("deal", "opportunity")):
        assert parsed.email == "anna.rossi@metalpro.it"
        assert parsed.properties["deal_id"] in {str(d) for d in pd.deals}
        assert f"GET /api/v2/persons/{person_id}" in pd.log.lines()
    if outcome == "deal.lost":
        assert parsed.properties["lost_reason"] == "Went with a competitor"
    if outcome == "lead.contacted":
        assert pd.log.lines() == []  # matched by the stored person id, no call needed


def test_changes_that_are_no_outcome_give_nothing(pd: PipedriveStandIn) -> None:
    person_id = pd.add_person("anna.rossi@metalpro.it")
    deal = pd.add_deal(person_id, status="won", won_time="2026-11-20T10:00:00Z")
    label_change = {"label_ids": [3]}

    def body(entity: str, action: str, data: Any, previous: Any) -> InboundRequest:
        payload = {"meta": {"entity": entity, "action": action}, "data": data, "previous": previous}
        return InboundRequest("POST", NOTIFY_URL, {}, json.dumps(payload).encode())

    requests = [
        body("deal", "change", deal, {"title": "Old title"}),  # a won deal renamed
        body("deal", "delete", None, deal),
        body("activity", "change", {"id": 5, "done": True, "person_id": person_id}, {"note": "x"}),
        body("activity", "create", {"id": 6, "done": False, "person_id": person_id}, None),
        body("person", "change", {"id": person_id, "label_ids": [3]}, {"label_ids": []}),
        body("person", "change", {"id": person_id, **label_change}, None),
        InboundRequest("POST", NOTIFY_URL, {}, b"[]"),
    ]

    async def parse_all(connector: PipedriveConnector) -> list[Any]:
        return [await connector.parse_notification(r) for r in requests]

    assert run(pd, parse_all) == [[] for _ in requests]


def test_pull_pages_through_recent_deals_and_done_activities(pd: PipedriveStandIn) -> None:
    since = datetime.now(UTC) - timedelta(minutes=5)
    anna = pd.add_person("anna.rossi@metalpro.it")
    ben = pd.add_person("ben@example.com")
    won = pd.add_deal(anna, status="won", won_time=datetime.now(UTC).isoformat())
    pd.add_deal(ben)
    pd.add_deal(None)  # a deal without a person is nobody's outcome
    old = pd.add_deal(ben, add_time="2026-01-01T00:00:00Z", update_time="2026-01-01T00:00:00Z")
    activity = pd._new_activity({"subject": "Call", "done": True}, ben)
    activity["marked_as_done_time"] = activity["update_time"]
    config = pd.connector_config(options={"page_size": 2})

    outcomes, cursor = run(pd, lambda c: c.pull_changes(since), config=config)

    kinds = sorted((o.type, o.email or o.record.record_id if o.record else "") for o in outcomes)
    assert kinds == [
        ("deal.won", "anna.rossi@metalpro.it"),
        ("lead.contacted", str(ben)),
        ("opportunity.created", "anna.rossi@metalpro.it"),
        ("opportunity.created", "ben@example.com"),
    ]
    assert all(o.properties.get("deal_id") != str(old["id"]) for o in outcomes)
    deal_calls = [c for c in pd.log.calls if c.path == "/api/v2/deals"]
    assert len(deal_calls) == 2  # 3 recent deals, 2 a page
    assert deal_calls[0].query["sort_by"] == "update_time"
    assert deal_calls[0].query["updated_since"] == since.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert "cursor" in deal_calls[1].query
    assert cursor >= datetime.fromisoformat(won["update_time"])
    assert pd.log.lines().count(f"GET /api/v2/persons/{anna}") == 1  # one read per person
    won_outcome = next(o for o in outcomes if o.type == "deal.won")
    notified = inbound(pd.outcome_notification("ben@example.com", "deal.won", NOTIFY_URL))
    assert won_outcome.dedup_key == f"deal:{won['id']}:won:{won['won_time']}"
    assert run(pd, lambda c: c.parse_notification(notified))[0].type == "deal.won"


# -- setup -------------------------------------------------------------------------------------


def test_setup_creates_missing_fields_and_webhooks_and_reports_what_exists(
    pd: PipedriveStandIn,
) -> None:
    pd.reset(with_fields=False)
    pd.add_field("Leadscore letter", "varchar")
    options = {"notify_url": NOTIFY_URL, "accepted_label_ids": [5]}
    config = pd.connector_config(options=options)
    tokens = MemoryTokenCache()

    first = run(pd, lambda c: c.setup(), config=config, tokens=tokens)

    assert first.existing == ["Leadscore letter"]
    assert "Leadscore score" in first.created and len(first.created) == 7 + 3
    created_fields = [c.body for c in pd.log.calls if c.line == "POST /api/v2/personFields"]
    assert {"field_name": "Leadscore score", "field_type": "double"} in created_fields
    assert {"field_name": "Leadscore tier", "field_type": "varchar"} in created_fields
    hooks = [c.body for c in pd.log.calls if c.line == "POST /api/v1/webhooks"]
    assert {(h["event_object"], h["event_action"]) for h in hooks} == {
        ("deal", "*"),
        ("activity", "*"),
        ("person", "change"),
    }
    assert all(
        h["version"] == "2.0"
        and h["http_auth_user"] == "leadscore"
        and h["subscription_url"] == NOTIFY_URL
        for h in hooks
    )
    assert any("Personal preferences → API" in step for step in first.manual_steps)
    assert any("regenerating" in step for step in first.manual_steps)

    # The new keys are cached: a push right after setup lists no fields.
    pd.log.clear()
    run(pd, lambda c: c.push([lead()], {}), config=config, tokens=tokens)
    assert "GET /api/v2/personFields" not in pd.log.lines()

    second = run(pd, lambda c: c.setup(), config=config)
    assert second.created == []
    assert len(second.existing) == 8 + 3

    # The webhook setup made sends notifications the connector accepts.
    sent = inbound(pd.outcome_notification("anna.rossi@metalpro.it", "deal.won", NOTIFY_URL))
    connector = PipedriveConnector(config, httpx.AsyncClient(), tokens)
    connector.verify_notification(sent, datetime.now(UTC))


def test_setup_without_a_notify_url_says_how_to_add_the_webhooks(pd: PipedriveStandIn) -> None:
    report = run(pd, lambda c: c.setup())

    assert report.created == []
    assert len(report.existing) == 8
    assert "GET /api/v1/webhooks" not in pd.log.lines()
    assert any("/v1/crm/pipedrive/notifications" in step for step in report.manual_steps)


# -- the whole way of one lead ---------------------------------------------------------------


def test_exact_calls_for_one_lead_going_new_to_sql_to_won(pd: PipedriveStandIn) -> None:
    tokens = MemoryTokenCache()
    email = "anna.rossi@metalpro.it"

    async def journey(connector: PipedriveConnector) -> Any:
        first = await connector.push([lead(letter="C", score=20)], {})
        record = first["lead-1"]
        await connector.push(
            [lead(letter="A", score=92, owner="rep-sara", stage="sql")], {"lead-1": record}
        )
        task = HandoverTask(
            "lead-1",
            "rep-sara",
            "Call within 24 h",
            "A 92, SQL",
            datetime(2026, 11, 27, 9, tzinfo=UTC),
        )
        await connector.create_task(task, record)
        notification = inbound(pd.outcome_notification(email, "deal.won", NOTIFY_URL))
        connector.verify_notification(notification, datetime.now(UTC))
        return record, await connector.parse_notification(notification)

    record, outcomes = run(pd, journey, tokens=tokens)

    person_id = record.record_id
    assert pd.log.lines() == [
        "GET /api/v2/personFields",
        "GET /api/v2/persons/search",
        "POST /api/v2/persons",
        f"PATCH /api/v2/persons/{person_id}",
        "POST /api/v2/activities",
        f"GET /api/v2/persons/{person_id}",
    ]
    code = pd.field_code
    created, updated, activity = (pd.log.calls[i].body for i in (2, 3, 4))
    assert created["custom_fields"][code("Leadscore letter")] == "C"
    assert created["custom_fields"][code("Leadscore score")] == 20
    assert updated["custom_fields"][code("Leadscore letter")] == "A"
    assert updated["custom_fields"][code("Leadscore score")] == 92
    assert updated["custom_fields"][code("Leadscore stage")] == "sql"
    assert updated["owner_id"] == 42
    assert activity["participants"] == [{"person_id": int(person_id), "primary": True}]
    assert (activity["owner_id"], activity["type"], activity["due_time"]) == (42, "call", "09:00")
    [won] = outcomes
    assert won.type == "deal.won"
    assert won.record == RecordRef("person", person_id)
    assert won.email == email
