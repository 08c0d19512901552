"""Prometheus metrics an operator watches, and the example Grafana dashboard built on them."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker
from tests.conftest import TEST_ADMIN_KEY, auth, make_settings
from tests.delivery.conftest import drive, make_worker, qualified_stream
from tests.receiver import Reply, receiving

from leadscore_api.app import create_app
from leadscore_api.config import Settings
from leadscore_api.storage.base import utcnow
from leadscore_api.storage.delivery_models import OutboxMessage
from leadscore_api.storage.migrate import upgrade_database

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "leadscore-dashboard.json"
FORM_TOKEN = "form-token-metrics"


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_settings(database_url, webhook_form_secret=FORM_TOKEN)


def _sample(text: str, name: str, labels: str = "") -> float:
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    assert match, f"{name}{labels} not in /metrics"
    return float(match.group(1))


def test_outbox_depth_and_lag_are_read_at_scrape_time(
    client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    with receiving() as receiver:
        receiver.default = Reply(200)
        assert client.post(
            "/v1/subscriptions", json={"url": receiver.url, "event_types": ["*"]}
        ).is_success
        assert _sample(client.get("/metrics").text, "leadscore_outbox_pending") == 0
        client.post("/v1/events", json={"events": qualified_stream("anna@metalpro.it")})
        form = client.post(
            "/v1/webhooks/form",
            json={"email": "luca@fonderia.it"},
            headers={"X-Leadscore-Token": FORM_TOKEN},
        )
        assert form.status_code == 200
        with session_factory() as session:
            session.execute(
                update(OutboxMessage).values(next_attempt_at=utcnow() - timedelta(minutes=10))
            )
            session.commit()
        text = client.get("/metrics").text
        pending = _sample(text, "leadscore_outbox_pending")
        assert pending >= 2
        assert 600 <= _sample(text, "leadscore_outbox_lag_seconds") < 700
        labels = '{source="form",status="accepted",type="form.submitted"}'
        assert _sample(text, "leadscore_events_total", labels) == 1
        assert _sample(text, "leadscore_transitions_total", '{type="lead.mql"}') >= 1

        drive(make_worker(session_factory), lambda: len(receiver.delivered()) >= pending)
    text = client.get("/metrics").text
    assert _sample(text, "leadscore_outbox_pending") == 0
    assert _sample(text, "leadscore_outbox_lag_seconds") == 0


def _names_in(text: str) -> set[str]:
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith(("# HELP ", "# TYPE ")):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


def _exprs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["expr"]] if isinstance(node.get("expr"), str) else []
        return found + [e for value in node.values() for e in _exprs(value)]
    if isinstance(node, list):
        return [e for value in node for e in _exprs(value)]
    return []


def test_every_metric_the_grafana_dashboard_queries_exists(settings: Settings) -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert dashboard["panels"] and dashboard["title"]
    # With the worker in the app, as `leadscore serve` runs it: its series are in /metrics.
    upgrade_database(settings.database_url)
    app = create_app(settings.model_copy(update={"run_worker": True}))
    with TestClient(app, headers=auth(TEST_ADMIN_KEY)) as client:
        client.post("/v1/events", json={"events": qualified_stream("anna@metalpro.it")})
        exposed = _names_in(client.get("/metrics").text)
    queried = {name for expr in _exprs(dashboard) for name in re.findall(r"leadscore_\w+", expr)}
    assert len(queried) >= 10
    suffixes = ("_bucket", "_count", "_sum", "_total")
    for name in sorted(queried):
        base = next((name.removesuffix(s) for s in suffixes if name.endswith(s)), name)
        assert name in exposed or base in exposed, f"the dashboard queries {name}, not exposed"
    for panel in dashboard["panels"]:
        assert panel["targets"] and all(t["expr"].strip() for t in panel["targets"]), panel
