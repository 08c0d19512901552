"""``leadscore demo``: a quarter of leads through the real pipeline, in the seeds' proportions."""

from __future__ import annotations

import csv
from collections import Counter
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker

from leadscore_api.cli import main
from leadscore_api.errors import Conflict
from leadscore_api.service.demo import (
    CHANNELS,
    acquisition_costs,
    behaviour_events,
    generate_leads,
    run_demo,
)
from leadscore_api.storage.models import Lead, Outcome, ScoreChange

END = date(2026, 11, 20)


def test_the_same_seed_gives_the_same_quarter() -> None:
    first = generate_leads(7, 300, END)
    again = generate_leads(7, 300, END)
    other = generate_leads(8, 300, END)
    assert [(p.email, p.letter, p.arrived_at, p.attributes) for p in first] == [
        (p.email, p.letter, p.arrived_at, p.attributes) for p in again
    ]
    assert [p.email for p in first] != [p.email for p in other]
    until = max(p.arrived_at for p in first)
    events = behaviour_events(7, first, until)
    assert [(e.id, e.occurred_at) for e in events] == [
        (e.id, e.occurred_at) for e in behaviour_events(7, again, until)
    ]
    assert all(e.occurred_at <= until for e in events)
    assert events == sorted(events, key=lambda e: (e.occurred_at, e.id))
    # Every lead's first touch carries its attributes; every channel brings leads.
    assert {p.channel.name for p in first} == {c.name for c in CHANNELS}
    assert len({p.email for p in first}) == 300


def test_costs_per_channel_and_month() -> None:
    people = generate_leads(3, 3000, END)
    rows = acquisition_costs(3, people)
    months = {m for _, m, _ in rows}
    assert len(months) in (4, 5)  # a quarter of 91 days touches four or five calendar months
    spent = Counter[str]()
    for source, _month, amount in rows:
        assert amount > 0
        spent[source] += round(amount)
    leads_by_source = Counter(p.channel.source for p in people)
    cost_per_lead = {s: spent[s] / leads_by_source[s] for s in spent}
    # The fair is the dearest channel and over the 50 € target; newsletters the cheapest.
    assert max(cost_per_lead, key=lambda s: cost_per_lead[s]) == "event"
    assert cost_per_lead["event"] > 50
    assert min(cost_per_lead, key=lambda s: cost_per_lead[s]) == "email"
    overall = sum(spent.values()) / len(people)
    assert 25 < overall < 60


def count(factory: sessionmaker[Session], model: type[Lead] | type[Outcome]) -> int:
    with factory() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


def group_counts(session: Session, column: InstrumentedAttribute[Any]) -> Counter[str]:
    rows = session.execute(select(column, func.count()).group_by(column))
    return Counter({str(value): int(n) for value, n in rows})


def test_demo_fills_the_database_in_the_seeds_proportions(
    app: FastAPI, client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    read_factory: sessionmaker[Session] = app.state.read_session_factory
    report = run_demo(session_factory, read_factory, app.state.registry, leads=500, seed=11)
    assert report.rejected == 0
    assert count(session_factory, Lead) == report.leads == 500

    with session_factory() as session:
        stages = group_counts(session, Lead.stage)
        letters = group_counts(session, Lead.letter)
        outcomes = group_counts(session, Outcome.type)
        changes = int(session.scalar(select(func.count()).select_from(ScoreChange)) or 0)
    assert set(letters) == {"A", "B", "C", "D"}
    assert letters["A"] < letters["B"] < letters["C"] + letters["D"]
    mql_or_better = stages["mql"] + stages["sql"]
    assert mql_or_better == report.mql
    assert stages["sql"] == report.sql
    assert 0.10 < report.mql / 500 < 0.40
    assert 0.15 < report.sql / report.mql < 0.45
    assert 0.05 < report.opportunities / 500 < 0.20
    assert outcomes["opportunity.created"] == report.opportunities
    assert outcomes["deal.won"] == report.won > 0
    assert outcomes["deal.lost"] == report.lost > 0
    assert outcomes["lead.contacted"] == report.contacted
    # Most hand-overs are answered within the procedure's 4 hours, not all.
    assert 0 < report.contacted_late < report.contacted / 2
    assert changes >= 500

    hot = client.get("/v1/leads", params={"stage": "sql", "limit": 500}).json()["items"]
    assert len(hot) == report.sql
    assert all(lead["owner"] for lead in hot)

    outcome_rows = count(session_factory, Outcome)
    with pytest.raises(Conflict):
        run_demo(session_factory, read_factory, app.state.registry, leads=50, seed=11)
    again = run_demo(
        session_factory, read_factory, app.state.registry, leads=500, seed=11, force=True
    )
    assert again.mql == 0  # the same seed sends the same event ids: nothing new
    assert count(session_factory, Lead) == 500
    assert count(session_factory, Outcome) == outcome_rows


def test_cli_demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = {"LEADSCORE_DATABASE_URL": f"sqlite:///{tmp_path / 'demo.db'}"}
    runner = CliRunner()
    result = runner.invoke(
        main, ["demo", "--leads", "120", "--seed", "5", "--costs-csv", "costs.csv"], env=env
    )
    assert result.exit_code == 0, result.output
    assert "demo: 120 leads" in result.output
    with (tmp_path / "costs.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and set(rows[0]) == {"source", "month", "amount_eur"}
    # The costs are in the database too, where the reports' cost per lead reads them.
    listed = runner.invoke(main, ["costs", "list"], env=env)
    assert listed.exit_code == 0, listed.output
    for row in rows:
        assert row["source"] in listed.output and row["month"] in listed.output
    result = runner.invoke(main, ["demo", "--leads", "10"], env=env)
    assert result.exit_code == 1
    assert "already has leads" in result.output
