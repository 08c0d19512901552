"""The guide's worked examples hold on the bundled `pmi-letter-score` model, exactly.

Issue "Time and the lead-management procedure", item 6: the purchasing manager of a
1,200-employee manufacturer with 5 pricing visits and a white paper is A85, the HR manager of
the same company with one download is B50, a B2C lead meeting all four criteria can be A and
one meeting 3 of 4 is B. The arithmetic is in docs/guide-model.md.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from leadscore_api.scoring import LoadedRuleset, ScoreResult, ScoringEvent, load_rules_dir

RULES = Path(__file__).resolve().parents[2] / "rules"
AS_OF = datetime(2026, 6, 15, 10, 0, tzinfo=UTC)  # a Monday, 12:00 in Rome
DAY = timedelta(days=1)
HOUR = timedelta(hours=1)

#: The guide's company: 1,200 employees, a manufacturer. Its revenue is not stated; a firm of
#: that size is far above 1 M€, so the examples give it 5 M€ (the >1M band).
COMPANY: dict[str, Any] = {
    "employees": 1200,
    "industry": "manifatturiero",
    "annual_revenue_eur": 5_000_000,
}

B2C_FULL_MATCH: dict[str, Any] = {
    "segment": "b2c",
    "age": 34,
    "region": "Lombardia",
    "marital_status": "coniugata",
    "interests": ["automazione", "viaggi"],
}


@pytest.fixture(scope="module")
def model() -> LoadedRuleset:
    return load_rules_dir(RULES)["pmi-letter-score"]


def lead(attributes: dict[str, Any], at: datetime = AS_OF - 400 * DAY) -> ScoringEvent:
    return ScoringEvent("attrs", "lead.attributes_updated", at, {}, attributes)


def pricing_visit(n: int, at: datetime) -> ScoringEvent:
    return ScoringEvent(f"pricing-{n}", "page.viewed", at, {"url": "https://metalpro.it/prezzi"})


def download(n: int, at: datetime) -> ScoringEvent:
    return ScoringEvent(f"download-{n}", "content.downloaded", at, {"title": "white paper"})


def score(model: LoadedRuleset, events: list[ScoringEvent]) -> ScoreResult:
    return model.scorer.replay(events, AS_OF)[1]


def rules_applied(result: ScoreResult, component: str) -> dict[str, float]:
    rules = result.explanation["components"][component]["rules"]
    return {str(rule["rule"]): float(rule["points"]) for rule in rules}


def a85_events(role: str, days_ago: int = 0) -> list[ScoringEvent]:
    """The guide's A85 lead: 5 pricing visits on 5 different days, then a white paper."""
    end = AS_OF - days_ago * DAY
    visits = [pricing_visit(n, end - (n + 1) * DAY) for n in range(5)]
    return [lead({"role": role, **COMPANY}), *visits, download(1, end - HOUR)]


@pytest.mark.parametrize(
    "role", ["Responsabile acquisti", "purchasing manager", "PURCHASING MANAGER"]
)
def test_purchasing_manager_of_a_1200_employee_manufacturer_is_a85(
    model: LoadedRuleset, role: str
) -> None:
    result = score(model, a85_events(role))
    assert (result.letter, result.score) == ("A", 85)
    assert result.score_exact == 85
    assert result.components == {"fit": 50, "behaviour": 35}
    assert rules_applied(result, "fit") == {
        "role_buying_decision_maker": 15,
        "target_industry": 10,
        "employees_over_50": 10,
        "revenue_over_1m": 15,
    }
    assert rules_applied(result, "behaviour") == {
        "pricing_page_visit": 25,
        "white_paper_downloaded": 10,
    }
    assert result.stage == "mql"
    assert result.tier == "hot"
    assert result.next_action == "priority_contact"  # A × 50–89


def test_a85_does_not_fade_then_expires_after_90_days(model: LoadedRuleset) -> None:
    result = score(model, a85_events("Responsabile acquisti", days_ago=80))
    assert (result.letter, result.score, result.score_exact) == ("A", 85, 85)
    expired = score(model, a85_events("Responsabile acquisti", days_ago=180))
    assert (expired.letter, expired.score, expired.tier) == ("A", 50, "warm")


def test_pricing_visits_on_one_day_count_once(model: LoadedRuleset) -> None:
    morning = AS_OF - 2 * HOUR
    visits = [pricing_visit(n, morning + n * timedelta(minutes=10)) for n in range(5)]
    events = [
        lead({"role": "Responsabile acquisti", **COMPANY}),
        *visits,
        download(1, AS_OF - HOUR),
    ]
    result = score(model, events)
    assert result.components == {"fit": 50, "behaviour": 15}
    rules = result.explanation["components"]["behaviour"]["rules"]
    pricing = next(rule for rule in rules if rule["rule"] == "pricing_page_visit")
    assert (pricing["events_counted"], pricing["events_over_limit"]) == (1, 4)
    assert (result.letter, result.score) == ("A", 65)


@pytest.mark.parametrize(
    "role", ["HR manager", "hr MANAGER", "Responsabile risorse umane", "Direttore del personale"]
)
def test_hr_manager_of_the_same_company_with_one_download_is_b50(
    model: LoadedRuleset, role: str
) -> None:
    events = [lead({"role": role, **COMPANY}), download(1, AS_OF - HOUR)]
    result = score(model, events)
    assert (result.letter, result.score) == ("B", 50)
    assert result.score_exact == 50
    assert result.components == {"fit": 40, "behaviour": 10}
    assert rules_applied(result, "fit") == {
        "role_other_manager": 5,
        "target_industry": 10,
        "employees_over_50": 10,
        "revenue_over_1m": 15,
    }
    assert result.stage == "mql"
    assert result.tier == "warm"
    assert result.next_action == "mql"  # B × 50–89


@pytest.mark.parametrize(
    ("role", "points"),
    [
        ("CEO", 15),
        ("Amministratore delegato", 15),
        ("Titolare", 15),
        ("Owner", 15),
        ("Marketing Manager", 15),
        ("Responsabile marketing", 15),
        ("Direttrice acquisti", 15),
        ("Head of Procurement", 15),
        ("HR manager", 5),
        ("IT manager", 5),
        ("Direttore commerciale", 5),
        ("CFO", 5),
        ("Buyer", 0),
        ("Marketing specialist", 0),
        ("impiegato", 0),
    ],
)
def test_role_reading(model: LoadedRuleset, role: str, points: int) -> None:
    result = score(model, [lead({"role": role})])
    assert result.components["fit"] == points


def test_b2c_lead_meeting_all_four_criteria_is_a(model: LoadedRuleset) -> None:
    result = score(model, [lead(B2C_FULL_MATCH)])
    assert result.components == {"fit": 50, "behaviour": 0}
    assert rules_applied(result, "fit") == {
        "b2c_age_25_45": 10,
        "b2c_target_region": 10,
        "b2c_married_or_cohabiting": 10,
        "b2c_key_interests": 10,
        "b2c_full_match": 10,
    }
    assert (result.letter, result.score) == ("A", 50)
    assert result.stage == "mql"
    assert result.next_action == "priority_contact"


@pytest.mark.parametrize(
    "missing",
    [
        {"age": 52},
        {"region": "Sicilia"},
        {"marital_status": "nubile"},
        {"interests": ["viaggi"]},
    ],
)
def test_b2c_lead_meeting_three_of_four_is_b(model: LoadedRuleset, missing: dict[str, Any]) -> None:
    result = score(model, [lead({**B2C_FULL_MATCH, **missing})])
    assert result.components["fit"] == 30
    assert "b2c_full_match" not in rules_applied(result, "fit")
    assert (result.letter, result.score) == ("B", 30)
    assert result.next_action == "nurture"  # B × 0–49


def test_b2c_three_of_four_with_a_download_and_a_newsletter_is_a_b50_mql(
    model: LoadedRuleset,
) -> None:
    events = [
        lead({**B2C_FULL_MATCH, "interests": ["sport"]}),
        download(1, AS_OF - 2 * HOUR),
        ScoringEvent("news", "newsletter.subscribed", AS_OF - HOUR),
    ]
    result = score(model, events)
    assert (result.letter, result.score) == ("B", 50)
    assert result.stage == "mql"
    assert result.next_action == "mql"


def test_segment_selects_the_criteria_b2b_by_default(model: LoadedRuleset) -> None:
    b2b = {"role": "CEO", **COMPANY}
    b2c = {key: value for key, value in B2C_FULL_MATCH.items() if key != "segment"}
    both = {**b2b, **b2c}
    assert score(model, [lead(both)]).components["fit"] == 50  # absent: B2B
    assert score(model, [lead({**both, "segment": "b2b"})]).components["fit"] == 50
    b2c_result = score(model, [lead({**both, "segment": " B2C "})])
    assert b2c_result.components["fit"] == 50
    assert set(rules_applied(b2c_result, "fit")) == {
        "b2c_age_25_45",
        "b2c_target_region",
        "b2c_married_or_cohabiting",
        "b2c_key_interests",
        "b2c_full_match",
    }
    # B2B criteria never apply to a B2C lead, nor B2C criteria to a B2B one.
    assert score(model, [lead({**b2b, "segment": "b2c"})]).components["fit"] == 0
    assert score(model, [lead(b2c)]).components["fit"] == 0


def test_b2c_behaviour_has_no_fit_gate_but_b2b_behaviour_does(model: LoadedRuleset) -> None:
    outsider = {"segment": "b2c", "age": 70, "region": "Sicilia"}
    b2c = score(model, [lead(outsider), download(1, AS_OF - HOUR)])
    assert b2c.components == {"fit": 0, "behaviour": 10}
    b2b = score(model, [lead({"role": "HR manager", "employees": 80}), download(1, AS_OF - HOUR)])
    assert b2b.components == {"fit": 15, "behaviour": 0}
