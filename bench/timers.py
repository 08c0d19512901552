"""The freshness sweep's cost grows with the leads that are due, not with all the leads.

Builds SQLite databases of N leads (one scored lead cloned N times with its scoring state, so
that building 100,000 leads takes seconds), marks a share of them due (``next_change_at`` in
the past, the rest in a month) and times the sweep (``refresh_due``) that re-scores the due
ones under both bundled rulesets, three times, keeping the fastest. Runs the same number of due leads among 10,000 and among
100,000 leads, and 1 % due of each, and prints wall-clock and process CPU time per due lead
and the ratios. Prints figures; asserts nothing.

    python bench/timers.py [--small 10000] [--large 100000] [--due-share 0.01]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session, sessionmaker

from leadscore_api.config import BUNDLED_RULES_DIR, Settings
from leadscore_api.ingest.events import CanonicalEvent
from leadscore_api.service.freshness import refresh_due
from leadscore_api.service.ingestion import run_ingest
from leadscore_api.service.rulesets import RulesetRegistry
from leadscore_api.storage.db import make_engine, make_session_factory
from leadscore_api.storage.migrate import upgrade_database
from leadscore_api.storage.models import Lead, LeadScore

CHUNK = 5_000
#: Sweeps timed per database (the same leads made due again each time); the fastest is kept,
#: so a cold page cache or another process's burst does not decide the figure.
REPEATS = 3


@dataclass
class Run:
    leads: int
    due: int
    wall: float
    cpu: float

    def line(self) -> str:
        per_wall = self.wall / max(self.due, 1) * 1000
        per_cpu = self.cpu / max(self.due, 1) * 1000
        return (
            f"{self.leads:>8,} leads {self.due:>6,} due: sweep {self.wall:7.3f} s wall,"
            f" {self.cpu:7.3f} s CPU; per due lead {per_wall:6.2f} ms wall, {per_cpu:6.2f} ms CPU"
        )


def template(factory: sessionmaker[Session], registry: RulesetRegistry) -> None:
    """One lead scored the ordinary way: a purchasing manager who read the pricing page."""
    now = datetime.now(UTC)
    event = CanonicalEvent.model_validate(
        {
            "id": "tpl-1",
            "type": "page.viewed",
            "occurred_at": (now - timedelta(days=1)).isoformat(),
            "lead": {"email": "template@example.it"},
            "properties": {"url": "https://example.it/prezzi"},
            "attributes": {
                "role": "Responsabile acquisti",
                "industry": "manifatturiero",
                "employees": 300,
                "annual_revenue_eur": 5_000_000,
                "region": "Lombardia",
            },
        }
    )
    run_ingest(factory, registry, [event])


def clone(factory: sessionmaker[Session], n_leads: int, n_due: int) -> None:
    """``n_leads`` copies of the template lead; the first ``n_due`` are due now."""
    now = datetime.now(UTC)
    with factory() as session:
        lead = session.scalars(select(Lead)).one()
        scores = list(session.scalars(select(LeadScore)))
        lead_row = {c.key: getattr(lead, c.key) for c in Lead.__table__.columns}
        score_rows = [
            {c.key: getattr(s, c.key) for c in LeadScore.__table__.columns} for s in scores
        ]
    with factory() as session, session.begin():
        session.query(LeadScore).delete()
        session.query(Lead).delete()
    for start in range(0, n_leads, CHUNK):
        leads: list[dict[str, Any]] = []
        rows: list[dict[str, Any]] = []
        for n in range(start, min(start + CHUNK, n_leads)):
            lead_id = f"lead_bench_{n:07d}"
            due = now - timedelta(minutes=5) if n < n_due else now + timedelta(days=30)
            leads.append({**lead_row, "id": lead_id, "email": None, "next_change_at": due})
            rows.extend({**row, "lead_id": lead_id} for row in score_rows)
        with factory() as session, session.begin():
            session.execute(insert(Lead), leads)
            session.execute(insert(LeadScore), rows)


def make_due(factory: sessionmaker[Session], n_due: int) -> None:
    """The first ``n_due`` cloned leads are due again (a sweep moved them a month on)."""
    due_ids = [f"lead_bench_{n:07d}" for n in range(n_due)]
    past = datetime.now(UTC) - timedelta(minutes=5)
    with factory() as session, session.begin():
        for start in range(0, len(due_ids), CHUNK):
            session.execute(
                update(Lead)
                .where(Lead.id.in_(due_ids[start : start + CHUNK]))
                .values(next_change_at=past)
            )


def measure(n_leads: int, n_due: int, workdir: Path) -> Run:
    url = f"sqlite:///{workdir / f'timers-{n_leads}-{n_due}.db'}"
    upgrade_database(url)
    settings = Settings(_env_file=None, database_url=url, rules_dir=BUNDLED_RULES_DIR)
    registry = RulesetRegistry.load(settings)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    try:
        template(factory, registry)
        clone(factory, n_leads, n_due)
        best: Run | None = None
        for _ in range(REPEATS):
            make_due(factory, n_due)
            now = datetime.now(UTC)
            wall, cpu = time.perf_counter(), time.process_time()
            looked_at = refresh_due(factory, registry, now)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            assert looked_at == n_due, (looked_at, n_due)
            if best is None or wall < best.wall:
                best = Run(n_leads, n_due, wall, cpu)
        assert best is not None
        return best
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--due-share", type=float, default=0.01)
    args = parser.parse_args()
    small_due = round(args.small * args.due_share)
    large_due = round(args.large * args.due_share)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        runs = {
            "small": measure(args.small, small_due, work),
            "large, same due": measure(args.large, small_due, work),
            "large": measure(args.large, large_due, work),
        }
    for name, run in runs.items():
        print(f"{name:>16}: {run.line()}")
    same_due = runs["large, same due"].wall / runs["small"].wall
    print(
        f"same {small_due:,} due leads among {args.large / args.small:.0f}× the leads:"
        f" sweep time ratio {same_due:.2f} (1.0 = independent of all leads)"
    )
    per_due = (runs["large"].wall / runs["large"].due) / (runs["small"].wall / runs["small"].due)
    print(
        f"{args.due_share:.0%} due of each: time per due lead ratio {per_due:.2f}"
        f" (sweep time grows with the due leads: {runs['large'].wall / runs['small'].wall:.1f}×)"
    )


if __name__ == "__main__":
    main()
