"""A generated history whose outcomes come from a known rule, sent through ``POST /v1/events``.

The rule: a lead that attended a webinar AND visited the pricing page becomes an opportunity
(a few days later); nobody else does. Groups, each lead's events one day apart:

* ``both``: webinar, then pricing, then ``opportunity.created`` 2, 4, 6, 8 days after pricing.
* ``webinar_newsletter``: newsletter, then webinar. No opportunity.
* ``newsletter``: newsletter only. No opportunity.
* ``pricing``: pricing only. No opportunity.

The active ruleset (``trial``) gives 40 points to each action, so it cannot tell ``both`` (80)
from ``webinar_newsletter`` (80).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient

#: Thirty days ago, at noon: nothing expires or decays in the trial rulesets anyway.
START = (datetime.now(UTC) - timedelta(days=30)).replace(hour=12, minute=0, second=0, microsecond=0)

ACTIVE_RULESET = """\
ruleset: trial
version: 1
timezone: UTC
components:
  behaviour:
    max: 100
    actions:
      - id: webinar
        on: webinar.attended
        points: {webinar}
        limit: {{count: 1}}
      - id: pricing
        on: page.viewed
        when: {{property: url, matches: "/pricing"}}
        points: {pricing}
        limit: {{count: 1}}
      - id: newsletter
        on: newsletter.subscribed
        points: {newsletter}
        limit: {{count: 1}}
tiers: {{hot: 75, warm: 40, cold: 0}}
stages:
  mql:
    when: {{score: {{gte: 50}}}}
  sql:
    when: {{score: {{gte: 80}}}}
"""


def ruleset_text(*, webinar: int, pricing: int, newsletter: int, version: int = 1) -> str:
    text = ACTIVE_RULESET.format(webinar=webinar, pricing=pricing, newsletter=newsletter)
    return text.replace("version: 1", f"version: {version}")


ACTIVE = ruleset_text(webinar=40, pricing=40, newsletter=40)
#: Weighs what the known rule uses: both = 90, webinar + newsletter = 55, newsletter = 10,
#: pricing = 45.
BETTER = ruleset_text(webinar=45, pricing=45, newsletter=10, version=2)
#: Weighs the newsletter: both = 40, webinar + newsletter = 80, newsletter = 60, pricing = 20.
WORSE = ruleset_text(webinar=20, pricing=20, newsletter=60, version=3)

GROUPS = {"both": 4, "webinar_newsletter": 4, "newsletter": 4, "pricing": 2}
#: Days from the pricing visit to the opportunity, per lead of ``both``.
OPPORTUNITY_AFTER_DAYS = (2, 4, 6, 8)


def _at(days: float) -> str:
    return (START + timedelta(days=days)).isoformat().replace("+00:00", "Z")


def _event(n: int, kind: str, email: str, days: float, **properties: Any) -> dict[str, Any]:
    return {
        "id": f"bt-{email}-{n}",
        "type": kind,
        "occurred_at": _at(days),
        "lead": {"email": email},
        "source": "test",
        "properties": properties,
        "attributes": {},
    }


def history_events() -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for group, size in GROUPS.items():
        for i in range(size):
            email = f"{group}-{i}@example.it"
            day = float(i)  # leads start on different days
            if group == "both":
                events += [
                    _event(1, "webinar.attended", email, day),
                    _event(2, "page.viewed", email, day + 1, url="https://x.it/pricing"),
                    _event(3, "opportunity.created", email, day + 1 + OPPORTUNITY_AFTER_DAYS[i]),
                ]
            elif group == "webinar_newsletter":
                events += [
                    _event(1, "newsletter.subscribed", email, day),
                    _event(2, "webinar.attended", email, day + 1),
                ]
            elif group == "newsletter":
                events.append(_event(1, "newsletter.subscribed", email, day))
            else:
                events.append(_event(1, "page.viewed", email, day, url="https://x.it/pricing"))
    return events


def send_history(client: TestClient) -> None:
    response = client.post("/v1/events", json={"events": history_events()})
    assert response.status_code == 200, response.text
    statuses = {r["status"] for r in response.json()["results"]}
    assert statuses == {"accepted"}, response.text
