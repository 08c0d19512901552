"""Acquisition costs: entered one by one or from a CSV file, all or nothing, bad input named."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from leadscore_api.cli import main

CSV = "text/csv"


def test_put_replaces_and_get_lists_by_month_then_source(client: TestClient) -> None:
    first = client.put("/v1/costs/paid_search/2026-10", json={"amount": 120.456})
    assert first.status_code == 200, first.text
    assert first.json()["amount"] == 120.46
    client.put("/v1/costs/paid_search/2026-10", json={"amount": 99})
    client.put("/v1/costs/fiera/2026-09", json={"amount": 0})
    items = client.get("/v1/costs").json()["items"]
    assert [(i["source"], i["month"], i["amount"]) for i in items] == [
        ("fiera", "2026-09", 0.0),
        ("paid_search", "2026-10", 99.0),
    ]
    only = client.get("/v1/costs", params={"from_month": "2026-10"}).json()["items"]
    assert [i["source"] for i in only] == ["paid_search"]


def test_delete_removes_an_entry_and_404s_the_second_time(client: TestClient) -> None:
    client.put("/v1/costs/paid_search/2026-10", json={"amount": 1})
    assert client.delete("/v1/costs/paid_search/2026-10").status_code == 204
    again = client.delete("/v1/costs/paid_search/2026-10")
    assert again.status_code == 404
    assert again.headers["content-type"].startswith("application/problem+json")


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/costs/paid_search/2026-10", {"amount": -1}, "amount"),
        ("/v1/costs/paid_search/2026-10", {"amount": 1e12}, "amount"),
        ("/v1/costs/paid_search/2026-10", {"amount": "lots"}, "amount"),
        ("/v1/costs/paid_search/2026-10", {}, "amount"),
        ("/v1/costs/paid_search/2026-10", {"amount": 1, "currency": "USD"}, "currency"),
        ("/v1/costs/paid_search/2026-13", {"amount": 1}, "month"),
        ("/v1/costs/paid_search/10-2026", {"amount": 1}, "month"),
        ("/v1/costs/paid_search/0000-01", {"amount": 1}, "month"),
        ("/v1/costs/bad%00source/2026-10", {"amount": 1}, "source"),
        ("/v1/costs/_x/2026-10", {"amount": 1}, "source"),
    ],
)
def test_bad_costs_are_refused_naming_the_field(
    client: TestClient, path: str, body: dict[str, object], field: str
) -> None:
    response = client.put(path, json=body)
    assert response.status_code == 422, response.text
    assert field in [error["field"] for error in response.json()["errors"]]
    assert client.get("/v1/costs").json()["items"] == []


def test_a_huge_number_in_the_body_is_refused(client: TestClient) -> None:
    response = client.put(
        "/v1/costs/paid_search/2026-10",
        content=b'{"amount": 1e400}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code in (400, 422), response.text
    assert client.get("/v1/costs").json()["items"] == []


def test_csv_import_in_italian_spreadsheet_format(client: TestClient) -> None:
    data = "\ufefffonte;mese;costo\npaid_search;2026-10;1.250,50\nreferral;2026-10;0\n\n"
    response = client.post("/v1/costs/import", content=data.encode(), headers={"Content-Type": CSV})
    assert response.status_code == 200, response.text
    stored = {
        (i["source"], i["month"]): i["amount"] for i in client.get("/v1/costs").json()["items"]
    }
    assert stored == {("paid_search", "2026-10"): 1250.5, ("referral", "2026-10"): 0.0}


def test_csv_import_is_all_or_nothing_and_names_each_bad_row(client: TestClient) -> None:
    data = (
        "source,month,amount\n"
        "paid_search,2026-10,100\n"
        "referral,2026-13,5\n"
        "social,2026-10,-3\n"
        "paid_search,2026-10,7\n"
    )
    response = client.post("/v1/costs/import", content=data.encode(), headers={"Content-Type": CSV})
    assert response.status_code == 422, response.text
    fields = [error["field"] for error in response.json()["errors"]]
    assert fields == ["rows[2].month", "rows[3].amount", "rows[4]"]
    assert client.get("/v1/costs").json()["items"] == []


@pytest.mark.parametrize(
    ("data", "field"),
    [
        (b"source,month,amount\npaid\x00,2026-10,1\n", "body"),
        (b"source,month,amount\n\xff\xfe,2026-10,1\n", "body"),
        (b"source,month\npaid,2026-10\n", "header"),
        (b"source,month,amount\n", "body"),
        (b"", "body"),
        (b"source,month,amount\npaid,2026-10,1e999\n", "rows[1].amount"),
        (b"source,month,amount\npaid,2026-10,NaN\n", "rows[1].amount"),
    ],
)
def test_hostile_or_broken_csv_is_refused(client: TestClient, data: bytes, field: str) -> None:
    response = client.post("/v1/costs/import", content=data, headers={"Content-Type": CSV})
    assert response.status_code == 422, response.text
    assert field in [error["field"] for error in response.json()["errors"]]
    assert client.get("/v1/costs").json()["items"] == []


def test_csv_import_wants_csv(client: TestClient) -> None:
    response = client.post("/v1/costs/import", json=[{"source": "x"}])
    assert response.status_code == 415
    assert response.headers["content-type"].startswith("application/problem+json")


@pytest.fixture
def cli_env(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Run commands in an empty folder (no .env, no ./rules) against the test database."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LEADSCORE_DATABASE_URL", database_url)
    return tmp_path


def test_the_command_imports_all_or_nothing_and_lists(cli_env: Path) -> None:
    runner = CliRunner()
    bad = cli_env / "bad.csv"
    bad.write_text("fonte;mese;costo\nsocial;2026-10;12\nsocial;2026-1;3\n", encoding="utf-8")
    refused = runner.invoke(main, ["costs", "import", str(bad)])
    assert refused.exit_code == 1
    assert "rows[2].month" in refused.output
    assert runner.invoke(main, ["costs", "list"]).output == ""

    good = cli_env / "costs.csv"
    good.write_text(
        "fonte;mese;costo\nsocial;2026-10;1.200,00\nfiera;2026-10;0\n", encoding="utf-8"
    )
    stored = runner.invoke(main, ["costs", "import", str(good)])
    assert stored.exit_code == 0, stored.output
    assert "2 costs stored" in stored.output
    listed = runner.invoke(main, ["costs", "list"]).output.splitlines()
    assert listed == ["2026-10\tfiera\t0.00", "2026-10\tsocial\t1200.00"]
