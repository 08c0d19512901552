"""Late events replay from the nearest snapshot of the state, with the same result as in order."""

from __future__ import annotations

import random
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from tests.api.helpers import BIG_MANUFACTURER, event

from leadscore_api.service.scoring import SNAPSHOT_EVERY
from leadscore_api.storage.models import LeadScore
from leadscore_api.storage.snapshot_models import ScoreSnapshot

TYPES = ["page.viewed", "email.opened", "email.clicked", "content.downloaded", "email.delivered"]


def _history(prefix: str, email: str, n: int, seed: int = 3) -> list[dict[str, Any]]:
    """``n`` events a minute apart (ids keep the position: ``prefix-0007``)."""
    rng = random.Random(seed)
    events = [
        event(
            "form.submitted",
            id=f"{prefix}-0000",
            email=email,
            minutes=0,
            attributes=BIG_MANUFACTURER,
        )
    ]
    for k in range(1, n):
        events.append(
            event(
                rng.choice(TYPES),
                id=f"{prefix}-{k:04d}",
                email=email,
                minutes=k,
                properties={"url": "https://x.it/pricing" if k % 5 == 0 else "/blog"},
            )
        )
    return events


def _post(client: TestClient, events: list[dict[str, Any]]) -> str:
    lead_id = ""
    for start in range(0, len(events), 100):
        response = client.post("/v1/events", json={"events": events[start : start + 100]})
        assert response.status_code == 200, response.text
        results = response.json()["results"]
        assert {r["status"] for r in results} == {"accepted"}, results
        lead_id = results[0]["lead_id"]
    return lead_id


def _snapshots(factory: sessionmaker[Session], lead_id: str) -> dict[tuple[str, int], str]:
    """(ruleset, events held) → position of the last event folded in."""
    with factory() as session:
        rows = session.execute(
            select(
                ScoreSnapshot.ruleset_name, ScoreSnapshot.n_events, ScoreSnapshot.event_id
            ).where(ScoreSnapshot.lead_id == lead_id)
        )
        return {(name, n): event_id.split("-")[-1] for name, n, event_id in rows}


def _scores(factory: sessionmaker[Session], lead_id: str) -> dict[str, tuple[Any, ...]]:
    with factory() as session:
        rows = session.scalars(select(LeadScore).where(LeadScore.lead_id == lead_id))
        out = {}
        for row in rows:
            summary = {k: v for k, v in row.summary.items() if k != "assignee"}
            out[row.ruleset_name] = (summary, row.state["n_events"])
        return out


def test_a_late_event_gives_the_same_score_as_the_same_events_in_order(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    n = 2 * SNAPSHOT_EVERY + 50
    late_position = SNAPSHOT_EVERY + 30  # between the first and second snapshot
    history = _history("a", "late@x.it", n)
    late = history.pop(late_position)
    lead = _post(client, history)
    taken = _snapshots(session_factory, lead)
    assert {k for _, k in taken} == {SNAPSHOT_EVERY, 2 * SNAPSHOT_EVERY}
    assert len(taken) == 2 * len({name for name, _ in taken})  # each ruleset, both points

    response = client.post("/v1/events", json=late)
    assert response.status_code == 200 and response.json()["results"][0]["status"] == "accepted"

    twin = _post(client, _history("b", "twin@x.it", n))
    assert _scores(session_factory, lead) == _scores(session_factory, twin)
    # The snapshot after the late event was taken again at the same positions as the twin's.
    assert _snapshots(session_factory, lead) == _snapshots(session_factory, twin)


def test_an_event_older_than_every_snapshot_replays_from_the_start_correctly(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    n = SNAPSHOT_EVERY + 20
    history = _history("c", "old@x.it", n, seed=9)
    early = history.pop(5)
    lead = _post(client, history)
    assert client.post("/v1/events", json=early).status_code == 200
    twin = _post(client, _history("d", "oldtwin@x.it", n, seed=9))
    assert _scores(session_factory, lead) == _scores(session_factory, twin)
    assert _snapshots(session_factory, lead) == _snapshots(session_factory, twin)


def test_erasing_a_lead_erases_its_snapshots(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    lead = _post(client, _history("e", "gone@x.it", SNAPSHOT_EVERY + 1))
    assert _snapshots(session_factory, lead)
    response = client.delete(f"/v1/leads/{lead}")
    assert response.status_code in (200, 204), response.text
    assert _snapshots(session_factory, lead) == {}
