"""The dashboard's pages over plain HTTP: sign-in, sessions, languages, hostile input.

The browser test (test_browser.py) shows the pages work in Chromium; these check what a browser
does not show: status codes, cookie flags, and that revoking a key or signing out ends a session.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import delete, select
from sqlalchemy.orm import Session, sessionmaker
from tests.conftest import TEST_ADMIN_KEY, MakeApiKey

from leadscore_api.service import dashboard_sessions
from leadscore_api.storage.base import utcnow
from leadscore_api.storage.delivery_models import LeadTimer
from leadscore_api.storage.models import Lead

ORIGIN = {"Origin": "http://testserver"}


def sign_in(client: TestClient, key: str, **headers: str) -> tuple[int, str | None]:
    response = client.post(
        "/dashboard/login",
        data={"key": key},
        headers={**ORIGIN, **headers},
        follow_redirects=False,
    )
    return response.status_code, response.headers.get("set-cookie")


def test_pages_redirect_to_the_login_without_a_session(anon_client: TestClient) -> None:
    for path in ("/dashboard", "/dashboard/leads/some-lead", "/dashboard?period=30"):
        response = anon_client.get(path, follow_redirects=False)
        assert response.status_code == 303, path
        assert response.headers["location"] == "/dashboard/login"
    login = anon_client.get("/dashboard/login")
    assert login.status_code == 200
    assert 'name="key"' in login.text and 'type="password"' in login.text


def test_a_wrong_key_is_refused_and_gets_no_session(anon_client: TestClient) -> None:
    for wrong in ("nope", "lsk_abc_def", TEST_ADMIN_KEY + "x", "x" * 5000):
        status, cookie = sign_in(anon_client, wrong)
        assert status == 401 and cookie is None
    response = anon_client.post(
        "/dashboard/login", data={"key": "nope"}, headers=ORIGIN, follow_redirects=False
    )
    assert "Chiave non valida" in response.text
    assert anon_client.get("/dashboard", follow_redirects=False).status_code == 303


@pytest.mark.parametrize(
    "body", [b"key=%00", b"key=%ED%A0%80", b"key=\xff\xfe", b"nokey=1", b"key=a&key=b"]
)
def test_hostile_sign_in_bodies_are_refused_not_crashed(
    anon_client: TestClient, body: bytes
) -> None:
    response = anon_client.post(
        "/dashboard/login",
        content=body,
        headers={**ORIGIN, "Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert response.status_code == 401
    assert "set-cookie" not in response.headers


def test_a_key_without_leads_read_is_refused(
    anon_client: TestClient, make_api_key: MakeApiKey
) -> None:
    writer = make_api_key("events:write", "leads:write")
    status, cookie = sign_in(anon_client, writer)
    assert status == 403 and cookie is None


def test_the_session_cookie_is_httponly_and_samesite_strict(
    anon_client: TestClient, make_api_key: MakeApiKey
) -> None:
    status, cookie = sign_in(anon_client, make_api_key("leads:read"))
    assert status == 303 and cookie is not None
    flags = [part.strip().lower() for part in cookie.split(";")]
    assert "httponly" in flags and "samesite=strict" in flags
    assert "path=/dashboard" in flags and "secure" not in flags
    assert TEST_ADMIN_KEY not in cookie
    page = anon_client.get("/dashboard")
    assert page.status_code == 200
    assert page.headers["cache-control"] == "no-store"
    assert "script-src" not in page.headers["content-security-policy"]
    # Behind a TLS proxy the cookie is Secure too.
    _, secure = sign_in(anon_client, TEST_ADMIN_KEY, **{"X-Forwarded-Proto": "https"})
    assert secure is not None and "secure" in secure.lower().split("; ")


def test_sign_in_insists_on_coming_from_this_site(anon_client: TestClient) -> None:
    for headers in ({}, {"Origin": "https://evil.example"}, {"Origin": "null"}):
        response = anon_client.post(
            "/dashboard/login",
            data={"key": TEST_ADMIN_KEY},
            headers=headers,
            follow_redirects=False,
        )
        assert response.status_code == 403, headers
        assert "set-cookie" not in response.headers
    referer = {"Referer": "http://testserver/dashboard/login"}
    status, cookie = sign_in(anon_client, TEST_ADMIN_KEY, Origin="", **referer)
    assert status == 303 and cookie is not None


def test_a_revoked_key_ends_its_sessions(
    client: TestClient, anon_client: TestClient, make_api_key: MakeApiKey
) -> None:
    key = make_api_key("leads:read")
    assert sign_in(anon_client, key)[0] == 303
    assert anon_client.get("/dashboard", follow_redirects=False).status_code == 200
    key_id = key.split("_")[1]
    assert client.delete(f"/v1/api-keys/{key_id}").status_code == 204
    after = anon_client.get("/dashboard", follow_redirects=False)
    assert after.status_code == 303 and after.headers["location"] == "/dashboard/login"


def test_sign_out_deletes_the_session(anon_client: TestClient, make_api_key: MakeApiKey) -> None:
    _, cookie = sign_in(anon_client, make_api_key("leads:read"))
    assert cookie is not None
    token = cookie.split(";")[0].split("=", 1)[1]
    refused = anon_client.post("/dashboard/logout", follow_redirects=False)
    assert refused.status_code == 403  # no Origin: not from this site
    out = anon_client.post("/dashboard/logout", headers=ORIGIN, follow_redirects=False)
    assert out.status_code == 303 and out.headers["location"] == "/dashboard/login"
    # The old token is dead in the database, not only forgotten by this browser.
    anon_client.cookies.set("leadscore_dashboard", token, path="/dashboard")
    assert anon_client.get("/dashboard", follow_redirects=False).status_code == 303


def test_a_session_expires(
    anon_client: TestClient, session_factory: sessionmaker[Session], make_api_key: MakeApiKey
) -> None:
    _, cookie = sign_in(anon_client, make_api_key("leads:read"))
    assert cookie is not None
    token = cookie.split(";")[0].split("=", 1)[1]
    with session_factory() as session:
        assert dashboard_sessions.current(session, token, TEST_ADMIN_KEY) is not None
        later = utcnow() + timedelta(hours=8, minutes=1)
        assert dashboard_sessions.current(session, token, TEST_ADMIN_KEY, now=later) is None


def test_the_wall_screen_link_signs_in_with_a_read_only_key(
    anon_client: TestClient, make_api_key: MakeApiKey
) -> None:
    reader = make_api_key("leads:read", name="wall screen")
    response = anon_client.get(f"/dashboard/login?token={reader}", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/dashboard"
    assert response.headers["referrer-policy"] == "same-origin"
    assert "httponly" in response.headers["set-cookie"].lower()
    page = anon_client.get("/dashboard")
    assert page.status_code == 200 and "wall screen" in page.text
    bad = anon_client.get("/dashboard/login?token=lsk_x_y", follow_redirects=False)
    assert bad.status_code == 401


def test_the_wall_screen_link_refuses_keys_that_can_do_more(
    anon_client: TestClient, make_api_key: MakeApiKey
) -> None:
    """A key in a URL ends up in history and logs: the link takes only read-only keys."""
    for key in (TEST_ADMIN_KEY, make_api_key("leads:read", "leads:write")):
        response = anon_client.get(
            "/dashboard/login", params={"token": key}, follow_redirects=False
        )
        assert response.status_code == 403
        assert "set-cookie" not in response.headers
        assert "solo ambito leads:read" in response.text
    # The same keys sign in through the form.
    assert sign_in(anon_client, TEST_ADMIN_KEY)[0] == 303


def test_italian_by_default_english_on_request(anon_client: TestClient) -> None:
    assert sign_in(anon_client, TEST_ADMIN_KEY)[0] == 303
    italian = anon_client.get("/dashboard")
    assert '<html lang="it">' in italian.text and "Cruscotto lead" in italian.text
    assert "Tasso di conversione lead" in italian.text
    english = anon_client.get("/dashboard?lang=en")
    assert '<html lang="en">' in english.text and "Lead conversion rate" in english.text
    # The choice sticks (cookie) until changed.
    assert '<html lang="en">' in anon_client.get("/dashboard").text
    assert '<html lang="it">' in anon_client.get("/dashboard?lang=it").text
    anon_client.cookies.delete("leadscore_lang", path="/dashboard")
    browser_en = anon_client.get("/dashboard", headers={"Accept-Language": "en-GB,en;q=0.8"})
    assert '<html lang="en">' in browser_en.text
    browser_de = anon_client.get("/dashboard", headers={"Accept-Language": "de-DE"})
    assert '<html lang="it">' in browser_de.text


@pytest.mark.parametrize(
    "path",
    [
        "/dashboard?period=7",
        "/dashboard?period=%00",
        "/dashboard?period=99999999999999999999999",
        "/dashboard?owner=%00",
        "/dashboard?source=%3Cscript%3E",
        "/dashboard?source=" + "a" * 500,
        "/dashboard?owner=%ED%A0%80%00",
    ],
)
def test_hostile_query_parameters_get_a_400_page(anon_client: TestClient, path: str) -> None:
    assert sign_in(anon_client, TEST_ADMIN_KEY)[0] == 303
    response = anon_client.get(path)
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("text/html")
    assert "<script>" not in response.text


@pytest.mark.parametrize("lead_id", ["%00", "x" * 41, "no-such-lead", "a%20b", "%E2%80%AE"])
def test_a_bad_or_unknown_lead_is_a_404_page(anon_client: TestClient, lead_id: str) -> None:
    assert sign_in(anon_client, TEST_ADMIN_KEY)[0] == 303
    response = anon_client.get(f"/dashboard/leads/{lead_id}")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("text/html")


def test_the_stylesheet_is_served_without_a_session(anon_client: TestClient) -> None:
    css = anon_client.get("/dashboard/dashboard.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert ".tiles" in css.text


def test_the_queue_shows_hot_leads_overdue_first(
    client: TestClient, anon_client: TestClient, session_factory: sessionmaker[Session]
) -> None:
    """Three hot leads (A90: a big manufacturer who read everything) and a cold one; due times
    are set on the rows directly, as the procedure's workflows would: one an hour overdue, one
    due in two days, one with none. The queue lists overdue, then due, then none; not the cold."""
    now = utcnow().replace(microsecond=0)
    big = {"role": "purchasing manager", "employees": 250, "industry": "manufacturing"}
    big |= {"annual_revenue_eur": 5_000_000}
    kinds = ["page.viewed", "email.opened", "content.downloaded", "newsletter.subscribed"]
    kinds += ["webinar.attended"]
    events: list[dict[str, object]] = []
    for name in ("later", "overdue", "undated"):
        at = now - timedelta(days=1)
        events.append(
            {
                "id": f"{name}-0",
                "type": "form.submitted",
                "occurred_at": at.isoformat(),
                "lead": {"email": f"{name}@x.it"},
                "attributes": big,
            }
        )
        for n, kind in enumerate(kinds, start=1):
            events.append(
                {
                    "id": f"{name}-{n}",
                    "type": kind,
                    "occurred_at": (at + timedelta(minutes=n)).isoformat(),
                    "lead": {"email": f"{name}@x.it"},
                    "properties": {"url": "https://x.it/prezzi"} if n == 1 else {},
                }
            )
    events.append(
        {
            "id": "cold-0",
            "type": "form.submitted",
            "occurred_at": now.isoformat(),
            "lead": {"email": "cold@x.it"},
            "attributes": {"role": "intern"},
        }
    )
    assert client.post("/v1/events", json={"events": events}).status_code == 200
    with session_factory() as session, session.begin():
        for lead in session.scalars(select(Lead)):
            if lead.email == "overdue@x.it":
                lead.next_action_due = now - timedelta(hours=1)
            elif lead.email == "later@x.it":
                lead.next_action_due = now + timedelta(days=2)
            else:
                lead.next_action_due = None
        # The procedure's own deadlines (follow-ups, SLAs) count when no action has a due time:
        # set aside here, and brought back below.
        session.execute(delete(LeadTimer))
    assert sign_in(anon_client, TEST_ADMIN_KEY)[0] == 303

    def queue_rows() -> list[str]:
        page = anon_client.get("/dashboard?lang=en").text
        queue = page[page.index('id="queue"') : page.index("</table>", page.index('id="queue"'))]
        return queue.split("<tr")[2:]

    rows = queue_rows()
    assert [row.split("@x.it")[0].rsplit(">", 1)[1] for row in rows] == [
        "overdue",
        "later",
        "undated",
    ]
    assert "Overdue" in rows[0] and 'class="overdue"' in rows[0]
    assert "Overdue" not in rows[1] and "Overdue" not in rows[2]

    # A follow-up two hours overdue for the lead whose action has no due time: it comes first.
    with session_factory() as session, session.begin():
        undated = session.scalars(select(Lead).where(Lead.email == "undated@x.it")).one()
        session.add(
            LeadTimer(
                lead_id=undated.id,
                ruleset_name="pmi-letter-score",
                kind="followup",
                due_at=now - timedelta(hours=2),
                detail={},
            )
        )
    rows = queue_rows()
    assert [row.split("@x.it")[0].rsplit(">", 1)[1] for row in rows] == [
        "undated",
        "overdue",
        "later",
    ]
    assert "Overdue" in rows[0] and 'class="overdue"' in rows[0]


def test_kpi_notes_are_in_the_pages_language() -> None:
    """The reports service explains an unknown KPI in English; the Italian page in Italian."""
    from leadscore_api.api.dashboard_i18n import kpi_note

    assert kpi_note("3 of 7 leads handed over are not contacted yet", "it") == (
        "3 dei 7 lead passati alle vendite non sono ancora stati contattati"
    )
    assert kpi_note("costs miss some of the period's months for: fiera, webinar", "it") == (
        "mancano i costi di alcuni mesi del periodo per: fiera, webinar"
    )
    assert kpi_note("no lead arrived in the period", "en") == "no lead arrived in the period"
    assert kpi_note("something new", "it") == "something new"


def test_every_note_the_reports_service_writes_has_an_italian_text() -> None:
    """Each literal note in service/reports.py matches one of the page's Italian patterns."""
    import inspect
    import re

    from leadscore_api.api.dashboard_i18n import kpi_note
    from leadscore_api.service import reports

    source = inspect.getsource(reports)
    notes = set(
        re.findall(
            r'"((?:no|none|the|costs|leads)[^"]*?(?:yet|period|lead|stages|stage|owner|months|ago|out: ))"',
            source,
        )
    )
    assert len(notes) >= 10, notes
    for note in notes:
        sample = re.sub(r"\{[^}]+\}", "7", note) + ("x" if note.endswith(": ") else "")
        assert kpi_note(sample, "it") != sample, note
