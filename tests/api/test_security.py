"""Who may call what: every route of the app against every scope, and the dashboard's headers.

The table below is the access policy. It is checked against the app's own routes, so a route
added without a row here fails the test, and each row is tried for real: no key is a 401, a key
with every scope but the one required is a 403, a key with only that scope gets through.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from tests.conftest import MakeApiKey, auth

from leadscore_api.api.deps import CHECKED_SCOPE_ATTRIBUTE, ENDPOINT_SECURITY, RequireScope
from leadscore_api.service.api_keys import SCOPES


@dataclass(frozen=True)
class Public:
    """Reachable without an API key, and why that is safe."""

    reason: str


@dataclass(frozen=True)
class Dashboard:
    """An HTML page behind the dashboard's sign-in (an API key with ``scope``, then a cookie)."""

    scope: str


Access = str | Public | Dashboard

_WEBHOOK = Public("a platform's inbound webhook: authenticated by the platform's own signature")
_DOCS = Public("the API's description, the same as the published openapi.yaml")
_SIGN_IN = Public("the dashboard's sign-in: it is where a key is presented")

ACCESS: dict[tuple[str, str], Access] = {
    ("GET", "/healthz"): Public("liveness probe for orchestrators; says only 'ok'"),
    ("GET", "/readyz"): Public("readiness probe; says only whether the database answers"),
    ("GET", "/metrics"): Public("Prometheus scrape: counts and latencies, no person or secret"),
    ("GET", "/openapi.json"): _DOCS,
    ("GET", "/docs"): _DOCS,
    ("GET", "/docs/oauth2-redirect"): _DOCS,
    ("GET", "/redoc"): _DOCS,
    ("POST", "/v1/events"): "events:write",
    ("POST", "/v1/leads/import"): "leads:write",
    ("GET", "/v1/leads/export"): "leads:read",
    ("GET", "/v1/leads"): "leads:read",
    ("GET", "/v1/leads/{lead_id}"): "leads:read",
    ("GET", "/v1/leads/{lead_id}/history"): "leads:read",
    ("GET", "/v1/leads/{lead_id}/explain"): "leads:read",
    ("PATCH", "/v1/leads/{lead_id}"): "leads:write",
    ("POST", "/v1/leads/{lead_id}/merge"): "leads:write",
    ("DELETE", "/v1/leads/{lead_id}"): "leads:write",
    ("GET", "/v1/rulesets"): "rules:admin",
    ("POST", "/v1/rulesets/reload"): "rules:admin",
    ("GET", "/v1/rulesets/{name}"): "rules:admin",
    ("GET", "/v1/rulesets/{name}/versions"): "rules:admin",
    ("GET", "/v1/rulesets/{name}/versions/{version}"): "rules:admin",
    ("GET", "/v1/rulesets/{name}/diff"): "rules:admin",
    ("POST", "/v1/rulesets/{name}/activate"): "rules:admin",
    ("POST", "/v1/rulesets/{name}/rollback"): "rules:admin",
    ("POST", "/v1/rulesets/{name}/challenger"): "rules:admin",
    ("GET", "/v1/rulesets/{name}/challenger"): "rules:admin",
    ("DELETE", "/v1/rulesets/{name}/challenger"): "rules:admin",
    ("GET", "/v1/rulesets/{name}/challenger/report"): "rules:admin",
    ("POST", "/v1/rulesets/{name}/challenger/promote"): "rules:admin",
    ("POST", "/v1/rulesets/backtest"): "rules:admin",
    ("POST", "/v1/jobs/rescore"): "rules:admin",
    ("GET", "/v1/jobs"): "rules:admin",
    ("GET", "/v1/jobs/{job_id}"): "rules:admin",
    ("POST", "/v1/api-keys"): "keys:admin",
    ("GET", "/v1/api-keys"): "keys:admin",
    ("DELETE", "/v1/api-keys/{key_id}"): "keys:admin",
    ("POST", "/v1/webhooks/{source}"): _WEBHOOK,
    ("GET", "/v1/webhooks/{source}"): Public(
        "a platform's URL check: says only the source is set up"
    ),
    ("HEAD", "/v1/webhooks/{source}"): Public("a platform's URL check, as GET without a body"),
    ("POST", "/v1/crm/connectors"): "crm:admin",
    ("GET", "/v1/crm/connectors"): "crm:admin",
    ("GET", "/v1/crm/connectors/{name}"): "crm:admin",
    ("PATCH", "/v1/crm/connectors/{name}"): "crm:admin",
    ("DELETE", "/v1/crm/connectors/{name}"): "crm:admin",
    ("POST", "/v1/crm/connectors/{name}/setup"): "crm:admin",
    ("POST", "/v1/crm/{name}/pull"): "crm:admin",
    ("POST", "/v1/crm/{name}/notifications"): Public(
        "a CRM's change notification: authenticated by the CRM's own signature, token or"
        " credentials, checked by the connector"
    ),
    ("POST", "/v1/subscriptions"): "webhooks:admin",
    ("GET", "/v1/subscriptions"): "webhooks:admin",
    ("GET", "/v1/subscriptions/{subscription_id}"): "webhooks:admin",
    ("PATCH", "/v1/subscriptions/{subscription_id}"): "webhooks:admin",
    ("DELETE", "/v1/subscriptions/{subscription_id}"): "webhooks:admin",
    ("POST", "/v1/subscriptions/{subscription_id}/enable"): "webhooks:admin",
    ("POST", "/v1/subscriptions/{subscription_id}/disable"): "webhooks:admin",
    ("POST", "/v1/subscriptions/{subscription_id}/rotate-secret"): "webhooks:admin",
    ("POST", "/v1/subscriptions/{subscription_id}/test"): "webhooks:admin",
    ("GET", "/v1/deliveries"): "webhooks:admin",
    ("GET", "/v1/deliveries/{message_id}"): "webhooks:admin",
    ("GET", "/v1/deliveries/{message_id}/attempts"): "webhooks:admin",
    ("POST", "/v1/deliveries/{message_id}/retry"): "webhooks:admin",
    ("POST", "/v1/deliveries/replay"): "webhooks:admin",
    ("GET", "/v1/reps"): "reps:admin",
    ("POST", "/v1/reps"): "reps:admin",
    ("GET", "/v1/reps/{rep_id}"): "reps:admin",
    ("PATCH", "/v1/reps/{rep_id}"): "reps:admin",
    ("DELETE", "/v1/reps/{rep_id}"): "reps:admin",
    ("POST", "/v1/reps/{rep_id}/deactivate"): "reps:admin",
    ("POST", "/v1/reps/{rep_id}/activate"): "reps:admin",
    ("GET", "/v1/reports/summary"): "leads:read",
    ("GET", "/v1/reports/kpis"): "leads:read",
    ("GET", "/v1/reports/matrix"): "leads:read",
    ("GET", "/v1/reports/funnel"): "leads:read",
    ("GET", "/v1/reports/conversion-by-band"): "leads:read",
    ("GET", "/v1/reports/crossings"): "leads:read",
    ("GET", "/v1/reports/channels"): "leads:read",
    ("PUT", "/v1/costs/{source}/{month}"): "leads:write",
    ("DELETE", "/v1/costs/{source}/{month}"): "leads:write",
    ("GET", "/v1/costs"): "leads:read",
    ("POST", "/v1/costs/import"): "leads:write",
    ("GET", "/dashboard/dashboard.css"): Public("the dashboard's stylesheet: static, no data"),
    ("GET", "/dashboard/login"): _SIGN_IN,
    ("POST", "/dashboard/login"): _SIGN_IN,
    ("POST", "/dashboard/logout"): Public("ends the caller's own session; same-origin checked"),
    ("GET", "/dashboard"): Dashboard("leads:read"),
    ("GET", "/dashboard/leads/{lead_id}"): Dashboard("leads:read"),
}

#: Values for path parameters: well-formed, naming nothing that exists (or a bundled ruleset).
_PARAMS = {
    "name": "pmi-letter-score",
    "version": "1",
    "source": "google_ads",
    "month": "2026-01",
}


def _walk(routes: list[Any]) -> Iterator[Any]:
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _walk(inner.routes)
        else:
            yield route


def app_routes(app: FastAPI) -> dict[tuple[str, str], Any]:
    """(method, path) of every route the app answers; HEAD only where it is a route of its own."""
    found: dict[tuple[str, str], Any] = {}
    for route in _walk(list(app.routes)):
        methods = set(getattr(route, "methods", None) or ())
        if "GET" in methods:
            methods.discard("HEAD")
        for method in methods:
            found[(method, route.path)] = route
    return found


def _scopes(dependant: Dependant) -> list[str]:
    own = [dependant.call.scope] if isinstance(dependant.call, RequireScope) else []
    return own + [scope for sub in dependant.dependencies for scope in _scopes(sub)]


def _url(path: str) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: _PARAMS.get(m.group(1), f"no_such_{m.group(1)}"), path)


def test_every_route_has_an_access_rule_that_matches_its_code(app: FastAPI) -> None:
    routes = app_routes(app)
    assert set(routes) - set(ACCESS) == set(), "routes without a row in ACCESS"
    assert set(ACCESS) - set(routes) == set(), "rows in ACCESS for routes that do not exist"
    for key, route in routes.items():
        declared = ACCESS[key]
        required = _scopes(route.dependant) if isinstance(route, APIRoute) else []
        checked = getattr(getattr(route, "endpoint", None), CHECKED_SCOPE_ATTRIBUTE, None)
        if checked is not None:  # the route calls RequireScope.check itself
            required.append(checked)
            extra = getattr(route, "openapi_extra", None) or {}
            assert extra.get("security") == ENDPOINT_SECURITY, (key, "undocumented API key")
        if isinstance(declared, str):
            assert declared in SCOPES, key
            assert required == [declared], (key, required)
        else:
            assert declared.reason.strip() if isinstance(declared, Public) else declared.scope
            assert required == [], (key, "a public or dashboard route asks for an API key")


def test_every_scoped_route_refuses_without_the_scope_and_admits_with_it(
    client: TestClient, anon_client: TestClient, make_api_key: MakeApiKey
) -> None:
    only = {scope: make_api_key(scope, name=f"only {scope}") for scope in SCOPES}
    all_but = {
        scope: make_api_key(*(s for s in SCOPES if s != scope), name=f"all but {scope}")
        for scope in SCOPES
    }
    checked = 0
    for (method, path), access in sorted(ACCESS.items()):
        if not isinstance(access, str):
            continue
        url = _url(path)
        none = anon_client.request(method, url)
        assert none.status_code == 401, (method, path, none.text)
        assert none.headers["www-authenticate"].startswith("Bearer")
        bogus = anon_client.request(method, url, headers=auth("lsk_0123_not-a-real-secret"))
        assert bogus.status_code == 401, (method, path)
        lacking = anon_client.request(method, url, headers=auth(all_but[access]))
        assert lacking.status_code == 403, (method, path, lacking.text)
        assert access in lacking.json()["detail"]
        allowed = anon_client.request(method, url, headers=auth(only[access]))
        assert allowed.status_code not in (401, 403), (method, path, allowed.text)
        assert allowed.status_code < 500, (method, path, allowed.text)
        checked += 1
    assert checked > 60


def _sign_in(anon_client: TestClient, key: str) -> int:
    response = anon_client.post(
        "/dashboard/login",
        data={"key": key},
        headers={"Origin": "http://testserver"},
        follow_redirects=False,
    )
    return response.status_code


def test_dashboard_pages_need_a_signed_in_key_with_their_scope(
    app: FastAPI, client: TestClient, make_api_key: MakeApiKey
) -> None:
    pages = [(m, p, a) for (m, p), a in ACCESS.items() if isinstance(a, Dashboard)]
    assert pages
    for method, path, access in pages:
        url = _url(path)
        browser = TestClient(app, base_url="http://testserver", raise_server_exceptions=False)
        refused = browser.request(method, url, follow_redirects=False)
        assert refused.status_code == 303, (path, refused.status_code)
        assert refused.headers["location"].startswith("/dashboard/login")
        lacking = make_api_key(*(s for s in SCOPES if s != access.scope))
        assert _sign_in(browser, lacking) == 403
        assert browser.request(method, url, follow_redirects=False).status_code == 303
        assert _sign_in(browser, make_api_key(access.scope)) == 303
        page = browser.request(method, url, follow_redirects=False)
        # The lead page names no lead here: its own 404 page, shown only once signed in.
        assert page.status_code in (200, 404), (path, page.status_code)
        assert page.headers["content-type"].startswith("text/html")


SECURITY_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
}


def _assert_secure_page(response: Any) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, (response.url, name)
    csp = response.headers["content-security-policy"]
    for directive in ("default-src 'none'", "frame-ancestors 'none'", "form-action 'self'"):
        assert directive in csp, (response.url, csp)
    assert "script-src" not in csp and "unsafe-inline" not in csp


def test_html_pages_carry_security_headers_and_safe_cookies(
    app: FastAPI, client: TestClient, make_api_key: MakeApiKey
) -> None:
    # Behind a TLS-terminating proxy (X-Forwarded-Proto), as in production.
    browser = TestClient(app, base_url="https://testserver", raise_server_exceptions=False)
    proxy = {"X-Forwarded-Proto": "https"}
    login = browser.get("/dashboard/login?lang=en", headers=proxy)
    _assert_secure_page(login)
    _assert_secure_page(browser.get("/dashboard", headers=proxy, follow_redirects=False))
    refused = browser.post(
        "/dashboard/login",
        data={"key": "wrong"},
        headers={**proxy, "Origin": "https://testserver"},
    )
    assert refused.status_code == 401
    _assert_secure_page(refused)
    signed_in = browser.post(
        "/dashboard/login",
        data={"key": make_api_key("leads:read")},
        headers={**proxy, "Origin": "https://testserver"},
        follow_redirects=False,
    )
    assert signed_in.status_code == 303
    _assert_secure_page(signed_in)
    cookies = signed_in.headers.get_list("set-cookie") + login.headers.get_list("set-cookie")
    assert len(cookies) == 2
    for cookie in cookies:
        flags = {part.strip().lower() for part in cookie.split(";")}
        assert {"secure", "httponly", "samesite=strict"} <= flags, cookie
    for path in ("/dashboard", "/dashboard/leads/lead_nobody", "/dashboard?period=7"):
        page = browser.get(path, headers=proxy)
        assert page.headers["content-type"].startswith("text/html")
        _assert_secure_page(page)
    assert browser.get("/dashboard/dashboard.css").headers["x-content-type-options"] == "nosniff"


def test_keys_are_compared_in_constant_time_on_digests(
    client: TestClient, anon_client: TestClient, make_api_key: MakeApiKey, monkeypatch: Any
) -> None:
    """A presented key is checked by comparing SHA-256 digests with ``hmac.compare_digest``:
    equal lengths whatever was sent, and no early exit on the first differing byte. A stored key
    with its real id and a wrong secret is refused like any unknown key."""
    import hmac

    compared: list[tuple[int, int]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((len(a), len(b)))
        return bool(real(a, b))

    monkeypatch.setattr(hmac, "compare_digest", spy)
    key = make_api_key("leads:read")
    wrong = key[:-4] + ("aaaa" if not key.endswith("aaaa") else "bbbb")
    # Every request goes to the comparison, not to the cache of keys verified recently.
    client.app.state.key_cache.ttl = 0  # type: ignore[attr-defined]
    compared.clear()
    assert anon_client.get("/v1/leads", headers=auth(wrong)).status_code == 401
    assert anon_client.get("/v1/leads", headers=auth("x" * 300)).status_code == 401
    assert anon_client.get("/v1/leads", headers=auth(key)).status_code == 200
    assert compared, "no constant-time comparison ran"
    assert all(a == b == 64 for a, b in compared), compared
