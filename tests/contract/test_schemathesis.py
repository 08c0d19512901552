"""The contract, checked by a fuzzer: schemathesis against the live service on both databases.

Real uvicorn on loopback (``tests/server.py``), a migrated database seeded with real leads,
a subscription to a loopback receiver (allowed by ``LEADSCORE_WEBHOOK_ALLOW_PRIVATE_TARGETS``)
and a rep, so that generated requests reach the service's logic and not only its 404s: half of
the generated path parameters are replaced by ids that exist. Every operation of
``openapi.yaml`` is exercised, routes added later included, with checks that no answer is a
5xx and that every status, media type and body is the one the document promises.

Bounded for CI: a few examples per operation, derandomized (the same cases on every run), no
shrinking and no deadline.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.generation import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from tests.conftest import PG_URL, TEST_ADMIN_KEY, make_settings, reset_postgres
from tests.receiver import Receiver
from tests.server import Server

from leadscore_api.app import create_app
from leadscore_api.service.api_keys import SCOPES
from leadscore_api.storage.migrate import upgrade_database

#: Examples per operation and mode: 3 in CI; set LEADSCORE_FUZZ_EXAMPLES for a deeper local run.
MAX_EXAMPLES = int(os.environ.get("LEADSCORE_FUZZ_EXAMPLES", "3"))


@dataclass
class Live:
    """A running service, the key the fuzzer uses and ids that exist in its database."""

    url: str
    key: str
    document: dict[str, Any]
    ids: dict[str, list[str]] = field(default_factory=dict)
    turns: itertools.count[int] = field(default_factory=itertools.count)
    #: How many answers of each status passed the checks (printed: what the fuzzer reached).
    statuses: dict[int, int] = field(default_factory=dict)


def _seed(base_url: str, receiver: Receiver) -> tuple[str, dict[str, list[str]]]:
    admin = {"Authorization": f"Bearer {TEST_ADMIN_KEY}"}
    with httpx.Client(base_url=base_url, headers=admin, timeout=30) as http:
        made = http.post("/v1/api-keys", json={"name": "fuzzer", "scopes": list(SCOPES)})
        assert made.status_code == 201, made.text
        other = http.post("/v1/api-keys", json={"name": "other", "scopes": ["leads:read"]})
        events = [
            {
                "id": f"seed-{n}",
                "type": kind,
                "occurred_at": "2026-11-20T10:00:00Z",
                "lead": {"email": f"person{n % 3}@example.com", "external_id": f"crm-{n % 3}"},
                "attributes": {"company_size": 120, "job_title": "Head of Operations"},
            }
            for n, kind in enumerate(["form.submitted", "demo.requested", "page.viewed"] * 2)
        ]
        subscription = http.post(
            "/v1/subscriptions", json={"url": receiver.url, "event_types": ["*"]}
        )
        assert subscription.status_code == 201, subscription.text
        ingested = http.post("/v1/events", json={"events": events})
        assert ingested.status_code == 200, ingested.text
        lead_ids = sorted({r["lead_id"] for r in ingested.json()["results"] if r["lead_id"]})
        rep = http.post("/v1/reps", json={"name": "Maria Rossi", "email": "maria@example.com"})
        deliveries = http.get("/v1/deliveries").json().get("items", [])
        rulesets = [r["name"] for r in http.get("/v1/rulesets").json().get("items", [])]
    ids = {
        "lead_id": lead_ids,
        "subscription_id": [subscription.json()["id"]],
        "key_id": [other.json()["id"]] if other.status_code == 201 else [],
        "rep_id": [rep.json()["id"]] if rep.status_code == 201 else [],
        "message_id": [d["id"] for d in deliveries][:3],
        "name": rulesets,
        "source": ["form", "mailchimp", "sendgrid"],
    }
    return made.json()["key"], {name: values for name, values in ids.items() if values}


@pytest.fixture(scope="module", params=["sqlite"] + (["postgresql"] if PG_URL else []))
def live(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Live]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('contract') / 'leadscore.db'}"
    else:
        assert PG_URL is not None
        reset_postgres(PG_URL)
        url = PG_URL
    upgrade_database(url)
    app = create_app(make_settings(url, webhook_form_secret="form-secret", access_log=False))
    with Receiver() as receiver, Server(app) as base_url:
        key, ids = _seed(base_url, receiver)
        yield Live(url=base_url, key=key, document=app.openapi(), ids=ids)


def _fuzz(live: Live, operation: Any, mode: GenerationMode, failures: list[str]) -> None:
    """Run the examples of one operation in one mode; record what fails instead of stopping."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    def run(case: Any) -> None:
        if next(live.turns) % 2 == 0:
            for name in case.path_parameters or {}:
                if name in live.ids:
                    case.path_parameters[name] = live.ids[name][0]
        try:
            response = case.call_and_validate(
                base_url=live.url,
                headers={"Authorization": f"Bearer {live.key}"},
                checks=CHECKS,
                timeout=30,
            )
        except FailureGroup as exc:  # every failed check of the one call
            failures.append(f"{mode.value} {operation.label}: {str(exc)[:1500]}")
        else:
            live.statuses[response.status_code] = live.statuses.get(response.status_code, 0) + 1

    # Unsatisfiable: nothing to make invalid (an operation without parameters or body).
    with contextlib.suppress(Unsatisfiable):
        run()


CHECKS = [
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    content_type_conformance,
]


def test_the_live_service_keeps_its_openapi_contract(live: Live) -> None:
    schema = schemathesis.openapi.from_dict(live.document)
    failures: list[str] = []
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) > 50
    # Deletions last, so the seeded lead, subscription and rep are there for the others.
    operations.sort(key=lambda operation: operation.method.upper() == "DELETE")
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz(live, operation, mode, failures)
    print("statuses that passed:", dict(sorted(live.statuses.items())))
    assert not failures, "\n\n".join(failures)
