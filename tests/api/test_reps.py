"""``/v1/reps``: the rep directory over HTTP, its scope and its problems; ``leadscore reps``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx2
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from tests.conftest import MakeApiKey, auth

from leadscore_api.cli import main
from leadscore_api.storage.models import Lead
from leadscore_api.storage.unit_of_work import in_transaction

Factory = sessionmaker[Session]


def _problem(response: httpx2.Response, status: int, kind: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body: dict[str, Any] = response.json()
    assert body["type"] == f"urn:leadscore:problem:{kind}", body
    assert body["status"] == status
    return body


def _fields(body: dict[str, Any]) -> list[str]:
    return [error["field"] for error in body.get("errors") or []]


def _create(client: TestClient, **body: Any) -> dict[str, Any]:
    payload = {"name": "Giulia Bianchi", "team": "north-team", **body}
    response = client.post("/v1/reps", json=payload)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def _give_leads(factory: Factory, owner: str, count: int, stage: str = "lead") -> list[str]:
    ids = [f"lead_{owner}_{stage}_{i}" for i in range(count)]

    def work(session: Session) -> None:
        for lead_id in ids:
            session.add(Lead(id=lead_id, owner=owner, stage=stage))

    in_transaction(factory, work)
    return ids


def _owner(factory: Factory, lead_id: str) -> str | None:
    with factory() as session:
        return session.scalars(select(Lead.owner).where(Lead.id == lead_id)).one()


def test_rep_crud(client: TestClient) -> None:
    created = _create(
        client,
        id="giulia.bianchi",
        email="giulia.bianchi@vendite.example.com",
        industries=["Manifatturiero", " manifatturiero ", "software"],
        regions=["Lombardia"],
        min_employees=20,
        max_employees=249,
        capacity=40,
    )
    assert created == {
        **created,
        "id": "giulia.bianchi",
        "team": "north-team",
        "industries": ["Manifatturiero", "software"],
        "regions": ["Lombardia"],
        "min_employees": 20,
        "max_employees": 249,
        "capacity": 40,
        "active": True,
        "open_leads": 0,
        "source": "api",
        "last_assigned_at": None,
    }
    generated = _create(client, name="Marco Rossi", team="inside-sales")
    assert generated["id"].startswith("rep_")
    assert (generated["capacity"], generated["max_employees"], generated["email"]) == (
        None,
        None,
        None,
    )

    shown = client.get("/v1/reps/giulia.bianchi")
    assert shown.status_code == 200 and shown.json() == created

    patched = client.patch(
        "/v1/reps/giulia.bianchi",
        json={"capacity": None, "regions": ["Veneto", "Lombardia"], "name": "Giulia B."},
    )
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert (body["capacity"], body["regions"], body["name"]) == (
        None,
        ["Veneto", "Lombardia"],
        "Giulia B.",
    )
    assert body["max_employees"] == 249 and body["email"] == created["email"]
    assert body["updated_at"] >= created["updated_at"]

    listed = client.get("/v1/reps").json()["items"]
    assert [rep["id"] for rep in listed] == [generated["id"], "giulia.bianchi"]
    by_team = client.get("/v1/reps", params={"team": "north-team"}).json()["items"]
    assert [rep["id"] for rep in by_team] == ["giulia.bianchi"]

    deactivated = client.post("/v1/reps/giulia.bianchi/deactivate")
    assert deactivated.status_code == 200, deactivated.text
    assert deactivated.json()["rep"]["active"] is False
    inactive = client.get("/v1/reps", params={"active": "false"}).json()["items"]
    assert [rep["id"] for rep in inactive] == ["giulia.bianchi"]
    activated = client.post("/v1/reps/giulia.bianchi/activate")
    assert activated.status_code == 200 and activated.json()["active"] is True

    assert client.delete("/v1/reps/giulia.bianchi").status_code == 204
    _problem(client.get("/v1/reps/giulia.bianchi"), 404, "not-found")
    assert [rep["id"] for rep in client.get("/v1/reps").json()["items"]] == [generated["id"]]


def test_deactivation_moves_open_leads_and_delete_waits_for_it(
    client: TestClient, session_factory: Factory
) -> None:
    for rep_id in ("anna", "bruno", "carla"):
        _create(client, id=rep_id)
    lonely = _create(client, id="dario", team="inside-sales")
    open_leads = _give_leads(session_factory, "anna", 3)
    closed = _give_leads(session_factory, "anna", 2, stage="customer")
    assert client.get("/v1/reps/anna").json()["open_leads"] == 3

    body = _problem(client.delete("/v1/reps/anna"), 409, "rep-has-open-leads")
    assert "3 open leads" in body["detail"]

    response = client.post("/v1/reps/anna/deactivate")
    assert response.status_code == 200, response.text
    moved = response.json()
    assert (moved["moved"], moved["unassigned"]) == (3, 0)
    assert (moved["rep"]["active"], moved["rep"]["open_leads"]) == (False, 0)
    assert [_owner(session_factory, lead_id) for lead_id in open_leads] == [
        "bruno",
        "carla",
        "bruno",
    ]
    assert {_owner(session_factory, lead_id) for lead_id in closed} == {"anna"}
    counts = {rep["id"]: rep["open_leads"] for rep in client.get("/v1/reps").json()["items"]}
    assert counts == {"anna": 0, "bruno": 2, "carla": 1, "dario": 0}
    assert client.delete("/v1/reps/anna").status_code == 204

    # The only rep of a team: its leads keep the team and wait without an owner.
    waiting = _give_leads(session_factory, lonely["id"], 1)
    nobody = client.post(f"/v1/reps/{lonely['id']}/deactivate").json()
    assert (nobody["moved"], nobody["unassigned"]) == (0, 1)
    assert _owner(session_factory, waiting[0]) is None


def test_duplicate_and_missing_reps_are_problems(client: TestClient) -> None:
    _create(client, id="anna")
    body = _problem(
        client.post("/v1/reps", json={"id": "anna", "name": "A", "team": "t"}), 409, "rep-exists"
    )
    assert "anna" in body["detail"]
    for method, path in [
        ("GET", "/v1/reps/nobody"),
        ("PATCH", "/v1/reps/nobody"),
        ("DELETE", "/v1/reps/nobody"),
        ("POST", "/v1/reps/nobody/deactivate"),
        ("POST", "/v1/reps/nobody/activate"),
    ]:
        kwargs: dict[str, Any] = {"json": {}} if method == "PATCH" else {}
        response = client.request(method, path, **kwargs)
        assert "nobody" in _problem(response, 404, "not-found")["detail"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "A"}, "team"),
        ({"name": "A", "team": "t", "colour": "red"}, "colour"),
        ({"name": "", "team": "t"}, "name"),
        ({"name": "A" * 201, "team": "t"}, "name"),
        ({"name": "A", "team": "*"}, "team"),
        ({"name": "A", "team": "t", "id": "has space"}, "id"),
        ({"name": "A", "team": "t", "id": "x" * 41}, "id"),
        ({"name": "A", "team": "t", "email": "nope"}, "email"),
        ({"name": "A", "team": "t", "regions": ["r"] * 101}, "regions"),
        ({"name": "A", "team": "t", "industries": ["i" * 101]}, "industries[0]"),
        ({"name": "A", "team": "t", "capacity": -1}, "capacity"),
        ({"name": "A", "team": "t", "min_employees": 50, "max_employees": 10}, "body"),
    ],
)
def test_invalid_reps_are_422_naming_the_field(
    client: TestClient, body: dict[str, Any], field: str
) -> None:
    problem = _problem(client.post("/v1/reps", json=body), 422, "validation")
    assert field in _fields(problem), problem


def test_invalid_updates_are_422(client: TestClient) -> None:
    _create(client, id="anna", min_employees=100)
    for body, field in [
        ({"name": None}, "body"),
        ({"active": False}, "active"),
        ({"team": "x" * 201}, "team"),
    ]:
        problem = _problem(client.patch("/v1/reps/anna", json=body), 422, "validation")
        assert field in _fields(problem), problem
    # The range is checked against the stored bound too.
    problem = _problem(client.patch("/v1/reps/anna", json={"max_employees": 10}), 422, "validation")
    assert _fields(problem) == ["max_employees"]
    too_long = client.get("/v1/reps/" + "x" * 41)
    _problem(too_long, 422, "validation")
    _problem(client.get("/v1/reps", params={"team": "t" * 201}), 422, "validation")


def test_reps_need_the_reps_admin_scope(
    client: TestClient, anon_client: TestClient, make_api_key: MakeApiKey
) -> None:
    _problem(anon_client.get("/v1/reps"), 401, "unauthenticated")
    reader = make_api_key("leads:read", "leads:write", "webhooks:admin")
    admin = make_api_key("reps:admin")
    for method, path in [
        ("GET", "/v1/reps"),
        ("POST", "/v1/reps"),
        ("GET", "/v1/reps/anna"),
        ("PATCH", "/v1/reps/anna"),
        ("DELETE", "/v1/reps/anna"),
        ("POST", "/v1/reps/anna/deactivate"),
        ("POST", "/v1/reps/anna/activate"),
    ]:
        response = anon_client.request(method, path, headers=auth(reader))
        assert "reps:admin" in _problem(response, 403, "forbidden")["detail"]
    created = anon_client.post(
        "/v1/reps", json={"id": "anna", "name": "Anna", "team": "t"}, headers=auth(admin)
    )
    assert created.status_code == 201, created.text
    assert anon_client.get("/v1/reps", headers=auth(admin)).status_code == 200


# -- the command -------------------------------------------------------------------------------


@pytest.fixture
def cli_env(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run commands in an empty folder (no .env, no ./rules) against the test database."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LEADSCORE_DATABASE_URL", database_url)
    return tmp_path


def test_the_command_validates_syncs_and_lists(cli_env: Path) -> None:
    runner = CliRunner()
    # Without a file argument: the bundled rules' directory.
    checked = runner.invoke(main, ["reps", "validate"])
    assert checked.exit_code == 0, checked.output
    assert "ok (17 reps in 5 teams)" in checked.output

    # ... but it lists example people: syncing it takes naming it.
    refused = runner.invoke(main, ["reps", "sync"])
    assert refused.exit_code == 1 and "is an example" in refused.output

    path = cli_env / "reps.yaml"
    path.write_text(
        "reps:\n"
        "  - {id: anna, name: Anna Verdi, team: north-team, regions: [Lombardia], capacity: 5}\n"
        "  - {id: bruno, name: Bruno Neri, team: north-team, active: false}\n",
        encoding="utf-8",
    )
    synced = runner.invoke(main, ["reps", "sync", str(path)])
    assert synced.exit_code == 0, synced.output
    assert "2 created" in synced.output

    listed = runner.invoke(main, ["reps", "list"])
    assert listed.exit_code == 0, listed.output
    assert listed.output.splitlines() == ["anna\tnorth-team\tAnna Verdi\t0/5\tLombardia\t*\tactive"]
    everyone = runner.invoke(main, ["reps", "list", "--all", "--team", "north-team"])
    assert [line.split("\t")[0] for line in everyone.output.splitlines()] == ["anna", "bruno"]


def test_the_command_reports_file_problems_by_line(cli_env: Path) -> None:
    path = cli_env / "reps.yaml"
    path.write_text("reps:\n  - id: anna\n    team: t\n    capacity: lots\n", encoding="utf-8")
    runner = CliRunner()
    for command in ("validate", "sync"):
        result = runner.invoke(main, ["reps", command, str(path)])
        assert result.exit_code == 1
        assert result.output.splitlines() == [
            f"{path}:2: reps[0]: missing required field 'name'",
            f"{path}:4: reps[0].capacity: Input should be a valid integer, unable to parse"
            " string as an integer (got 'lots')",
        ]
