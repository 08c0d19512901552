"""Re-scoring every lead after an activation: leads and events per second, with progress.

Builds a SQLite database of N leads, each a clone of one lead scored the ordinary way from
EVENTS stored events (its rows in ``leads``, ``lead_scores`` and ``events`` copied, so building
100,000 leads takes a minute, not an hour), activates a new version of the primary bundled
ruleset (the webinar weight recalibrated, as the guide suggests), and times the re-score job
(``leadscore rules rescore``'s loop: chunks of leads, each one transaction that replays their
stored events under the new text). Prints wall-clock and process CPU time, leads and events per
second. Asserts only that every lead was done.

    python bench/rescore.py [--leads 100000] [--events 10] [--chunk 200]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.orm import Session, sessionmaker

from leadscore_api.config import BUNDLED_RULES_DIR, Settings
from leadscore_api.ingest.events import CanonicalEvent
from leadscore_api.scoring.loader import load_rules_dir
from leadscore_api.service import jobs
from leadscore_api.service.ingestion import run_ingest
from leadscore_api.service.rulesets import RulesetRegistry, record_rulesets, store_folder
from leadscore_api.storage.db import make_engine, make_session_factory
from leadscore_api.storage.migrate import upgrade_database
from leadscore_api.storage.models import Event, Lead, LeadScore
from leadscore_api.storage.unit_of_work import in_transaction

CHUNK = 5_000
KINDS = ["page.viewed", "email.opened", "content.downloaded", "webinar.attended", "email.clicked"]


def template(factory: sessionmaker[Session], registry: RulesetRegistry, n_events: int) -> None:
    now = datetime.now(UTC)
    events = [
        CanonicalEvent.model_validate(
            {
                "id": f"tpl-{i}",
                "type": KINDS[i % len(KINDS)],
                "occurred_at": (now - timedelta(days=n_events - i)).isoformat(),
                "lead": {"email": "template@example.it"},
                "properties": {"url": "https://example.it/prezzi"},
                "attributes": {
                    "role": "Responsabile acquisti",
                    "industry": "manifatturiero",
                    "employees": 300,
                    "annual_revenue_eur": 5_000_000,
                }
                if i == 0
                else {},
            }
        )
        for i in range(n_events)
    ]
    run_ingest(factory, registry, events)


def clone(factory: sessionmaker[Session], n_leads: int) -> int:
    """``n_leads`` copies of the template lead with its events; returns the events stored."""
    with factory() as session:
        lead = session.scalars(select(Lead)).one()
        lead_row = {c.key: getattr(lead, c.key) for c in Lead.__table__.columns}
        score_rows = [
            {c.key: getattr(s, c.key) for c in LeadScore.__table__.columns}
            for s in session.scalars(select(LeadScore))
        ]
        event_rows = [
            {c.key: getattr(e, c.key) for c in Event.__table__.columns}
            for e in session.scalars(select(Event))
        ]
    with factory() as session, session.begin():
        session.query(Event).delete()
        session.query(LeadScore).delete()
        session.query(Lead).delete()
    for start in range(0, n_leads, CHUNK):
        leads: list[dict[str, Any]] = []
        scores: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        for n in range(start, min(start + CHUNK, n_leads)):
            lead_id = f"lead_bench_{n:07d}"
            leads.append({**lead_row, "id": lead_id, "email": None})
            scores.extend({**row, "lead_id": lead_id} for row in score_rows)
            events.extend(
                {**row, "lead_id": lead_id, "id": f"{row['id']}-{n}"} for row in event_rows
            )
        with factory() as session, session.begin():
            session.execute(insert(Lead), leads)
            session.execute(insert(LeadScore), scores)
            session.execute(insert(Event), events)
    return n_leads * len(event_rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=10)
    parser.add_argument("--chunk", type=int, default=jobs.DEFAULT_CHUNK)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rules = work / "rules"
        shutil.copytree(BUNDLED_RULES_DIR, rules)
        url = f"sqlite:///{work / 'rescore.db'}"
        upgrade_database(url)
        settings = Settings(_env_file=None, database_url=url, rules_dir=rules)
        registry = RulesetRegistry.load(settings)
        engine = make_engine(url)
        factory = make_session_factory(engine)
        try:
            in_transaction(factory, lambda s: record_rulesets(s, registry))
            template(factory, registry, args.events)
            built = time.perf_counter()
            n_events = clone(factory, args.leads)
            print(
                f"built {args.leads:,} leads, {n_events:,} events"
                f" in {time.perf_counter() - built:.1f} s",
                file=sys.stderr,
            )
            # The guide's recalibration: webinar from +10 to +12, a new version.
            primary = rules / "pmi-letter-score.yaml"
            text = primary.read_text(encoding="utf-8")
            loaded = registry.primary
            text = text.replace(f"version: {loaded.version}", f"version: {loaded.version + 1}", 1)
            primary.write_text(text + "\n# webinar recalibrated\n", encoding="utf-8")
            in_transaction(factory, lambda s: store_folder(s, load_rules_dir(rules)))
            job = in_transaction(factory, lambda s: jobs.create_rescore(s, reason="bench"))
            owner = jobs.worker_name()
            claimed = jobs.claim(factory, owner, job.id)
            assert claimed is not None
            step = max(1, args.leads // 10)
            shown = [0]

            def progress(view: jobs.JobView) -> None:
                if view.done - shown[0] >= step or (view.finished and view.done > shown[0]):
                    shown[0] = view.done
                    print(f"  {view.done:,}/{view.total:,} leads", file=sys.stderr)

            wall, cpu = time.perf_counter(), time.process_time()
            final = jobs.run_job(
                factory, registry, claimed, owner, chunk_size=args.chunk, on_progress=progress
            )
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            assert final.status == "done" and final.done == args.leads, final
        finally:
            engine.dispose()
    print(
        f"re-score of {args.leads:,} leads ({n_events:,} stored events, {len(registry.ordered())}"
        f" rulesets, chunks of {args.chunk}): {wall:.1f} s wall, {cpu:.1f} s CPU;"
        f" {args.leads / wall:,.0f} leads/s, {n_events / wall:,.0f} events/s"
    )


if __name__ == "__main__":
    main()
