"""Activation, rollback and reload change what every replica serves; bad reloads change nothing.

Two applications ("replicas", each with its own engine and registry) share one database; a
switch made through one is served by the other within ``LEADSCORE_RULESET_REFRESH_SECONDS``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient
from tests.conftest import MakeApiKey, auth, make_settings

from leadscore_api.cli import main
from leadscore_api.service.rulesets import RulesetRegistry
from leadscore_api.storage.migrate import upgrade_database

from .helpers import (
    INVALID,
    INVALID_LINE,
    PRIMARY,
    Replicas,
    active_version,
    admin_client,
    cli_env,
    eventually,
    post_events,
    two_replicas,
    visits,
    write_rules,
)


@pytest.fixture
def replicas(database_url: str, tmp_path: Path) -> Iterator[Replicas]:
    with two_replicas(database_url, tmp_path) as both:
        yield both


def _live_version(client: TestClient) -> int:
    """The version the replica's own registry holds now (what a batch writer scores with)."""
    registry: RulesetRegistry = client.app.state.registry  # type: ignore[attr-defined]
    return registry.rulesets[PRIMARY].version


def _lead(client: TestClient, lead_id: str) -> dict[str, object]:
    response = client.get(f"/v1/leads/{lead_id}")
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def _score_of_new_lead(client: TestClient, email: str) -> tuple[object, object]:
    """Two page views for a new lead through ``client``: its score and ruleset version."""
    lead_id = post_events(client, visits(email, 2))[-1]
    lead = _lead(client, lead_id)
    ruleset = lead["ruleset"]
    assert isinstance(ruleset, dict)
    return lead["score"], ruleset["version"]


def test_activation_and_rollback_change_what_both_replicas_serve(replicas: Replicas) -> None:
    a, b = replicas.a, replicas.b
    assert _score_of_new_lead(b, "first@example.it") == (20, 1)

    write_rules(replicas.rules, version=2, visit=30)
    response = a.post("/v1/rulesets/reload")
    assert response.status_code == 200, response.text
    assert [(f["name"], f["version"], f["status"]) for f in response.json()["files"]] == [
        (PRIMARY, 2, "activated")
    ]
    assert active_version(a) == 2
    # Replica b follows on its own, with no request asking it to.
    eventually(lambda: _live_version(b) == 2, what="replica b to load v2 unasked")
    assert active_version(b) == 2
    assert _score_of_new_lead(b, "second@example.it") == (60, 2)

    versions = b.get(f"/v1/rulesets/{PRIMARY}/versions").json()["items"]
    assert [(v["version"], v["active"]) for v in versions] == [(1, False), (2, True)]
    shown = a.get(f"/v1/rulesets/{PRIMARY}/versions/1").json()
    assert "points: 10}" in shown["content"] and shown["active"] is False

    diff = a.get(f"/v1/rulesets/{PRIMARY}/diff", params={"from": 1, "to": 2}).json()["diff"]
    changed = [line for line in diff.splitlines() if line[:1] in "+-"]
    assert changed == [
        f"--- {PRIMARY} v1",
        f"+++ {PRIMARY} v2",
        "-version: 1",
        "+version: 2",
        "-      - {id: visit, on: page.viewed, points: 10}",
        "+      - {id: visit, on: page.viewed, points: 30}",
    ]

    # Rollback in one call on replica b; replica a follows.
    response = b.post(f"/v1/rulesets/{PRIMARY}/rollback")
    assert response.status_code == 200, response.text
    assert (response.json()["version"], response.json()["previous_version"]) == (1, 2)
    eventually(lambda: active_version(a) == 1, what="replica a to serve v1 again")
    assert _score_of_new_lead(a, "third@example.it") == (20, 1)

    # v1 was the first active version: nothing further back.
    response = b.post(f"/v1/rulesets/{PRIMARY}/rollback")
    assert response.status_code == 409, response.text
    assert "first active version" in response.json()["detail"]

    # Activate v2 by number on a; b serves it.
    response = a.post(f"/v1/rulesets/{PRIMARY}/activate", params={"version": 2})
    assert response.status_code == 200, response.text
    assert response.json()["changed"] is True and response.json()["job"] is None
    eventually(lambda: active_version(b) == 2, what="replica b to serve v2 again")
    assert _score_of_new_lead(b, "fourth@example.it") == (60, 2)

    # A reload of the unchanged folder changes nothing and does not undo the activation.
    response = b.post("/v1/rulesets/reload")
    assert [f["status"] for f in response.json()["files"]] == ["unchanged"]
    missing = a.post(f"/v1/rulesets/{PRIMARY}/activate", params={"version": 7})
    assert missing.status_code == 404, missing.text


def test_an_invalid_reload_keeps_the_active_version_and_names_file_and_line(
    replicas: Replicas,
) -> None:
    a, b = replicas.a, replicas.b
    path = replicas.rules / "trial.yaml"
    path.write_text(INVALID, encoding="utf-8")

    response = a.post("/v1/rulesets/reload")
    assert response.status_code == 422, response.text
    fields = [e["field"] for e in response.json()["errors"]]
    assert fields == [f"{path}:{INVALID_LINE}"]
    assert active_version(a) == 1 and active_version(b) == 1
    assert _score_of_new_lead(a, "still@example.it") == (20, 1)

    result = CliRunner().invoke(
        main, ["rules", "reload"], env=cli_env(replicas.settings.database_url, replicas.rules)
    )
    assert result.exit_code == 1
    assert result.stderr.startswith(f"{path}:{INVALID_LINE}: ")


def test_a_changed_file_with_the_same_version_is_refused(replicas: Replicas) -> None:
    a = replicas.a
    path = write_rules(replicas.rules, version=1, visit=50)

    response = a.post("/v1/rulesets/reload")
    assert response.status_code == 409, response.text
    problem = response.json()
    assert str(path) in problem["detail"]
    assert [e["field"] for e in problem["errors"]] == [str(path)]
    assert "new version number" in problem["errors"][0]["message"]
    assert active_version(a) == 1
    assert _score_of_new_lead(a, "same@example.it") == (20, 1)
    versions = a.get(f"/v1/rulesets/{PRIMARY}/versions").json()["items"]
    assert [v["version"] for v in versions] == [1]


def test_switching_needs_the_rules_admin_scope(
    client: TestClient, make_api_key: MakeApiKey
) -> None:
    key = make_api_key("leads:read", "events:write")
    name = "pmi-letter-score"
    for method, path in [
        ("post", "/v1/rulesets/reload"),
        ("post", f"/v1/rulesets/{name}/rollback"),
        ("post", f"/v1/rulesets/{name}/activate?version=1"),
        ("get", f"/v1/rulesets/{name}/versions"),
        ("post", "/v1/jobs/rescore"),
    ]:
        response = client.request(method, path, headers=auth(key))
        assert response.status_code == 403, (path, response.text)


def test_activation_with_rescore_rescores_every_lead_in_the_serving_process(
    database_url: str, tmp_path: Path
) -> None:
    """``?rescore=true`` queues a job that ``serve``'s own job loop runs to the end."""
    rules = tmp_path / "rules"
    rules.mkdir()
    write_rules(rules, version=1, visit=10)
    settings = make_settings(
        database_url,
        rules_dir=rules,
        primary_ruleset=PRIMARY,
        run_worker=True,
        job_poll_seconds=0.1,
    )
    upgrade_database(database_url)
    with admin_client(settings) as client:
        leads = {
            email: post_events(client, visits(email, count))[-1]
            for email, count in [("zero@x.it", 0), ("one@x.it", 1), ("three@x.it", 3)]
        }
        write_rules(rules, version=2, visit=30)
        reload = client.post("/v1/rulesets/reload", params={"rescore": "true"})
        assert reload.status_code == 200, reload.text
        job = reload.json()["job"]
        assert job["kind"] == "rescore" and job["total"] == 3
        assert job["params"]["emit_webhooks"] is False

        def finished() -> bool:
            status: str = client.get(f"/v1/jobs/{job['id']}").json()["status"]
            return status == "done"

        eventually(finished, what="the re-score job to finish")
        done = client.get(f"/v1/jobs/{job['id']}").json()
        assert (done["done"], done["total"], done["progress"]) == (3, 3, 1.0)

        expected = {"zero@x.it": 0, "one@x.it": 30, "three@x.it": 90}
        for email, lead_id in leads.items():
            lead = _lead(client, lead_id)
            assert lead["score"] == expected[email]
            assert lead["ruleset"] == {"name": PRIMARY, "version": 2}
            history = client.get(f"/v1/leads/{lead_id}/history").json()["items"]
            rescored = [h for h in history if h["cause"] == "rescore"]
            # A lead the new weight does not change gets no history row.
            assert len(rescored) == (0 if email == "zero@x.it" else 1), history
            for row in rescored:
                assert row["ruleset"]["version"] == 2


def test_the_cli_lists_shows_diffs_and_switches_versions_the_replicas_serve(
    replicas: Replicas,
) -> None:
    env = cli_env(replicas.settings.database_url, replicas.rules)
    runner = CliRunner()

    def run(*args: str) -> str:
        result = runner.invoke(main, ["rules", *args], env=env)
        assert result.exit_code == 0, (args, result.output, result.stderr)
        return result.stdout

    write_rules(replicas.rules, version=2, visit=30)
    assert "trial.yaml: activated (trial v2," in run("reload")
    eventually(lambda: active_version(replicas.a) == 2, what="replica a to serve v2")

    listed = run("list", PRIMARY).splitlines()
    assert [line.split("\t")[:2] for line in listed] == [["  trial", "v1"], ["* trial", "v2"]]
    assert run("list").startswith(f"{PRIMARY}\tv2\t")
    diff = run("diff", PRIMARY, "1", "2")
    assert "-      - {id: visit, on: page.viewed, points: 10}\n" in diff
    assert "+      - {id: visit, on: page.viewed, points: 30}\n" in diff

    assert run("rollback", PRIMARY) == f"{PRIMARY}: rolled back v2 -> v1\n"
    eventually(lambda: active_version(replicas.b) == 1, what="replica b to serve v1")
    assert _score_of_new_lead(replicas.b, "cli-one@example.it") == (20, 1)
    assert "points: 10}" in run("show", PRIMARY)
    assert "points: 30}" in run("show", PRIMARY, "2")

    assert run("activate", PRIMARY, "2") == f"{PRIMARY}: v1 -> v2 active\n"
    eventually(lambda: active_version(replicas.a) == 2, what="replica a to serve v2 again")
    assert _score_of_new_lead(replicas.a, "cli-two@example.it") == (60, 2)

    refused = runner.invoke(main, ["rules", "activate", PRIMARY, "5"], env=env)
    assert refused.exit_code == 1
    assert refused.stderr == f"error: no stored version 5 of ruleset {PRIMARY!r}\n"


@pytest.mark.parametrize(
    "path",
    [
        "/v1/rulesets/bad%00name/versions",
        "/v1/rulesets/Trial/diff?from=1&to=2",
        "/v1/rulesets/trial/diff?from=1&to=99999999999999999999",
        "/v1/rulesets/trial/activate?version=-1",
        "/v1/jobs/job%00x",
    ],
)
def test_hostile_names_and_numbers_are_refused_before_the_database(
    client: TestClient, path: str
) -> None:
    method = "POST" if "activate" in path else "GET"
    response = client.request(method, path)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")


def test_a_reload_without_activation_stores_a_candidate_that_nobody_is_scored_with(
    replicas: Replicas,
) -> None:
    """The A/B workflow: store v2, run it as the challenger, promote it; v1 served until then."""
    a, b = replicas.a, replicas.b
    write_rules(replicas.rules, version=2, visit=30)
    response = a.post("/v1/rulesets/reload", params={"activate": "false"})
    assert response.status_code == 200, response.text
    assert [(f["version"], f["status"]) for f in response.json()["files"]] == [(2, "stored")]
    assert active_version(a) == 1 and active_version(b) == 1
    assert _score_of_new_lead(b, "control@example.it") == (20, 1)
    versions = a.get(f"/v1/rulesets/{PRIMARY}/versions").json()["items"]
    assert [(v["version"], v["active"]) for v in versions] == [(1, True), (2, False)]

    response = a.post(f"/v1/rulesets/{PRIMARY}/challenger", params={"version": 2})
    assert response.status_code in (200, 201), response.text
    response = a.post(f"/v1/rulesets/{PRIMARY}/challenger/promote")
    assert response.status_code == 200, response.text
    eventually(lambda: active_version(b) == 2, what="replica b to serve the promoted v2")
    assert _score_of_new_lead(b, "promoted@example.it") == (60, 2)

    result = CliRunner().invoke(
        main,
        ["rules", "reload", "--no-activate"],
        env=cli_env(replicas.settings.database_url, replicas.rules),
    )
    assert result.exit_code == 0, result.output
    assert active_version(a) == 2
