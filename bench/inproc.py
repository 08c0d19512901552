"""CPU time per ingested event in process: the service's write path without HTTP or a client.

    python bench/inproc.py [--batch 100] [--batches 40] [--leads 2000] [--database-url URL]
                           [--sections]

The same events as ``bench/ingest.py`` (each lead's first event a form with attributes, then
``page.viewed``/``email.*``/``content.downloaded`` events in time order, lead ``n % leads``), run
through ``ingest_events`` in one transaction per request as the group-commit writer does. It
prints the process CPU time (``time.process_time``) per event of the timed requests: on a
machine shared with other work, CPU time compares two versions of the code far better than the
wall clock. Runs on a fresh SQLite file unless ``--database-url`` names a scratch PostgreSQL
database (its schema ``public`` is dropped and recreated first). Asserts nothing.

``--sections`` also prints the CPU per event of each step of the write path (the repository
calls, the scoring, the writes, parsing, and the transaction's begin and commit), timed with
``time.process_time`` around each call over the timed requests, with the served process's
garbage-collector settings (``runtime.py``). The steps nest: ``pending writes`` holds the
``write_*``/``insert_history`` lines; ``ingest_events`` holds all but parsing and the
transaction.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import String, cast, create_engine, func, select, text
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from ingest import seed_event
from leadscore_api import runtime
from leadscore_api.app import create_app
from leadscore_api.config import BUNDLED_RULES_DIR, Settings
from leadscore_api.ingest.parsing import parse_body
from leadscore_api.service import ingestion, scoring
from leadscore_api.service.ingestion import EventResult, ingest_events
from leadscore_api.storage.migrate import upgrade_database
from leadscore_api.storage.models import ScoreChange
from leadscore_api.storage.repositories import leads as leads_repo
from leadscore_api.storage.repositories import timers as timers_repo
from leadscore_api.storage.unit_of_work import in_transaction

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
TYPES = [
    "page.viewed",
    "email.opened",
    "email.delivered",
    "page.viewed",
    "email.clicked",
    "email.opened",
    "page.viewed",
    "content.downloaded",
]


class Sections:
    """CPU seconds spent in named calls while ``on``: functions wrapped where they are looked up
    (module attributes), so the service's code is measured unchanged."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.on = False

    def wrap(self, owner: Any, name: str, label: str) -> None:
        inner = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            if not self.on:
                return inner(*args, **kwargs)
            start = time.process_time()
            try:
                return inner(*args, **kwargs)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.process_time() - start

        setattr(owner, name, timed)

    def install(self) -> None:
        """The steps of ``ingest_events``, by the names it calls them by."""
        for name in ("lookup", "lock_leads", "load_scores", "insert_events"):
            self.wrap(leads_repo, name, name)
        for name in ("write_leads", "write_scores", "insert_history"):
            self.wrap(leads_repo, name, f"  {name}")
        self.wrap(timers_repo, "write_timers", "  write_timers")
        self.wrap(ingestion, "score_lead", "score_lead (scoring, explanations, history rows)")
        self.wrap(ingestion, "_screen_erased", "erasure tombstone check")
        self.wrap(scoring.PendingWrites, "write", "pending writes")


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--leads", type=int, default=2000)
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--sections", action="store_true", help="CPU per step of the write path")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        url = args.database_url or f"sqlite:///{folder}/inproc.db"
        if url.startswith("postgresql"):
            engine = create_engine(url, poolclass=NullPool)
            with engine.begin() as conn:
                conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
                conn.execute(text("CREATE SCHEMA public"))
            engine.dispose()
        run(url, args)


def run(url: str, args: argparse.Namespace) -> None:
    settings = Settings(
        _env_file=None,
        database_url=url,
        rules_dir=BUNDLED_RULES_DIR,
        admin_api_key="inproc-admin",
        run_worker=False,
        sync_rep_directory=False,
    )
    upgrade_database(url)
    app = create_app(settings)
    sections = Sections()
    if args.sections:
        sections.install()
    with TestClient(app):
        factory = app.state.session_factory
        registry = app.state.registry.snapshot()
        start = datetime.now(UTC) - timedelta(days=1)

        postgres = url.startswith("postgresql")

        def ingest(events: list[dict[str, Any]], now: datetime) -> float:
            """Ingest in one transaction; the PostgreSQL server process's CPU seconds for it."""
            started = time.process_time()
            items, _ = parse_body({"events": events}, 10_000)
            parsed = time.process_time()
            backend: dict[str, Any] = {}
            inside = [0.0]

            def work(session: Session) -> list[EventResult]:
                if postgres:
                    backend["pid"] = session.scalar(text("SELECT pg_backend_pid()"))
                    backend["cpu"] = _proc_cpu(backend["pid"])
                begun = time.process_time()
                try:
                    return ingest_events(session, registry, items, now=now)
                finally:
                    inside[0] += time.process_time() - begun

            results = in_transaction(factory, work)
            if sections.on:
                done = time.process_time()
                for label, seconds in (
                    ("parse the request's events", parsed - started),
                    ("ingest_events", inside[0]),
                    ("session, BEGIN, COMMIT", done - parsed - inside[0]),
                ):
                    sections.seconds[label] = sections.seconds.get(label, 0.0) + seconds
            assert all(r.status == "accepted" for r in results), results[:3]
            if not postgres or backend["cpu"] is None:
                return 0.0
            start_cpu: float = backend["cpu"]
            return (_proc_cpu(backend["pid"]) or start_cpu) - start_cpu

        for first in range(0, args.leads, 100):
            ingest(
                [seed_event(n, start) for n in range(first, min(first + 100, args.leads))],
                start + timedelta(seconds=1),
            )
        with factory() as session:
            rows_before = session.scalar(select(func.count()).select_from(ScoreChange)) or 0
        counter = 0
        per_event: list[float] = []
        server_cpu = 0.0
        for number in range(args.warmup + args.batches):
            events = []
            for _ in range(args.batch):
                counter += 1
                events.append(
                    {
                        "id": f"w-{counter}",
                        "type": TYPES[counter % len(TYPES)],
                        "occurred_at": _iso(start + timedelta(seconds=10 + counter / 1000)),
                        "lead": {"email": f"lead{counter % args.leads}@bench.example"},
                        "source": "bench",
                        "properties": {
                            "url": "https://example.it/"
                            + ("prezzi" if counter % 4 == 0 else "blog")
                        },
                    }
                )
            now = start + timedelta(seconds=11 + counter / 1000)
            if number == args.warmup and args.sections:
                # The served process's collector settings (runtime.freeze_startup_objects).
                gc.collect()
                gc.freeze()
                gc.set_threshold(runtime.YOUNG_GENERATION_THRESHOLD, *gc.get_threshold()[1:])
                sections.on = True
            cpu = time.process_time()
            server = ingest(events, now)
            if number >= args.warmup:
                per_event.append((time.process_time() - cpu) / args.batch * 1e6)
                server_cpu += server
        with factory() as session:
            rows = session.scalar(select(func.count()).select_from(ScoreChange)) or 0
            size = session.scalar(
                select(func.avg(func.length(cast(ScoreChange.explanation, String))))
            )
    app.state.engine.dispose()
    events_timed = (args.warmup + args.batches) * args.batch
    print(
        f"{url.split(':')[0]}: requests of {args.batch} events, {args.batches} timed:"
        f" {statistics.median(per_event):.0f} µs of CPU per event (median of requests;"
        f" mean {statistics.fmean(per_event):.0f}), history rows per event"
        f" {(rows - rows_before) / events_timed:.2f}, explanation column"
        f" {float(size or 0):.0f} characters on average"
    )
    if url.startswith("postgresql"):
        print(
            f"  PostgreSQL server process: {server_cpu / (args.batches * args.batch) * 1e6:.0f} µs"
            " of CPU per event (/proc, clock ticks)"
        )
    if args.sections:
        timed = args.batches * args.batch
        print("  CPU per event by step (the indented lines are part of the line above them):")
        order = [
            "parse the request's events",
            "session, BEGIN, COMMIT",
            "ingest_events",
            "lookup",
            "erasure tombstone check",
            "lock_leads",
            "insert_events",
            "load_scores",
            "score_lead (scoring, explanations, history rows)",
            "pending writes",
            "  write_leads",
            "  write_scores",
            "  insert_history",
            "  write_timers",
        ]
        for label in order:
            if label in sections.seconds:
                print(f"    {label:<52} {sections.seconds[label] / timed * 1e6:7.1f} µs")


def _proc_cpu(pid: int) -> float | None:
    """User + system CPU seconds of a local process, or None when it is not visible here."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


if __name__ == "__main__":
    main()
