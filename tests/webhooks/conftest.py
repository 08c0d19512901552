"""Fixtures for the webhook tests: every source configured with secrets the tests create."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from tests.conftest import make_settings

from leadscore_api.config import Settings

from . import platforms as p

TYPEFORM_FIELD_MAP = '{"job": "role", "rev": "annual_revenue_eur"}'


@pytest.fixture(scope="session")
def sendgrid_keys() -> p.SendGridKeys:
    return p.SendGridKeys()


@pytest.fixture
def settings(database_url: str, sendgrid_keys: p.SendGridKeys) -> Settings:
    return make_settings(
        database_url,
        webhook_sendgrid_secret=sendgrid_keys.public_b64,
        webhook_mailgun_secret=p.MAILGUN_KEY,
        webhook_mailchimp_secret=p.TOKEN,
        webhook_mandrill_secret=p.MANDRILL_KEY,
        webhook_mandrill_url=p.MANDRILL_URL,
        webhook_postmark_secret=p.BASIC_SECRET,
        webhook_brevo_secret=p.BASIC_SECRET,
        webhook_typeform_secret=p.TYPEFORM_SECRET,
        webhook_typeform_field_map=TYPEFORM_FIELD_MAP,
        webhook_form_secret=p.TOKEN,
    )


@pytest.fixture
def webhook_client(client: TestClient) -> TestClient:
    """A client without the admin key: platforms never send one."""
    return TestClient(client.app, base_url="http://testserver", raise_server_exceptions=False)


def lead(client: TestClient, email: str) -> dict[str, Any] | None:
    """The lead with this email, through the CRM API (admin key), or None."""
    response = client.get("/v1/leads", params={"email": email})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items[0] if items else None


def score_of(client: TestClient, email: str) -> int:
    """The score of the lead with this email, which must exist."""
    found = lead(client, email)
    assert found is not None, email
    score: int = found["score"]
    return score


def seed_fit(client: TestClient, email: str) -> int:
    """Give a lead a full B2B fit (50 points), so behaviour points count; returns its score."""
    response = client.post(
        "/v1/events",
        json={
            "id": f"seed-{email}",
            "type": "lead.attributes_updated",
            "occurred_at": "2026-11-01T10:00:00Z",
            "lead": {"email": email},
            "attributes": {
                "role": "Purchasing manager",
                "industry": "manufacturing",
                "employees": 250,
                "annual_revenue_eur": 5_000_000,
            },
        },
    )
    assert response.status_code == 200, response.text
    assert response.json()["results"][0]["status"] == "accepted", response.text
    return score_of(client, email)
