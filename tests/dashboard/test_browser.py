"""The dashboard in a real headless Chromium against a real server: sign in, read, open a lead.

Debian's ``chromium`` (``/usr/bin/chromium``) driven by Playwright with its executable path set:
no browser is downloaded. Skipped where there is no chromium; CI installs it (``.ci/run``).
Screenshots go to ``test-artifacts/dashboard/`` at the repository root (git-ignored).

The history, worked out by hand under the guide model (pmi-letter-score, the primary): a big
manufacturer's purchasing manager arrives with 50 fit points (A50: MQL); pricing, an email, a
white paper, a newsletter and a webinar add 40 (A90: tier hot, stage SQL). An HR manager of the
same firm has 40 (B40), an intern 0 (D0). Five leads arrive three days ago:

- L1 A → A90 (sql), then an opportunity: cell A/≥90, and the only lead in the hot queue;
- L2 A50 (mql): cell A/50–89; L3 B40: cell B/0–49; L4, L5 D0: cell D/0–49 twice.

So the lead conversion rate is 1 opportunity / 5 leads = 20 % (target > 15 %: met), and MQL →
SQL is 1 of 2 MQLs = 50 % (target > 30 %: met).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.conftest import TEST_ADMIN_KEY
from tests.server import Server

from leadscore_api.app import create_app
from leadscore_api.config import Settings
from leadscore_api.storage.migrate import upgrade_database

sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTEFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
#: Every wait of the browser is bounded: a broken page fails the test, it never hangs it.
TIMEOUT_MS = 20_000

pytestmark = pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason="no /usr/bin/chromium")

BIG = {"role": "purchasing manager", "employees": 250, "industry": "manufacturing"}
BIG |= {"annual_revenue_eur": 5_000_000}
HR = {**BIG, "role": "HR manager"}
INTERN = {"role": "intern"}
T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=3)
M = timedelta(minutes=1)


def ev(email: str, kind: str, at: datetime, **fields: Any) -> dict[str, Any]:
    return {
        "id": f"{email}-{kind}-{at.isoformat()}",
        "type": kind,
        "occurred_at": at.isoformat(),
        "lead": {"email": email},
        **fields,
    }


def history() -> list[dict[str, Any]]:
    def arrive(email: str, at: datetime, attributes: dict[str, Any]) -> dict[str, Any]:
        return ev(email, "form.submitted", at, attributes={**attributes, "source": "fiera"})

    l1 = "l1@metalpro.it"
    return [
        arrive(l1, T0, BIG),
        ev(l1, "page.viewed", T0 + 60 * M, properties={"url": "https://x.it/prezzi"}),
        ev(l1, "email.opened", T0 + 61 * M),
        ev(l1, "content.downloaded", T0 + 62 * M),
        ev(l1, "newsletter.subscribed", T0 + 63 * M),
        ev(l1, "webinar.attended", T0 + 64 * M),
        ev(l1, "opportunity.created", T0 + 120 * M),
        arrive("l2@metalpro.it", T0 + 5 * M, BIG),
        arrive("l3@metalpro.it", T0 + 6 * M, HR),
        arrive("l4@metalpro.it", T0 + 7 * M, INTERN),
        arrive("l5@metalpro.it", T0 + 8 * M, INTERN),
    ]


@pytest.fixture
def server(settings: Settings, tmp_path: Path) -> Iterator[str]:
    upgrade_database(settings.database_url)
    with Server(create_app(settings)) as base:
        headers = {"Authorization": f"Bearer {TEST_ADMIN_KEY}"}
        for item in history():
            response = httpx.post(f"{base}/v1/events", json=item, headers=headers, timeout=30)
            assert response.status_code in (200, 202), response.text
        yield base


@pytest.fixture
def shots(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """Screenshots taken in tmp_path, then kept under test-artifacts/dashboard/."""
    folder = tmp_path / "screens"
    folder.mkdir()
    yield folder
    target = ARTEFACTS / request.node.name.replace("[", "-").rstrip("]")
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(folder, target)


def styled(page: Any) -> bool:
    """The page has the dashboard's stylesheet applied (its background colour)."""
    colour = page.evaluate("getComputedStyle(document.body).backgroundColor")
    return bool(colour == "rgb(244, 246, 249)")


def make_reader_key(base: str) -> str:
    response = httpx.post(
        f"{base}/v1/api-keys",
        json={"name": "responsabile vendite", "scopes": ["leads:read"]},
        headers={"Authorization": f"Bearer {TEST_ADMIN_KEY}"},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    key: str = response.json()["key"]
    return key


def test_sign_in_read_the_figures_and_open_a_lead(server: str, shots: Path) -> None:
    key = make_reader_key(server)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=TIMEOUT_MS
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900}, locale="it-IT")
            page.set_default_timeout(TIMEOUT_MS)

            # Not signed in: the dashboard sends the browser to the login form.
            page.goto(f"{server}/dashboard")
            assert page.url == f"{server}/dashboard/login"
            page.fill("#key", "lsk_wrong_key")
            page.click("button[type=submit]")
            assert "Chiave non valida" in page.inner_text("#refused")
            page.fill("#key", key)
            page.click("button[type=submit]")
            page.wait_for_url(f"{server}/dashboard")

            assert page.inner_text("#cohort") == "5"
            assert styled(page)
            tiles = page.locator(".tile")
            assert tiles.count() == 6
            conversion = page.locator("[data-kpi=lead_conversion_rate]")
            assert conversion.locator(".value").inner_text() == "20,0 %"
            assert "Raggiunto" in conversion.locator(".status").inner_text()
            mql_sql = page.locator("[data-kpi=mql_to_sql_conversion]")
            assert mql_sql.locator(".value").inner_text() == "50,0 %"
            assert mql_sql.get_attribute("data-status") == "met"
            cost = page.locator("[data-kpi=cost_per_lead]")
            assert "Non calcolabile" in cost.locator(".status").inner_text()

            counts = {
                cell.get_attribute("data-cell"): int(cell.locator(".count").inner_text())
                for cell in page.locator("#matrix td").all()
            }
            assert {cell: n for cell, n in counts.items() if n} == {
                "A2": 1,
                "A1": 1,
                "B0": 1,
                "D0": 2,
            }
            assert "contatto prioritario" in page.inner_text("[data-cell=A1]")
            funnel = page.locator("#funnel [data-step] .count").all_text_contents()
            assert funnel == ["5", "2", "1", "1", "0"]
            assert page.locator("#trend rect").count() == 90
            page.screenshot(path=str(shots / "overview-desktop.png"), full_page=True)

            # The queue holds the one hot lead; its page shows the score's way up.
            rows = page.locator("#queue tbody tr")
            assert rows.count() == 1
            rows.locator("a").click()
            page.wait_for_url(f"{server}/dashboard/leads/*")
            assert page.inner_text("h1") == "l1@metalpro.it"
            assert styled(page) and page.locator("header .logout").count() == 1
            assert page.inner_text("#lead-score") == "A 90"
            dots = page.locator("#timeline circle.dot")
            scores = [int(dot.get_attribute("data-score") or "-1") for dot in dots.all()]
            assert scores[0] == 50 and scores[-1] == 90
            assert scores == sorted(scores)
            assert page.locator("#changes > li").count() == dots.count()
            page.locator("#changes details").first.locator("summary").click()
            assert page.locator("#changes details").first.locator("dl.why").count() >= 1
            page.screenshot(path=str(shots / "lead.png"), full_page=True)

            # English, and on a phone: the tiles stack, the matrix scrolls on its own.
            phone = browser.new_page(viewport={"width": 390, "height": 844})
            phone.set_default_timeout(TIMEOUT_MS)
            phone.context.add_cookies(page.context.cookies())
            phone.goto(f"{server}/dashboard?lang=en")
            assert "Lead conversion rate" in phone.inner_text(".tiles")
            first, second = (phone.locator(".tile").nth(i).bounding_box() for i in (0, 1))
            assert first is not None and second is not None
            assert first["x"] == second["x"] and second["y"] > first["y"]
            width = phone.evaluate("document.documentElement.scrollWidth")
            assert width <= 390
            phone.screenshot(path=str(shots / "overview-phone-en.png"), full_page=True)

            # Signing out ends the session: the dashboard asks for the key again.
            page.goto(f"{server}/dashboard")
            page.click(".logout button")
            page.wait_for_url(f"{server}/dashboard/login")
            page.goto(f"{server}/dashboard")
            assert page.url == f"{server}/dashboard/login"
        finally:
            browser.close()


def test_the_wall_screen_link_shows_the_dashboard(server: str, shots: Path) -> None:
    key = make_reader_key(server)
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, timeout=TIMEOUT_MS
        )
        try:
            page = browser.new_page(viewport={"width": 1920, "height": 1080})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(f"{server}/dashboard/login?token={key}")
            # The key leaves the address bar at once: the screen shows /dashboard.
            assert page.url == f"{server}/dashboard"
            assert page.inner_text("#cohort") == "5"
            page.screenshot(path=str(shots / "wall-screen.png"))
        finally:
            browser.close()
