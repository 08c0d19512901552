"""A backtest of 1,000,000 stored events over 100,000 leads, on SQLite.

Builds a database (migrated, then events inserted in bulk with ``sqlite3``, not through the
API: the ingest path is measured by ``bench/ingest.py``), with the funnel mix of
``bench/engine.py`` over 90 days and CRM outcomes that follow a rule (leads that attended a
webinar and visited the pricing page mostly become opportunities). Then times
``service.backtest.run_backtest`` of a candidate (the bundled ``pmi-letter-score`` with the
webinar at +12 and SQL at 80) against the bundled one: wall-clock, CPU time of this process
and of the worker processes, events per second. ``--profile`` runs the replay in this process
under cProfile and prints where the time goes. Prints figures; asserts nothing.

    python bench/backtest.py [--events 1000000] [--leads 100000] [--workers 2] [--db PATH]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import random
import resource
import sqlite3
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from engine import INDUSTRIES, MIX, ROLES, URLS
from leadscore_api.scoring import load_ruleset_file, load_ruleset_text
from leadscore_api.service import backtest as service
from leadscore_api.storage.db import make_engine, make_session_factory
from leadscore_api.storage.migrate import upgrade_database

RULES = Path(__file__).resolve().parent.parent / "rules"
START = datetime(2026, 7, 1, tzinfo=UTC)
END = datetime(2026, 11, 1, tzinfo=UTC)


def _stamp(moment: datetime) -> str:
    # SQLAlchemy's storage format for DateTime on SQLite (naive UTC).
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")


def build(path: Path, n_events: int, n_leads: int, seed: int = 11) -> int:
    """Create and fill the database; returns the number of events stored."""
    url = f"sqlite:///{path}"
    upgrade_database(url)
    rng = random.Random(seed)
    types = [t for t, _, _ in MIX]
    weights = [w for _, w, _ in MIX]
    props = {t: p for t, _, p in MIX}
    now = _stamp(datetime.now(UTC))
    per_lead = max(1, n_events // n_leads)
    con = sqlite3.connect(path)
    con.execute("PRAGMA synchronous=OFF")
    leads: list[tuple[str, str, str, str, str, str]] = []
    rows: list[tuple[str, str, str, int, str, str, str, str, str]] = []
    stored = 0

    def flush() -> None:
        con.executemany(
            "INSERT INTO leads (id, attributes, components, models, created_at, updated_at,"
            " score, stage, version) VALUES (?, ?, ?, ?, ?, ?, 0, 'lead', 1)",
            leads,
        )
        con.executemany(
            "INSERT INTO events (id, lead_id, type, known_type, occurred_at, received_at, source,"
            " properties, attributes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        leads.clear()
        rows.clear()

    for lead_no in range(n_leads):
        lead_id = f"lead_{lead_no:07d}"
        leads.append((lead_id, "{}", "{}", "{}", now, now))
        first = START + timedelta(seconds=rng.uniform(0, 60 * 86400))
        attributes = {
            "role": rng.choice(ROLES),
            "industry": rng.choice(INDUSTRIES),
            "employees": rng.choice([5, 30, 120, 1200]),
            "annual_revenue_eur": rng.choice([200_000, 800_000, 3_000_000]),
        }
        timeline: list[tuple[datetime, str, dict[str, object], dict[str, object]]] = [
            (first, "form.submitted", {}, attributes)
        ]
        # Outcomes are events too: reserve one slot for a possible opportunity.
        for _ in range(per_lead - 2):
            kind = rng.choices(types, weights)[0]
            properties = dict(props[kind])
            if "url" in properties:
                properties["url"] = rng.choice(URLS)
            if "message_id" in properties:
                properties["message_id"] = f"m{rng.randrange(40)}"
            when = first + timedelta(seconds=rng.uniform(0, 30 * 86400))
            timeline.append((when, kind, properties, {}))
        timeline.sort(key=lambda item: item[0])
        webinar = any(kind == "webinar.attended" for _, kind, _, _ in timeline)
        pricing = any(
            kind == "page.viewed" and p.get("url") in ("/pricing", "/prezzi")
            for _, kind, p, _ in timeline
        )
        chance = 0.6 if webinar and pricing else 0.15 if webinar or pricing else 0.03
        if rng.random() < chance:
            when = timeline[-1][0] + timedelta(days=rng.uniform(1, 30))
            timeline.append((when, "opportunity.created", {}, {}))
        else:
            timeline.append((timeline[-1][0] + timedelta(hours=1), "email.delivered", {}, {}))
        for n, (when, kind, properties, attrs) in enumerate(timeline):
            rows.append(
                (
                    f"{lead_id}-{n}",
                    lead_id,
                    kind,
                    1,
                    _stamp(when),
                    now,
                    "bench",
                    json.dumps(properties),
                    json.dumps(attrs),
                )
            )
        stored += len(timeline)
        if len(rows) >= 50_000:
            flush()
    flush()
    con.commit()
    con.execute("ANALYZE")
    con.close()
    return stored


def candidate_text() -> str:
    text = (RULES / "pmi-letter-score.yaml").read_text(encoding="utf-8")
    text = text.replace("version: 3", "version: 99", 1)
    webinar = text.index("id: webinar_attended")
    points = text.index("points: 10", webinar)
    text = text[:points] + "points: 12" + text[points + len("points: 10") :]
    return text.replace("when: {score: {gte: 90}}", "when: {score: {gte: 80}}", 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--leads", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--db", help="Reuse (or create) this SQLite file instead of a temp one.")
    parser.add_argument("--profile", action="store_true", help="Replay in-process under cProfile.")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.db) if args.db else Path(tmp) / "backtest.db"
        if not path.exists():
            t0 = time.perf_counter()
            stored = build(path, args.events, args.leads)
            print(
                f"built {path}: {stored:,} events, {args.leads:,} leads in {time.perf_counter() - t0:.1f} s"
            )
        url = f"sqlite:///{path}"
        active = load_ruleset_file(RULES / "pmi-letter-score.yaml")
        candidate = load_ruleset_text(candidate_text(), "candidate.yaml")
        period = service.Period(None, END)
        engine = make_engine(url)
        factory = make_session_factory(engine, read_only=True)
        if args.profile:
            profiler = cProfile.Profile()
            with factory() as session:
                profiler.enable()
                t0 = time.perf_counter()
                report = service.run_backtest(session, active, candidate, period, workers=1)
                wall = time.perf_counter() - t0
                profiler.disable()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(25)
            print(f"profiled run (1 process, profiler overhead included): {wall:.1f} s")
            return
        cpu0 = time.process_time()
        children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        with factory() as session:
            report = service.run_backtest(
                session, active, candidate, period, workers=args.workers, database_url=url
            )
        wall = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
        children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        child_cpu = (children1.ru_utime - children0.ru_utime) + (
            children1.ru_stime - children0.ru_stime
        )
        engine.dispose()
        events = report["events"]
        print(
            f"backtest of {events:,} events, {report['leads']:,} leads, 2 rulesets, "
            f"{args.workers} worker process(es) on {os.cpu_count()} cores"
        )
        print(
            f"wall {wall:.1f} s = {events / wall:,.0f} events/s "
            f"({2 * events / wall:,.0f} event replays/s); CPU: this process {cpu:.1f} s, "
            f"workers {child_cpu:.1f} s"
        )
        for side in ("active", "candidate"):
            summary = report[side]
            sweep = {row["threshold"]: row for row in summary["threshold_sweep"]}
            print(
                f"{side:9s} AUC {summary['auc']}, conversion {summary['conversion']}, "
                f"SQL at 60: {sweep[60]['sql']} ({sweep[60]['conversion']}), "
                f"SQL at 80: {sweep[80]['sql']} ({sweep[80]['conversion']}, "
                f"{sweep[80]['median_days_to_opportunity']} days)"
            )
        print(f"leads whose stage would change: {report['stage_changes']['count']:,}")


if __name__ == "__main__":
    main()
