"""A re-score killed midway resumes where its last chunk ended and ends as an unbroken one.

The re-score runs as a real ``leadscore rules rescore`` process, killed with SIGKILL after a few
chunks; a second run finishes the job. The result is compared, lead by lead and history row by
history row, with an uninterrupted re-score of the same history in another database.
"""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select
from tests.conftest import TEST_ADMIN_KEY, make_settings

from leadscore_api.app import create_app
from leadscore_api.service import jobs
from leadscore_api.storage.db import make_engine, make_session_factory
from leadscore_api.storage.lifecycle_models import Job
from leadscore_api.storage.migrate import upgrade_database
from leadscore_api.storage.models import Lead, ScoreChange
from leadscore_api.storage.unit_of_work import in_transaction

from .helpers import (
    PRIMARY,
    cli_env,
    eventually,
    leadscore_command,
    post_events,
    visits,
    write_rules,
)

LEADS = 30
CHUNK = 2
KILL_AFTER = 6
PROGRESS = re.compile(r"rescore (job_\w+): (\d+)/(\d+) leads")


def _history() -> list[dict[str, Any]]:
    """Page views per lead: 0 to 4, so the new weight changes most leads and not all."""
    events: list[dict[str, Any]] = []
    for index in range(LEADS):
        events.extend(visits(f"lead{index:02d}@example.it", index % 5))
    return events


def _populate(database_url: str, rules: Path, events: list[dict[str, Any]]) -> None:
    """Leads scored under v1, then v2 activated by a reload that does not re-score."""
    write_rules(rules, version=1, visit=10)
    settings = make_settings(database_url, rules_dir=rules, primary_ruleset=PRIMARY)
    upgrade_database(database_url)
    with TestClient(
        create_app(settings), headers={"Authorization": f"Bearer {TEST_ADMIN_KEY}"}
    ) as c:
        post_events(c, events)
        write_rules(rules, version=2, visit=25)
        response = c.post("/v1/rulesets/reload")
        assert response.status_code == 200, response.text
        assert response.json()["job"] is None


def _rescore(database_url: str, rules: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*leadscore_command(), "rules", "rescore", *args],
        env=cli_env(database_url, rules),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _outcome(database_url: str) -> dict[str, Any]:
    """Each lead (by email): its summary and its re-score history rows, times left out."""
    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            leads = {lead.id: lead for lead in session.scalars(select(Lead))}
            rows: dict[str, list[tuple[Any, ...]]] = {lead_id: [] for lead_id in leads}
            for change in session.scalars(
                select(ScoreChange).where(ScoreChange.cause == "rescore").order_by(ScoreChange.id)
            ):
                rows[change.lead_id].append(
                    (
                        change.ruleset_version,
                        (change.previous or {}).get("score"),
                        change.current.get("score"),
                        change.current.get("tier"),
                        change.current.get("stage"),
                    )
                )
            return {
                str(lead.email): (
                    lead.score,
                    lead.tier,
                    lead.stage,
                    lead.ruleset_version,
                    rows[lead.id],
                )
                for lead in leads.values()
            }
    finally:
        engine.dispose()


def test_a_killed_rescore_resumes_and_ends_like_an_uninterrupted_one(
    database_url: str, tmp_path: Path
) -> None:
    events = _history()
    rules = tmp_path / "rules"
    rules.mkdir()
    _populate(database_url, rules, events)

    process = subprocess.Popen(
        [
            *leadscore_command(),
            "rules",
            "rescore",
            "--chunk-size",
            str(CHUNK),
            "--pause",
            "0.3",
        ],
        env=cli_env(database_url, rules),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    assert process.stderr is not None
    seen: list[str] = []
    try:
        for line in process.stderr:
            seen.append(line)
            match = PROGRESS.search(line)
            if match and int(match.group(2)) >= KILL_AFTER:
                process.send_signal(signal.SIGKILL)
                break
    finally:
        process.kill()
        process.wait(timeout=30)
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL, "".join(seen)

    # Midway: the committed chunks, and only they, are re-scored; the cursor says where.
    engine = make_engine(database_url)
    try:
        with make_session_factory(engine)() as session:
            job = session.scalars(select(Job)).one()
            assert job.status == "running" and job.cursor is not None
            assert KILL_AFTER <= job.done < LEADS and job.total == LEADS
            versions = {lead.id: lead.ruleset_version for lead in session.scalars(select(Lead))}
            done_ids = [lead_id for lead_id in versions if lead_id <= job.cursor]
            assert len(done_ids) == job.done
            assert {lead_id: v for lead_id, v in versions.items() if v == 2} == {
                lead_id: 2 for lead_id in done_ids
            }
    finally:
        engine.dispose()

    finished = _rescore(database_url, rules)
    assert finished.returncode == 0, finished.stderr
    assert f"job {job.id}: done, {LEADS} leads" in finished.stdout

    baseline_url = f"sqlite:///{tmp_path / 'baseline.db'}"
    baseline_rules = tmp_path / "baseline-rules"
    baseline_rules.mkdir()
    _populate(baseline_url, baseline_rules, events)
    uninterrupted = _rescore(baseline_url, baseline_rules)
    assert uninterrupted.returncode == 0, uninterrupted.stderr

    resumed, expected = _outcome(database_url), _outcome(baseline_url)
    assert resumed == expected
    # Each lead the new weight changes got exactly one history row, with the new version.
    for email, (score, _tier, _stage, version, rows) in resumed.items():
        visits_count = int(email[4:6]) % 5
        assert (score, version) == (min(100, 25 * visits_count), 2)
        assert rows == ([] if visits_count == 0 else [(2, 10 * visits_count, score, *rows[0][3:])])

    # Idempotent: running it again queues a fresh job that changes nothing.
    again = _rescore(database_url, rules)
    assert again.returncode == 0, again.stderr
    assert _outcome(database_url) == resumed


def test_leadscore_worker_runs_a_queued_rescore(database_url: str, tmp_path: Path) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    _populate(database_url, rules, _history())
    engine = make_engine(database_url)
    factory = make_session_factory(engine)
    try:
        job = in_transaction(factory, lambda s: jobs.create_rescore(s, reason="test"))
        env = cli_env(database_url, rules, LEADSCORE_JOB_POLL_SECONDS="0.2")
        with subprocess.Popen(
            [*leadscore_command(), "worker"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ) as worker:
            try:

                def finished() -> bool:
                    with factory() as session:
                        return jobs.get_job(session, job.id).status == "done"

                eventually(finished, timeout=60, what="the worker to finish the re-score")
            finally:
                worker.send_signal(signal.SIGTERM)
                worker.wait(timeout=30)
        with factory() as session:
            assert jobs.get_job(session, job.id).done == LEADS
            versions = set(session.scalars(select(Lead.ruleset_version)))
        assert versions == {2}
    finally:
        engine.dispose()
