"""Every report over a year of data: 100,000 leads and 1,000,000 events, SQLite and PostgreSQL.

The data is written straight into the tables in bulk (scoring a million events through the API
would take an hour here, and the reports only read what scoring wrote). It follows what the
service writes and what the seeds describe, from one seeded random generator:

- leads arrive evenly over the last 365 days, during working hours, from eight sources
  (paid search 30 %, organic 20 %, social 15 %, email 10 %, referral 8 %, events 7 %,
  webinars 5 %, purchased lists 5 %), each with its ``source`` attribute;
- letters A 15 %, B 25 %, C 30 %, D 30 %; events per lead are exponential (mean 10, so
  1,000,000 in all), hours to days apart; under the guide model an A or B lead's score moves
  with each event (+5, +10, −10, kept in 0–100) and gets a history row each time, a C or D lead
  only its arrival row; stages follow the model (MQL at 50 with A or B, SQL at 90); the BANT
  model gets an arrival row and a row per stage it reaches;
- hand-overs (MQL) are contacted in 85 % of cases after a log-normal delay (median 3 h),
  accepted in 70 %; opportunities for half the SQLs and 15 % of the other MQLs; 35 % of those
  won (log-normal amount, median 8,000 €), 40 % lost; these outcomes are events too;
- costs for every source and month of the year: each source's cost per lead (paid search
  60 €, events 120 €, organic and referral 0 €...) times its expected leads a month.

Each report route is then called through the application (in process, ASGI, the admin key) for
the default period (last 90 days) and for the whole year: one warm-up call, then ``--repeat``
calls; the median and the best wall-clock time and the client process's CPU time are printed.
On SQLite the process CPU includes the database's work; on PostgreSQL the server's CPU is
printed beside it (the backends' CPU time from /proc, per call). Prints figures; asserts
nothing.

    python bench/reports.py [--leads 100000] [--events 1000000] [--repeat 5]
        [--pg postgresql+psycopg://postgres@127.0.0.1:5432/h_reports_bench] [--skip-sqlite]
        [--dashboard | --dashboard-only]

``--dashboard`` also times the dashboard's first page (``GET /dashboard``, signed in with the
admin key: the whole report plus the hot-lead queue, rendered to HTML) for 30, 90 and 365 days,
the target of issue 13 being under 300 ms; ``--dashboard-only`` times only that.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import create_engine, insert, text
from sqlalchemy.pool import NullPool

from leadscore_api.app import create_app
from leadscore_api.config import BUNDLED_RULES_DIR, Settings
from leadscore_api.storage.db import make_engine, make_session_factory
from leadscore_api.storage.migrate import upgrade_database
from leadscore_api.storage.models import Event, Lead, LeadScore, Outcome, ScoreChange
from leadscore_api.storage.report_models import AcquisitionCost

ADMIN_KEY = "bench-admin-key"
CHUNK = 2_000
SEED = 13

SOURCES = {
    "paid_search": 0.30,
    "organic": 0.20,
    "social": 0.15,
    "email": 0.10,
    "referral": 0.08,
    "event": 0.07,
    "webinar": 0.05,
    "purchased_list": 0.05,
}
#: What a lead of each source costs (€): the monthly cost is this × the source's leads a month.
COST_PER_LEAD = {
    "paid_search": 60.0,
    "organic": 0.0,
    "social": 35.0,
    "email": 15.0,
    "referral": 0.0,
    "event": 120.0,
    "webinar": 40.0,
    "purchased_list": 10.0,
}
LETTERS = {"A": 0.15, "B": 0.25, "C": 0.30, "D": 0.30}
FIT = {"A": (45, 50), "B": (30, 44), "C": (15, 29), "D": (0, 14)}
OWNERS = ["key-accounts", "north-manufacturing", "north-team", "centre-south-team", "inside-sales"]
BEHAVIOUR = [
    ("page.viewed", 5),
    ("email.opened", 5),
    ("content.downloaded", 10),
    ("webinar.attended", 10),
    ("email.clicked", 0),
    ("email.bounced", -10),
]
ROUTES = [
    "summary",
    "kpis",
    "matrix",
    "funnel",
    "conversion-by-band",
    "crossings",
    "channels",
]


def pick(rng: random.Random, weights: dict[str, float]) -> str:
    return rng.choices(list(weights), weights=list(weights.values()))[0]


def tier_of(score: int, bands: tuple[tuple[int, str], ...]) -> str:
    return next(name for low, name in bands if score >= low)


PMI_TIERS = ((75, "hot"), (40, "warm"), (0, "cold"))


def pmi_stage(letter: str, score: int) -> str:
    if score >= 90:
        return "sql"
    if score >= 50 and letter in ("A", "B"):
        return "mql"
    return "lead"


@dataclass
class Generated:
    leads: list[dict[str, Any]]
    scores: list[dict[str, Any]]
    events: list[dict[str, Any]]
    history: list[dict[str, Any]]
    outcomes: list[dict[str, Any]]


def summary(letter: str | None, score: int, stage: str, owner: str) -> dict[str, Any]:
    return {
        "letter": letter,
        "score": score,
        "tier": tier_of(score, PMI_TIERS),
        "stage": stage,
        "next_action": None,
        "owner": owner,
    }


def generate(
    rng: random.Random, first: int, count: int, events_mean: float, now: datetime
) -> Generated:
    """Leads ``first`` … ``first + count − 1`` with their events, history and outcomes."""
    out = Generated([], [], [], [], [])
    year_start = now - timedelta(days=365)
    for n in range(first, first + count):
        lead_id = f"lead_b{n:07d}"
        source = pick(rng, SOURCES)
        letter = pick(rng, LETTERS)
        owner = rng.choice(OWNERS)
        day = year_start + timedelta(days=rng.randrange(365))
        arrival = day.replace(hour=8, minute=0, second=0, microsecond=0) + timedelta(
            minutes=rng.randrange(11 * 60)
        )
        fit = rng.randint(*FIT[letter])
        counts_behaviour = letter in ("A", "B")
        score = fit
        stage = pmi_stage(letter, score)
        moments: list[tuple[datetime, str, int]] = []
        moment = arrival
        for _ in range(max(0, int(rng.expovariate(1 / events_mean)))):
            moment += timedelta(hours=rng.expovariate(1 / 30))
            if moment >= now:
                break
            kind, points = rng.choice(BEHAVIOUR)
            moments.append((moment, kind, points))
        # History under the guide model: the arrival row, then a row per visible change.
        previous: dict[str, Any] | None = None
        reached: dict[str, datetime] = {}
        current = summary(letter, score, stage, owner)
        out.history.append(
            change(lead_id, "pmi-letter-score", arrival, previous, current, f"{lead_id}-e0")
        )
        previous = current
        out.events.append(event(lead_id, 0, "form.submitted", arrival, source))
        if stage != "lead":
            reached[stage] = arrival
        best = score
        for index, (at, kind, points) in enumerate(moments, start=1):
            out.events.append(event(lead_id, index, kind, at, source))
            if not counts_behaviour or points == 0:
                continue
            score = max(0, min(100, score + points))
            best = max(best, score)
            stage = pmi_stage(letter, score)
            current = summary(letter, score, stage, owner)
            out.history.append(
                change(lead_id, "pmi-letter-score", at, previous, current, f"{lead_id}-e{index}")
            )
            previous = current
            if stage != "lead":
                reached.setdefault("mql", at)
            if stage == "sql":
                reached.setdefault("sql", at)
        last_at = moments[-1][0] if moments else arrival
        # The BANT model: an arrival row and one row per stage reached (the same moments).
        bant_score = min(100, best + rng.randint(-10, 10)) if best > 0 else rng.randint(0, 30)
        bant_prev: dict[str, Any] | None = None
        bant_now = summary(None, max(0, bant_score - 20), "lead", owner)
        out.history.append(change(lead_id, "bant", arrival, bant_prev, bant_now, f"{lead_id}-e0"))
        bant_prev = bant_now
        for name, at in sorted(reached.items(), key=lambda item: item[1]):
            bant_now = summary(None, max(0, bant_score), name, owner)
            out.history.append(change(lead_id, "bant", at, bant_prev, bant_now, None))
            bant_prev = bant_now
        # CRM outcomes after the hand-over (the MQL).
        index = len(moments) + 1
        if "mql" in reached:
            handover = reached["mql"]
            if rng.random() < 0.85:
                at = handover + timedelta(hours=rng.lognormvariate(math.log(3), 1.0))
                index = outcome(out, lead_id, index, "lead.contacted", at, source, now)
            if rng.random() < 0.70:
                at = handover + timedelta(hours=rng.lognormvariate(math.log(2), 1.0))
                index = outcome(out, lead_id, index, "lead.accepted", at, source, now)
            if rng.random() < (0.5 if "sql" in reached else 0.15):
                at = handover + timedelta(days=rng.uniform(2, 20))
                index = outcome(out, lead_id, index, "opportunity.created", at, source, now)
                won, lost = rng.random(), rng.random()
                close = at + timedelta(days=rng.uniform(10, 40))
                if won < 0.35:
                    amount = round(rng.lognormvariate(math.log(8000), 0.6), 2)
                    index = outcome(out, lead_id, index, "deal.won", close, source, now, amount)
                elif lost < 0.40 / 0.65:
                    index = outcome(out, lead_id, index, "deal.lost", close, source, now)
        final_stage = pmi_stage(letter, score)
        out.leads.append(
            {
                "id": lead_id,
                "email": f"{lead_id}@bench.example",
                "external_id": None,
                "attributes": {"source": source, "role": "manager"},
                "letter": letter,
                "score": score,
                "tier": tier_of(score, PMI_TIERS),
                "stage": final_stage,
                "components": {"fit": fit, "behaviour": score - fit},
                "next_action": None,
                "next_action_due": None,
                "owner": owner,
                "team": owner,
                "ruleset_name": "pmi-letter-score",
                "ruleset_version": 3,
                "models": {"bant": bant_prev},
                "created_at": arrival,
                "updated_at": last_at,
                "version": 1,
                "next_change_at": None,
            }
        )
        for ruleset, current_summary in (("pmi-letter-score", previous), ("bant", bant_prev)):
            out.scores.append(
                {
                    "lead_id": lead_id,
                    "ruleset_name": ruleset,
                    "ruleset_version": 1,
                    "ruleset_sha256": "0" * 64,
                    "state": {},
                    "summary": current_summary,
                    "version": 1,
                    "updated_at": last_at,
                }
            )
    return out


def change(
    lead_id: str,
    ruleset: str,
    at: datetime,
    previous: dict[str, Any] | None,
    current: dict[str, Any],
    event_id: str | None,
) -> dict[str, Any]:
    return {
        "lead_id": lead_id,
        "ruleset_name": ruleset,
        "ruleset_version": 1,
        "ruleset_sha256": "0" * 64,
        "cause": "event",
        "event_id": event_id,
        "event_ids": [event_id] if event_id else [],
        "changed_at": at,
        "previous": previous,
        "current": current,
        "explanation": {"because": "bench"},
    }


def event(lead_id: str, index: int, kind: str, at: datetime, source: str) -> dict[str, Any]:
    return {
        "id": f"{lead_id}-e{index}",
        "lead_id": lead_id,
        "type": kind,
        "known_type": True,
        "occurred_at": at,
        "received_at": at,
        "source": source,
        "properties": {"url": "https://example.it/prezzi"} if kind == "page.viewed" else {},
        "attributes": {},
        "raw": None,
    }


def outcome(
    out: Generated,
    lead_id: str,
    index: int,
    kind: str,
    at: datetime,
    source: str,
    now: datetime,
    amount: float | None = None,
) -> int:
    if at >= now:
        return index
    out.events.append(event(lead_id, index, kind, at, source))
    out.outcomes.append(
        {
            "lead_id": lead_id,
            "event_id": f"{lead_id}-e{index}",
            "type": kind,
            "occurred_at": at,
            "source": source,
            "amount": amount,
        }
    )
    return index + 1


def months_back(today: date, count: int) -> Iterator[str]:
    year, month = today.year, today.month
    for _ in range(count):
        yield f"{year:04d}-{month:02d}"
        year, month = (year - 1, 12) if month == 1 else (year, month - 1)


def fill(url: str, n_leads: int, n_events: int) -> dict[str, int]:
    """Write the year into a migrated database; returns the row counts."""
    rng = random.Random(SEED)
    now = datetime.now(UTC)
    # Events per lead are 1 (the form) + behaviour + outcomes; about 1.5 outcomes per lead on
    # average come on top, so the behaviour mean is set to land near ``n_events`` in all.
    events_mean = max(0.0, n_events / n_leads - 0.8)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    totals = {"leads": 0, "events": 0, "score_changes": 0, "outcomes": 0}
    try:
        for first in range(0, n_leads, CHUNK):
            data = generate(rng, first, min(CHUNK, n_leads - first), events_mean, now)
            with factory() as session, session.begin():
                session.execute(insert(Lead), data.leads)
                session.execute(insert(LeadScore), data.scores)
                session.execute(insert(Event), data.events)
                session.execute(insert(ScoreChange), data.history)
                if data.outcomes:
                    session.execute(insert(Outcome), data.outcomes)
            totals["leads"] += len(data.leads)
            totals["events"] += len(data.events)
            totals["score_changes"] += len(data.history)
            totals["outcomes"] += len(data.outcomes)
        per_month = n_leads / 12
        costs = [
            {
                "source": source,
                "month": month,
                "amount": round(per_lead * SOURCES[source] * per_month, 2),
                "updated_at": now,
            }
            for month in months_back(now.date(), 13)
            for source, per_lead in COST_PER_LEAD.items()
        ]
        with factory() as session, session.begin():
            session.execute(insert(AcquisitionCost), costs)
        # What autovacuum (PostgreSQL: statistics, and the visibility map that lets the
        # reports read report_history from its index alone) or `PRAGMA optimize` (SQLite)
        # does in production.
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(
                text("VACUUM ANALYZE" if engine.dialect.name == "postgresql" else "ANALYZE")
            )
    finally:
        engine.dispose()
    return totals


@dataclass
class Timing:
    route: str
    period: str
    median_ms: float
    best_ms: float
    cpu_ms: float
    #: PostgreSQL only: CPU of the database's server processes per call (from /proc).
    server_cpu_ms: float | None


def server_cpu_seconds(url: str) -> float | None:
    """CPU time so far of the PostgreSQL backends connected to the bench database."""
    if not url.startswith("postgresql"):
        return None
    engine = create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            pids = conn.execute(
                text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
            ).scalars()
            ticks = 0
            for pid in pids:
                try:
                    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                ticks += int(fields[11]) + int(fields[12])  # utime + stime
    finally:
        engine.dispose()
    return ticks / os.sysconf("SC_CLK_TCK")


def bench_settings(url: str) -> Settings:
    """The service as the bench runs it: the bundled rules, the admin key, no worker."""
    return Settings(
        _env_file=None,
        database_url=url,
        rules_dir=BUNDLED_RULES_DIR,
        admin_api_key=ADMIN_KEY,
        run_worker=False,
        sync_rep_directory=False,
    )


def timed(
    client: TestClient,
    url: str,
    repeat: int,
    route: str,
    period: str,
    path: str,
    params: dict[str, str] | None = None,
) -> Timing:
    """``repeat`` calls of ``GET path``: median and best wall time, median CPU of this process,
    and the database server's CPU per call (PostgreSQL only)."""
    walls, cpus = [], []
    server_before = server_cpu_seconds(url)
    for _ in range(repeat):
        wall, cpu = time.perf_counter(), time.process_time()
        response = client.get(path, params=params)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        assert response.status_code == 200, response.text
    server_after = server_cpu_seconds(url)
    server = (
        (server_after - server_before) / repeat * 1000
        if server_after is not None and server_before is not None
        else None
    )
    return Timing(
        route,
        period,
        statistics.median(walls) * 1000,
        min(walls) * 1000,
        statistics.median(cpus) * 1000,
        server,
    )


def time_routes(url: str, repeat: int) -> list[Timing]:
    app = create_app(bench_settings(url))
    today = datetime.now(UTC).date()
    periods = {
        "90 days": {},
        "365 days": {"from": (today - timedelta(days=364)).isoformat()},
    }
    timings = []
    with TestClient(app, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as client:
        for period, params in periods.items():
            for route in ROUTES:
                path = f"/v1/reports/{route}"
                response = client.get(path, params=params)
                assert response.status_code == 200, response.text
                timings.append(timed(client, url, repeat, route, period, path, params))
            if period == "90 days":
                body = client.get("/v1/reports/kpis", params=params).json()
                print(f"  cohort of the last 90 days: {body['leads']:,} leads; KPIs:")
                for kpi in body["kpis"]:
                    print(
                        f"    {kpi['key']:<24} {kpi['value']!s:>8} {kpi['unit']:<5}"
                        f" target {kpi['comparison']} {kpi['target']:g}: {kpi['status']}"
                    )
    return timings


def time_dashboard(url: str, repeat: int) -> list[Timing]:
    """The dashboard's first page, as a signed-in browser asks for it, per period."""
    timings = []
    with TestClient(create_app(bench_settings(url)), base_url="http://testserver") as client:
        signed = client.post(
            "/dashboard/login",
            data={"key": ADMIN_KEY},
            headers={"Origin": "http://testserver"},
            follow_redirects=False,
        )
        assert signed.status_code == 303, signed.text
        for days in (30, 90, 365):
            path = f"/dashboard?period={days}"
            # The first load computes the view's report (a cache miss, as after a restart);
            # the timed ones are served from the report cache (LEADSCORE_DASHBOARD_CACHE_SECONDS),
            # as every load is while the view is in use: the warming loop recomputes it in the
            # background before it expires.
            wall, cpu = time.perf_counter(), time.process_time()
            response = client.get(path)
            assert response.status_code == 200, response.text
            timings.append(
                Timing(
                    "dashboard page, first load",
                    f"{days} days",
                    (time.perf_counter() - wall) * 1000,
                    (time.perf_counter() - wall) * 1000,
                    (time.process_time() - cpu) * 1000,
                    None,
                )
            )
            timings.append(
                timed(client, url, repeat, "dashboard page, in use", f"{days} days", path)
            )
    return timings


def reset_postgres(url: str) -> None:
    engine = create_engine(url, poolclass=NullPool)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA IF EXISTS public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


def run(name: str, url: str, args: argparse.Namespace, *, filled: bool = False) -> None:
    print(f"== {name}")
    if not filled:
        upgrade_database(url)
        started = time.perf_counter()
        totals = fill(url, args.leads, args.events)
        print(
            f"  filled in {time.perf_counter() - started:.0f} s: "
            + ", ".join(f"{count:,} {table}" for table, count in totals.items())
        )
    print(f"  load average (1 min) before timing: {os.getloadavg()[0]:.1f}")
    timings = [] if args.dashboard_only else time_routes(url, args.repeat)
    if args.dashboard or args.dashboard_only:
        timings += time_dashboard(url, args.repeat)
    print(f"  load average (1 min) after timing: {os.getloadavg()[0]:.1f}")
    print(
        f"  {'route':<20} {'period':<9} {'median ms':>10} {'best ms':>8} {'CPU ms':>8}"
        f" {'server CPU ms':>14}"
    )
    for t in timings:
        server = f"{t.server_cpu_ms:>14.0f}" if t.server_cpu_ms is not None else f"{'-':>14}"
        print(
            f"  {t.route:<20} {t.period:<9} {t.median_ms:>10.0f} {t.best_ms:>8.0f}"
            f" {t.cpu_ms:>8.0f} {server}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", type=int, default=100_000)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--pg", default=None, help="a scratch PostgreSQL database (emptied!)")
    parser.add_argument("--skip-sqlite", action="store_true")
    parser.add_argument(
        "--sqlite-file", type=Path, help="keep the SQLite database here; reused if it exists"
    )
    parser.add_argument("--reuse-pg", action="store_true", help="time the --pg data as it is")
    parser.add_argument("--dashboard", action="store_true", help="also time GET /dashboard")
    parser.add_argument("--dashboard-only", action="store_true", help="time only GET /dashboard")
    args = parser.parse_args()
    if args.sqlite_file is not None:
        exists = args.sqlite_file.exists()
        run("SQLite", f"sqlite:///{args.sqlite_file}", args, filled=exists)
    elif not args.skip_sqlite:
        with tempfile.TemporaryDirectory() as tmp:
            run("SQLite", f"sqlite:///{Path(tmp) / 'reports-bench.db'}", args)
    if args.pg:
        if not args.reuse_pg:
            reset_postgres(args.pg)
        run("PostgreSQL", args.pg, args, filled=args.reuse_pg)


if __name__ == "__main__":
    main()
