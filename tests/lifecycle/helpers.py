"""A small ruleset whose versions differ in one weight, and ways to drive it."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from tests.api.helpers import event
from tests.conftest import TEST_ADMIN_KEY, make_settings

from leadscore_api.app import create_app
from leadscore_api.config import Settings
from leadscore_api.storage.migrate import upgrade_database

PRIMARY = "trial"

TEMPLATE = """\
# A test ruleset: each page view is worth VISIT points; no decay, so scores do not move with time.
ruleset: trial
version: {version}
components:
  interest:
    max: 100
    actions:
      - {{id: visit, on: page.viewed, points: {visit}}}
      - {{id: form, on: form.submitted, points: 0}}
tiers: {{hot: 75, warm: 40, cold: 0}}
stages:
  mql: {{score: {{gte: 50}}}}
"""

#: A file that does not validate: the points on line 8 are not a number.
INVALID = TEMPLATE.format(version=9, visit=10).replace("points: 10}", "points: lots}")
INVALID_LINE = 8


def write_rules(folder: Path, version: int, visit: int) -> Path:
    path = folder / "trial.yaml"
    path.write_text(TEMPLATE.format(version=version, visit=visit), encoding="utf-8")
    return path


def visits(email: str, count: int, start: float = 0) -> list[dict[str, Any]]:
    """``count`` page views by ``email`` (a form first when there are none, to create the lead)."""
    if count == 0:
        return [event("form.submitted", minutes=start, email=email)]
    return [
        event("page.viewed", minutes=start + i, email=email, properties={"url": f"/p{i}"})
        for i in range(count)
    ]


def post_events(client: TestClient, events: list[dict[str, Any]]) -> list[str]:
    response = client.post("/v1/events", json={"events": events})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert all(r["status"] == "accepted" for r in results), results
    return [r["lead_id"] for r in results]


def eventually(check: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Wait until ``check()`` holds (replicas follow an activation within seconds)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def active_version(client: TestClient, name: str = PRIMARY) -> int:
    response = client.get("/v1/rulesets")
    assert response.status_code == 200, response.text
    versions = {item["name"]: item["version"] for item in response.json()["items"]}
    return int(versions[name])


def cli_env(database_url: str, rules: Path, **extra: str) -> dict[str, str]:
    """The environment a ``leadscore`` subprocess needs (nothing of the caller's LEADSCORE_*)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEADSCORE_")}
    env.update(
        LEADSCORE_DATABASE_URL=database_url,
        LEADSCORE_RULES_DIR=str(rules),
        LEADSCORE_PRIMARY_RULESET=PRIMARY,
        LEADSCORE_SYNC_REP_DIRECTORY="false",
        **extra,
    )
    return env


def leadscore_command() -> list[str]:
    return [str(Path(sys.executable).parent / "leadscore")]


#: How often the replicas of these tests ask the database which versions are active.
REFRESH = 0.3


@dataclass
class Replicas:
    """Two apps on one database (two replicas), and the rules folder they load."""

    a: TestClient
    b: TestClient
    rules: Path
    settings: Settings


def admin_client(settings: Settings) -> TestClient:
    """A client of a new app (a replica) with the admin key; enter it to start the app."""
    return TestClient(
        create_app(settings),
        headers={"Authorization": f"Bearer {TEST_ADMIN_KEY}"},
        raise_server_exceptions=False,
    )


@contextmanager
def two_replicas(database_url: str, folder: Path) -> Iterator[Replicas]:
    """v1 of the trial ruleset in ``folder``/rules, served by two started replicas."""
    rules = folder / "rules"
    rules.mkdir()
    write_rules(rules, version=1, visit=10)
    settings = make_settings(
        database_url, rules_dir=rules, primary_ruleset=PRIMARY, ruleset_refresh_seconds=REFRESH
    )
    upgrade_database(database_url)
    with admin_client(settings) as a, admin_client(settings) as b:
        yield Replicas(a, b, rules, settings)
