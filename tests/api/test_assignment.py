"""Routing to a person through the real ingestion path: team by the rules, rep by the directory.

The operator's rules folder (a copy of the bundled one, BANT primary) carries the directory
file, which the service syncs at start-up.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from tests.api.helpers import at
from tests.conftest import TEST_ADMIN_KEY, make_settings

from leadscore_api.app import create_app
from leadscore_api.config import BUNDLED_RULES_DIR
from leadscore_api.storage.migrate import upgrade_database


@pytest.fixture
def routed_app(database_url: str, tmp_path: Path) -> FastAPI:
    rules = tmp_path / "rules"
    shutil.copytree(BUNDLED_RULES_DIR, rules)
    settings = make_settings(
        database_url, rules_dir=rules, primary_ruleset="bant", sync_rep_directory=True
    )
    upgrade_database(settings.database_url)
    return create_app(settings)


@pytest.fixture
def routed(routed_app: FastAPI) -> Iterator[TestClient]:
    with TestClient(routed_app, headers={"Authorization": f"Bearer {TEST_ADMIN_KEY}"}) as client:
        yield client


def new_lead(client: TestClient, email: str, attributes: dict[str, Any]) -> dict[str, Any]:
    event = {
        "id": f"evt-{email}",
        "type": "form.submitted",
        "occurred_at": at(0),
        "lead": {"email": email},
        "attributes": attributes,
    }
    response = client.post("/v1/events", json=event)
    assert response.status_code == 200, response.text
    lead_id = response.json()["results"][0]["lead_id"]
    lead: dict[str, Any] = client.get(f"/v1/leads/{lead_id}").json()
    return lead


def test_a_lead_is_routed_to_a_rep_of_its_team_in_turn(routed: TestClient) -> None:
    reps = routed.get("/v1/reps", params={"team": "north-manufacturing", "active": True})
    assert reps.status_code == 200, reps.text
    team = {rep["id"] for rep in reps.json()["items"]}
    assert len(team) >= 2
    north = {"industry": "manifatturiero", "region": "Lombardia", "employees": 20}
    first = new_lead(routed, "primo@example.it", north)
    second = new_lead(routed, "secondo@example.it", north)
    assert first["team"] == second["team"] == "north-manufacturing"
    assert first["owner"] in team and second["owner"] in team
    assert first["owner"] != second["owner"]  # round robin

    rows = routed.get(f"/v1/leads/{first['id']}/history").json()["items"]
    primary = [row for row in rows if row["ruleset"]["name"] == "bant"]
    assert primary[-1]["current"]["assignee"] == first["owner"]
    assert primary[-1]["current"]["owner"] == "north-manufacturing"


def test_deactivating_a_rep_hands_the_lead_to_another(routed: TestClient) -> None:
    north = {"industry": "manifatturiero", "region": "Lombardia", "employees": 20}
    lead = new_lead(routed, "terzo@example.it", north)
    owner = lead["owner"]
    response = routed.post(f"/v1/reps/{owner}/deactivate")
    assert response.status_code == 200, response.text
    moved = routed.get(f"/v1/leads/{lead['id']}").json()
    assert moved["owner"] not in (None, owner)
    assert moved["team"] == "north-manufacturing"


def test_a_lead_no_rule_routes_keeps_the_default_team(routed: TestClient) -> None:
    lead = new_lead(routed, "nessuno@example.it", {"employees": 5})
    assert lead["team"] == "inside-sales"
    reps = routed.get("/v1/reps", params={"team": "inside-sales", "active": True}).json()["items"]
    assert lead["owner"] in {rep["id"] for rep in reps} | {"inside-sales"}
