"""Reports over a history built through the real API, checked against figures worked out by hand.

The cohort is last calendar month (whole UTC days), far enough back for every hand-over to be
judged and recent enough that the guide model's behaviour points (kept 90 days) still count.
Five leads arrive in it; a sixth arrived the month before and only crosses into SQL inside it.

The guide model (pmi-letter-score, the primary): a big manufacturer's purchasing manager has 50
fit points (letter A, score 50: MQL on arrival); an HR manager of the same firm 40 (B40, MQL
after a white paper); an intern 0 (D0). Pricing + email + white paper + newsletter + webinar on
one day add 40: score 90, SQL. The hand-over is the MQL (the first-contact SLA's stage).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from fastapi.testclient import TestClient
from sqlalchemy.pool import NullPool
from tests.conftest import TEST_ADMIN_KEY, MakeApiKey, auth, make_settings

from leadscore_api.app import create_app
from leadscore_api.storage.db import make_engine
from leadscore_api.storage.migrate import alembic_config, upgrade_database

BIG = {"role": "purchasing manager", "employees": 250, "industry": "manufacturing"}
BIG |= {"annual_revenue_eur": 5_000_000}
HR = {**BIG, "role": "HR manager"}
INTERN = {"role": "intern"}


def last_month() -> tuple[date, date]:
    first_of_this = datetime.now(UTC).date().replace(day=1)
    end = first_of_this - timedelta(days=1)
    return end.replace(day=1), end


START, END = last_month()
T0 = datetime(START.year, START.month, START.day, 9, tzinfo=UTC) + timedelta(days=2)
PERIOD = {"from": START.isoformat(), "to": END.isoformat()}
MONTH = START.strftime("%Y-%m")


def ev(email: str, kind: str, at: datetime, **fields: Any) -> dict[str, Any]:
    return {
        "id": f"{email}-{kind}-{at.isoformat()}",
        "type": kind,
        "occurred_at": at.isoformat(),
        "lead": {"email": email},
        **fields,
    }


def arrive(email: str, at: datetime, attributes: dict[str, Any], source: str | None) -> Any:
    extra = {"source": source} if source else {}
    return ev(email, "form.submitted", at, attributes={**attributes, **extra})


def to_sql(email: str, at: datetime) -> list[dict[str, Any]]:
    """Forty behaviour points in four minutes: 50 → 90."""
    return [
        ev(email, "page.viewed", at, properties={"url": "https://x.it/prezzi"}),
        ev(email, "email.opened", at + timedelta(minutes=1)),
        ev(email, "content.downloaded", at + timedelta(minutes=2)),
        ev(email, "newsletter.subscribed", at + timedelta(minutes=3)),
        ev(email, "webinar.attended", at + timedelta(minutes=4)),
    ]


def post(client: TestClient, events: list[dict[str, Any]]) -> None:
    response = client.post("/v1/events", json={"events": events})
    assert response.status_code == 200, response.text
    assert all(r["status"] == "accepted" for r in response.json()["results"]), response.text


H = timedelta(hours=1)
D = timedelta(days=1)


@pytest.fixture
def history(client: TestClient) -> TestClient:
    # L1: A50 MQL on arrival, contacted 2 h later, SQL the next day, opportunity, won 10,000 €.
    post(client, [arrive("l1@a.it", T0, BIG, "paid_search")])
    post(client, [ev("l1@a.it", "lead.contacted", T0 + 2 * H)])
    post(client, to_sql("l1@a.it", T0 + 30 * H))
    post(client, [ev("l1@a.it", "opportunity.created", T0 + 2 * D)])
    post(client, [ev("l1@a.it", "deal.won", T0 + 3 * D, properties={"amount": 10000})])
    # L2: B40, a white paper two days later makes it B50 MQL; contacted 6 h after that.
    post(client, [arrive("l2@a.it", T0 + H, HR, "paid_search")])
    post(client, [ev("l2@a.it", "content.downloaded", T0 + H + 2 * D)])
    post(client, [ev("l2@a.it", "lead.contacted", T0 + 7 * H + 2 * D)])
    # L3: A50 MQL on arrival, never taken up by sales: abandoned.
    post(client, [arrive("l3@a.it", T0 + 2 * H, BIG, "referral")])
    # L4: D0, L5: B40 without a source attribute.
    post(client, [arrive("l4@a.it", T0 + 3 * H, INTERN, "referral")])
    post(client, [arrive("l5@a.it", T0 + 4 * H, {**HR, "employees": 60}, None)])
    # An older lead (arrived before the period): MQL before it, SQL inside it.
    post(client, [arrive("old@a.it", T0 - 20 * D, BIG, "paid_search")])
    post(client, to_sql("old@a.it", T0 + 3 * D))
    return client


def kpis_by_key(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {kpi["key"]: kpi for kpi in body["kpis"]}


def test_the_six_kpis_come_out_as_worked_out_by_hand(history: TestClient) -> None:
    put = history.put(f"/v1/costs/paid_search/{MONTH}", json={"amount": 300})
    assert put.status_code == 200, put.text
    assert history.put(f"/v1/costs/referral/{MONTH}", json={"amount": 0}).status_code == 200

    response = history.get("/v1/reports/kpis", params=PERIOD)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["leads"] == 5
    assert body["period"] == {"from": START.isoformat(), "to": END.isoformat(), "days": END.day}
    assert (body["model"], body["mql_stage"], body["handover_stage"]) == (
        "pmi-letter-score",
        "mql",
        "mql",
    )
    kpis = kpis_by_key(body)
    assert list(kpis) == [
        "lead_conversion_rate",
        "time_to_qualify",
        "cost_per_lead",
        "mql_to_sql_conversion",
        "response_time",
        "abandonment_rate",
    ]
    # 1 opportunity (L1) of 5 leads.
    assert (kpis["lead_conversion_rate"]["value"], kpis["lead_conversion_rate"]["status"]) == (
        20.0,
        "met",
    )
    # MQL after 0 (L1), 2 days (L2) and 0 (L3): 2/3 of a day on average.
    assert kpis["time_to_qualify"]["value"] == round(2 / 3, 2)
    assert kpis["time_to_qualify"]["status"] == "met"
    assert kpis["time_to_qualify"]["sample"] == 3
    # 300 € for paid_search's 2 leads and 0 € for referral's 2: 75 €; L5 has no source.
    assert kpis["cost_per_lead"]["value"] == 75.0
    assert kpis["cost_per_lead"]["status"] == "missed"
    assert "unknown" in kpis["cost_per_lead"]["note"]
    # 1 SQL (L1) of 3 MQLs.
    assert kpis["mql_to_sql_conversion"]["value"] == round(100 / 3, 2)
    assert kpis["mql_to_sql_conversion"]["status"] == "met"
    # Contacted 2 h (L1) and 6 h (L2) after the hand-over: 4 h, not under 4 h.
    assert kpis["response_time"]["value"] == 4.0
    assert kpis["response_time"]["status"] == "missed"
    assert kpis["response_time"]["sample"] == 2
    # L3 of 3 hand-overs was never taken up.
    assert kpis["abandonment_rate"]["value"] == round(100 / 3, 2)
    assert kpis["abandonment_rate"]["status"] == "missed"
    target = kpis["abandonment_rate"]
    assert (target["target"], target["comparison"], target["frequency"]) == (20.0, "<", "monthly")


def test_cost_per_lead_is_unknown_without_costs_not_zero(history: TestClient) -> None:
    kpis = kpis_by_key(history.get("/v1/reports/kpis", params=PERIOD).json())
    assert kpis["cost_per_lead"]["value"] is None
    assert kpis["cost_per_lead"]["status"] == "unknown"
    assert "no acquisition costs" in kpis["cost_per_lead"]["note"]


def test_an_empty_period_answers_unknown_everywhere(client: TestClient) -> None:
    body = client.get("/v1/reports/summary", params=PERIOD).json()
    assert body["leads"] == 0
    assert {kpi["status"] for kpi in body["kpis"]} == {"unknown"}
    assert all(kpi["value"] is None for kpi in body["kpis"])


def test_matrix_counts_the_cohort_in_the_rulesets_cells(history: TestClient) -> None:
    body = history.get("/v1/reports/matrix", params=PERIOD).json()
    matrix = body["matrix"]
    assert matrix["letters"] == ["A", "B", "C", "D"]
    assert [band["label"] for band in matrix["bands"]] == ["0–49", "50–89", "≥90"]
    counts = {(c["letter"], c["band"]): c["count"] for row in matrix["rows"] for c in row}
    expected = {("A", 2): 1, ("B", 1): 1, ("A", 1): 1, ("D", 0): 1, ("B", 0): 1}
    assert {cell: n for cell, n in counts.items() if n} == expected
    assert matrix["total"] == 5 and matrix["unlettered"] == 0
    actions = {(c["letter"], c["band"]): c["action"] for row in matrix["rows"] for c in row}
    # The guide's matrix, as rules/pmi-letter-score.yaml writes it.
    assert actions[("A", 2)] == "potential_sql"
    assert actions[("A", 1)] == "priority_contact"
    assert actions[("B", 0)] == "nurture"
    assert actions[("D", 0)] == "no_action"


def test_funnel_and_conversion_by_band(history: TestClient) -> None:
    body = history.get("/v1/reports/summary", params=PERIOD).json()
    funnel = {step["key"]: step for step in body["funnel"]}
    assert [step["key"] for step in body["funnel"]] == ["lead", "mql", "sql", "opportunity", "won"]
    assert [step["count"] for step in body["funnel"]] == [5, 3, 1, 1, 1]
    assert funnel["mql"]["rate_from_previous"] == 60.0
    assert funnel["won"]["rate_from_start"] == 20.0
    bands = {item["band"]["label"]: item for item in body["conversion_by_band"]}
    # Best scores: L1 90; L2 50, L3 50; L4 0, L5 40.
    assert (bands["≥90"]["leads"], bands["≥90"]["opportunities"], bands["≥90"]["won"]) == (1, 1, 1)
    assert bands["≥90"]["opportunity_rate"] == 100.0
    assert (bands["50–89"]["leads"], bands["50–89"]["mql"], bands["50–89"]["won"]) == (2, 2, 0)
    assert (bands["0–49"]["leads"], bands["0–49"]["mql"]) == (2, 0)


def test_crossings_per_day_count_every_lead_entering_a_stage(history: TestClient) -> None:
    body = history.get("/v1/reports/crossings", params=PERIOD).json()
    crossings = body["crossings"]
    assert crossings["stages"] == ["mql", "sql"]
    assert len(crossings["days"]) == END.day
    by_day = {item["day"]: item["counts"] for item in crossings["days"]}
    day = T0.date()
    # L1 and L3 arrive as MQL; L1 becomes SQL the next day; L2 MQL two days on; the old
    # lead's SQL three days on (its MQL was before the period).
    assert by_day[day.isoformat()] == {"mql": 2, "sql": 0}
    assert by_day[(day + D).isoformat()] == {"mql": 0, "sql": 1}
    assert by_day[(day + 2 * D).isoformat()] == {"mql": 1, "sql": 0}
    assert by_day[(day + 3 * D).isoformat()] == {"mql": 0, "sql": 1}
    assert crossings["totals"] == {"mql": 3, "sql": 2}


def test_channels_show_quality_cost_and_roi(history: TestClient) -> None:
    history.put(f"/v1/costs/paid_search/{MONTH}", json={"amount": 300})
    history.put(f"/v1/costs/events_fair/{MONTH}", json={"amount": 1000})
    body = history.get("/v1/reports/channels", params=PERIOD).json()
    channels = {item["source"]: item for item in body["channels"]}
    assert set(channels) == {"paid_search", "referral", "unknown", "events_fair"}
    paid = channels["paid_search"]
    assert (paid["leads"], paid["mql"], paid["sql"], paid["won"]) == (2, 2, 1, 1)
    assert paid["revenue"] == 10000.0
    assert (paid["cost"], paid["cost_per_lead"]) == (300.0, 150.0)
    assert paid["roi"] == round(100 * (10000 - 300) / 300, 2)
    assert paid["average_best_score"] == (90 + 50) / 2
    # A fair that brought nothing: all cost, ROI −100 %.
    assert (channels["events_fair"]["leads"], channels["events_fair"]["roi"]) == (0, -100.0)
    assert channels["referral"]["cost"] is None and channels["referral"]["roi"] is None


def test_filters_by_source_and_owner(history: TestClient) -> None:
    paid = history.get("/v1/reports/summary", params={**PERIOD, "source": "paid_search"}).json()
    assert paid["leads"] == 2 and paid["source"] == "paid_search"
    assert paid["crossings"]["totals"] == {"mql": 2, "sql": 2}
    unknown = history.get("/v1/reports/funnel", params={**PERIOD, "source": "unknown"}).json()
    assert [step["count"] for step in unknown["funnel"]] == [1, 0, 0, 0, 0]
    # The routing rules give 250-employee firms to key-accounts, the others to inside-sales.
    inside = history.get("/v1/reports/kpis", params={**PERIOD, "owner": "inside-sales"}).json()
    assert inside["leads"] == 2
    assert kpis_by_key(inside)["cost_per_lead"]["status"] == "unknown"


def test_another_model_reads_its_own_stages(history: TestClient) -> None:
    body = history.get("/v1/reports/summary", params={**PERIOD, "model": "bant"}).json()
    assert body["model"] == "bant" and body["leads"] == 5
    assert body["matrix"]["unlettered"] == 5
    assert [band["label"] for band in body["matrix"]["bands"]] == ["0–39", "40–74", "≥75"]


def test_the_period_defaults_to_the_last_90_days(client: TestClient) -> None:
    body = client.get("/v1/reports/kpis").json()
    today = datetime.now(UTC).date()
    assert body["period"] == {
        "from": (today - timedelta(days=89)).isoformat(),
        "to": today.isoformat(),
        "days": 90,
    }


def test_reports_need_leads_read(client: TestClient, make_api_key: MakeApiKey) -> None:
    writer = make_api_key("events:write")
    reader = make_api_key("leads:read")
    denied = client.get("/v1/reports/summary", headers=auth(writer))
    assert denied.status_code == 403
    assert client.get("/v1/reports/summary", headers=auth(reader)).status_code == 200
    put = client.put(f"/v1/costs/x/{MONTH}", json={"amount": 1}, headers=auth(reader))
    assert put.status_code == 403


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"from": "2026-10-10", "to": "2026-10-01"}, "from"),
        ({"from": "2026-13-01"}, "from"),
        ({"to": "yesterday"}, "to"),
        ({"from": "2020-01-01", "to": "2026-01-01"}, "from"),
        ({"from": "9999-12-01", "to": "9999-12-31"}, "from"),
        ({"to": "0001-01-02"}, "to"),
        ({"from": "2026-10-01", "to": "99999-01-01"}, "to"),
        ({"model": "nope"}, "model"),
        ({"model": "../etc"}, "model"),
        ({"source": "bad\x00source"}, "source"),
        ({"owner": "x\x00"}, "owner"),
    ],
)
def test_bad_report_parameters_are_a_problem_naming_the_field(
    client: TestClient, params: dict[str, str], field: str
) -> None:
    response = client.get("/v1/reports/kpis", params=params)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert field in [error["field"] for error in response.json()["errors"]]


def lead_id(client: TestClient, email: str) -> str:
    items = client.get("/v1/leads", params={"email": email}).json()["items"]
    assert len(items) == 1
    found: str = items[0]["id"]
    return found


def test_an_erased_lead_leaves_the_reports(history: TestClient) -> None:
    gone = history.delete(f"/v1/leads/{lead_id(history, 'l3@a.it')}")
    assert gone.status_code == 204, gone.text
    body = history.get("/v1/reports/summary", params=PERIOD).json()
    assert body["leads"] == 4
    assert [step["count"] for step in body["funnel"]] == [4, 2, 1, 1, 1]
    assert body["crossings"]["totals"] == {"mql": 2, "sql": 2}
    # L3 was the abandoned hand-over.
    assert kpis_by_key(body)["abandonment_rate"]["value"] == 0.0


def test_a_merged_lead_counts_once_with_both_histories(history: TestClient) -> None:
    # L4 (D0, arrived third hour) takes L5 (B40, fourth hour) in: one lead, arrived at the first.
    target, other = lead_id(history, "l4@a.it"), lead_id(history, "l5@a.it")
    merged = history.post(f"/v1/leads/{target}/merge", json={"other_lead_id": other})
    assert merged.status_code == 200, merged.text
    body = history.get("/v1/reports/summary", params=PERIOD).json()
    assert body["leads"] == 4
    channels = {item["source"]: item["leads"] for item in body["channels"]}
    assert channels == {"paid_search": 2, "referral": 2}


def test_the_migration_copies_the_history_already_stored(
    history: TestClient, database_url: str
) -> None:
    """A database upgraded to 0007 with history in it reports the same as one that grew in it."""
    before = history.get("/v1/reports/summary", params=PERIOD).json()
    assert before["leads"] == 5
    engine = make_engine(database_url, poolclass=NullPool)
    try:
        with engine.begin() as connection:
            config = alembic_config(database_url)
            config.attributes["connection"] = connection
            command.downgrade(config, "0005_fresh_scores")
    finally:
        engine.dispose()
    upgrade_database(database_url)
    fresh = create_app(make_settings(database_url))
    with TestClient(fresh, headers={"Authorization": f"Bearer {TEST_ADMIN_KEY}"}) as again:
        after = again.get("/v1/reports/summary", params=PERIOD).json()
    assert after == before
