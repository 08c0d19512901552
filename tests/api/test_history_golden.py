"""History rows store the inputs of their explanation and render it when read: every answer
that shows an explanation is the same text, byte for byte, as before the change (see
``history_golden.py``), on SQLite and on PostgreSQL, and rows written before the change (the
explanation itself) are served as they are, next to new ones."""

from __future__ import annotations

import gzip
import json
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session, sessionmaker
from tests.api.helpers import BIG_MANUFACTURER, event
from tests.api.history_golden import FIXTURE, run, settings_for
from tests.conftest import TEST_ADMIN_KEY

from leadscore_api.service import explanations
from leadscore_api.service.rulesets import RulesetRegistry
from leadscore_api.storage.base import as_read_back
from leadscore_api.storage.models import Lead, ScoreChange

EXPECTED: dict[str, Any] = json.loads(gzip.decompress(FIXTURE.read_bytes()))


def _expected(database_url: str) -> dict[str, Any]:
    backend = "postgresql" if database_url.startswith("postgresql") else "sqlite"
    answers: dict[str, Any] = EXPECTED[backend]
    return answers


def _assert_same_history(answers: dict[str, Any], expected: dict[str, Any]) -> None:
    assert answers["history"].keys() == expected["history"].keys()
    for lead, text in expected["history"].items():
        assert answers["history"][lead] == text, lead


def test_answers_are_the_texts_the_code_before_gave(database_url: str) -> None:
    stored_forms: list[bool] = []

    def look(factory: sessionmaker[Session], registry: RulesetRegistry) -> None:
        with factory() as session:
            for stored in session.scalars(select(ScoreChange.explanation)):
                stored_forms.append(explanations.is_inputs(stored))

    answers = run(settings_for(database_url), look)
    assert len(stored_forms) > 300 and all(stored_forms)
    expected = _expected(database_url)
    _assert_same_history(answers, expected)
    assert answers["explain"] == expected["explain"]
    assert answers["webhooks"] == expected["webhooks"]


def test_rows_that_store_the_explanation_itself_are_served_as_stored(database_url: str) -> None:
    def to_old_form(factory: sessionmaker[Session], registry: RulesetRegistry) -> None:
        """Every other row holds its explanation, as the code before the change wrote it."""
        with factory.begin() as session:
            rows = session.execute(
                select(
                    ScoreChange.id,
                    ScoreChange.ruleset_name,
                    ScoreChange.ruleset_sha256,
                    ScoreChange.explanation,
                ).where(ScoreChange.id % 2 == 0)
            ).all()
            for change_id, name, sha256, stored in rows:
                explained = explanations.render(session, registry, name, sha256, stored)
                assert not explanations.is_inputs(explained)
                session.execute(
                    update(ScoreChange)
                    .where(ScoreChange.id == change_id)
                    .values(explanation=explained)
                )

    _assert_same_history(run(settings_for(database_url), to_old_form), _expected(database_url))


def test_the_dashboards_lead_page_shows_the_rendered_explanation(client: TestClient) -> None:
    response = client.post(
        "/v1/events", json=event("form.submitted", id="dash-1", attributes=BIG_MANUFACTURER)
    )
    assert response.status_code == 200, response.text
    lead_id = response.json()["results"][0]["lead_id"]
    signed_in = client.post(
        "/dashboard/login",
        data={"key": TEST_ADMIN_KEY},
        headers={"Origin": "http://testserver"},
        follow_redirects=False,
    )
    assert signed_in.status_code == 303, signed_in.text
    page = client.get(f"/dashboard/leads/{lead_id}")
    assert page.status_code == 200, page.text
    changes = page.text[page.text.index('id="changes"') :]
    assert "sum of components, clamped to 0–100, rounded half up" in changes
    assert "owner_rule" not in changes and "tier_since" not in changes


def test_a_value_built_when_read_has_the_form_the_column_gives_back(
    session_factory: sessionmaker[Session],
) -> None:
    """``as_read_back`` on PostgreSQL is ``jsonb``'s key order and decimals; on SQLite, as is."""
    value = {
        "zeta": 1,
        "b": {"ü": -0.0, "aa": 1e16, "a": [2.5e-7, -1.5e16, 3.0, {"yy": None, "x": True}]},
        "ab": "é",
        "é": 12345678901234567.0,
    }
    with session_factory.begin() as session:
        session.execute(
            insert(Lead), [{"id": "lead_j", "attributes": value, "components": {}, "models": {}}]
        )
    with session_factory() as session:
        stored = session.scalar(select(Lead.attributes).where(Lead.id == "lead_j"))
        dialect = session.get_bind().dialect.name
    expected = as_read_back(value, dialect)
    assert json.dumps(expected) == json.dumps(stored)
    assert (json.dumps(expected) == json.dumps(value)) is (dialect == "sqlite")


def test_a_row_that_cannot_be_rendered_says_so_and_the_history_stays_readable(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    posted = client.post(
        "/v1/events", json=event("form.submitted", id="norender-1", attributes=BIG_MANUFACTURER)
    )
    lead_id = posted.json()["results"][0]["lead_id"]
    with session_factory.begin() as session:
        first, second = session.scalars(
            select(ScoreChange).where(ScoreChange.lead_id == lead_id).order_by(ScoreChange.id)
        ).all()[:2]
        first.ruleset_sha256 = "0" * 64  # a version that was never stored
        second.explanation = {**second.explanation, "actions": [["not", "actions"]]}
    history = client.get(f"/v1/leads/{lead_id}/history")
    assert history.status_code == 200, history.text
    shown = [item["explanation"] for item in history.json()["items"][:2]]
    assert shown == [
        {"unavailable": explanations.UNAVAILABLE},
        {"unavailable": explanations.NOT_RENDERED},
    ]
