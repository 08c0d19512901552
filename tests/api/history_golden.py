"""What the read paths answered about generated leads before explanations were stored as inputs.

History rows used to store the explanation the core built when the row was written; they now
store the few values it is built from and render it when read. This scenario ingests the
generated leads of ``tests/core/golden.py`` through the service (batches, events arriving late,
a sweep that records changes time made, webhook subscriptions) and collects the text of every
answer that shows an explanation: ``GET /v1/leads/{id}/history``, ``explain`` and the queued
webhook payloads. ``history_golden.json.gz`` holds those texts as the code before the change
wrote them, per backend (PostgreSQL's ``jsonb`` orders keys its own way); regenerate it only
from that code: ``python -m tests.api.history_golden [POSTGRES_URL]``.
"""

from __future__ import annotations

import gzip
import json
import re
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from tests.core.golden import make_leads

from leadscore_api.api.leads import ExplainOut
from leadscore_api.app import create_app
from leadscore_api.config import BUNDLED_RULES_DIR, Settings
from leadscore_api.ingest.parsing import IngestItem, parse_body
from leadscore_api.scoring import ScoringEvent
from leadscore_api.service import leads as leads_service
from leadscore_api.service.freshness import refresh_due
from leadscore_api.service.ingestion import EventResult, ingest_events
from leadscore_api.service.rulesets import RulesetRegistry
from leadscore_api.storage.delivery_models import OutboxMessage
from leadscore_api.storage.migrate import upgrade_database
from leadscore_api.storage.unit_of_work import in_transaction

FIXTURE = Path(__file__).with_name("history_golden.json.gz")
ADMIN = "golden-admin-key"
#: Leads of the generated set, and how many events go in one request.
LEADS = 36
BATCH = 40
#: Every how many events of a lead one is held back and sent at the end (late: a replay).
LATE_EVERY = 7


def _event(lead: int, event: ScoringEvent) -> dict[str, Any]:
    return {
        "id": event.id,
        "type": event.type,
        "occurred_at": event.occurred_at.isoformat().replace("+00:00", "Z"),
        "lead": {"email": f"lead{lead}@golden.example"},
        "properties": event.properties,
        "attributes": event.attributes,
    }


def run(
    settings: Settings,
    before_reading: Callable[[sessionmaker[Session], RulesetRegistry], None] | None = None,
) -> dict[str, Any]:
    """Run the scenario on a migrated, empty database; the answers' texts, lead ids replaced.

    ``before_reading`` is called once everything is written, before the answers are read.
    """
    upgrade_database(settings.database_url)
    app = create_app(settings)
    headers = {"Authorization": f"Bearer {ADMIN}"}
    with TestClient(app, base_url="http://testserver", headers=headers) as client:
        created = client.post(
            "/v1/subscriptions", json={"url": "http://127.0.0.1:9/hook", "event_types": ["*"]}
        )
        assert created.status_code == 201, created.text
        registry = app.state.registry.snapshot()
        factory = app.state.session_factory
        in_order: list[tuple[ScoringEvent, int]] = []
        late: list[tuple[ScoringEvent, int]] = []
        for lead, events in enumerate(make_leads()[:LEADS]):
            for position, event in enumerate(sorted(events, key=lambda e: (e.occurred_at, e.id))):
                held = position % LATE_EVERY == LATE_EVERY - 1
                (late if held else in_order).append((event, lead))
        in_order.sort(key=lambda pair: (pair[0].occurred_at, pair[0].id))
        last = max(event.occurred_at for event, _ in in_order + late)
        batches = [(in_order[i : i + BATCH], False) for i in range(0, len(in_order), BATCH)]
        batches += [(late[i : i + BATCH], True) for i in range(0, len(late), BATCH)]
        for batch, is_late in batches:
            newest = last if is_late else max(event.occurred_at for event, _ in batch)
            now = newest + timedelta(seconds=1)
            items, _ = parse_body({"events": [_event(lead, e) for e, lead in batch]}, 1000)

            def ingest(
                session: Session, items: list[IngestItem] = items, now: datetime = now
            ) -> list[EventResult]:
                return ingest_events(session, registry, items, now=now)

            results = in_transaction(factory, ingest)
            assert all(r.status == "accepted" for r in results), results
        for days in (3, 30, 120):
            refresh_due(factory, registry, last + timedelta(days=days))

        if before_reading is not None:
            before_reading(factory, registry)
        ids: dict[str, str] = {}
        for lead in range(LEADS):
            found = client.get("/v1/leads", params={"email": f"lead{lead}@golden.example"})
            ids[found.json()["items"][0]["id"]] = f"L{lead}"
        answers: dict[str, Any] = {"history": {}, "explain": {}}
        explain_at = last + timedelta(days=1)
        for lead_id, name in ids.items():
            history = client.get(f"/v1/leads/{lead_id}/history", params={"limit": 500})
            assert history.status_code == 200, history.text
            answers["history"][name] = _named(history.text, ids)
            with factory() as session:
                explained = leads_service.explain(session, registry, lead_id, now=explain_at)
            text = ExplainOut.model_validate(explained).model_dump_json()
            answers["explain"][name] = _named(text, ids)
        with factory() as session:
            messages = [
                (m.lead_id or "", m.event_type, m.event_id or "", json.dumps(m.payload["data"]))
                for m in session.scalars(select(OutboxMessage))
            ]
        answers["webhooks"] = sorted(
            [ids.get(lead_id, lead_id), kind, event_id, _named(data, ids)]
            for lead_id, kind, event_id, data in messages
        )
    app.state.engine.dispose()
    return answers


def _named(text: str, ids: dict[str, str]) -> str:
    """``text`` with lead ids (random) and history row ids (in the order the sweep met the
    leads, by id) replaced by stable names."""
    for lead_id, name in ids.items():
        text = text.replace(lead_id, name)
    return re.sub(r'\{"id":\d+,"changed_at"', '{"id":0,"changed_at"', text)


def settings_for(database_url: str) -> Settings:
    return Settings(
        _env_file=None,
        database_url=database_url,
        rules_dir=BUNDLED_RULES_DIR,
        admin_api_key=ADMIN,
        webhook_allow_private_targets=True,
        run_worker=False,
        sync_rep_directory=False,
        dashboard_cache_seconds=0,
    )


def _write(pg_url: str | None) -> None:
    fixture: dict[str, Any] = {"generated": datetime.now(UTC).isoformat()}
    with tempfile.TemporaryDirectory() as folder:
        fixture["sqlite"] = run(settings_for(f"sqlite:///{folder}/golden.db"))
    if pg_url:
        from tests.conftest import reset_postgres

        reset_postgres(pg_url)
        fixture["postgresql"] = run(settings_for(pg_url))
    FIXTURE.write_bytes(gzip.compress(json.dumps(fixture, ensure_ascii=False).encode(), 9))


if __name__ == "__main__":
    _write(sys.argv[1] if len(sys.argv) > 1 else None)
