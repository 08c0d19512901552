"""The dashboard at ``/dashboard``: the reports as pages a sales manager reads, and who to call.

Server-rendered HTML (Jinja2 templates in ``api/dashboard_templates``), charts as inline SVG,
one stylesheet served from here: no CDN, no build step, no script needed. Pages are not API
resources and stay out of the OpenAPI document.

Sign-in (docs/dashboard.md): an API key with ``leads:read`` is checked once and exchanged for a
random session token in an HttpOnly, SameSite=Strict cookie; the session lives in the database
(``service/dashboard_sessions.py``), so every replica accepts it and revoking the key ends it.
The forms that change state (sign-in, sign-out) also insist that the browser says the request
comes from this site (Origin, else Referer): SameSite alone does not cover old browsers.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, StrictUndefined
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from leadscore_api.api import dashboard_charts as charts
from leadscore_api.api.dashboard_i18n import COOKIE as LANG_COOKIE
from leadscore_api.api.dashboard_i18n import LANGS, Lang, Translator, choose, kpi_note
from leadscore_api.api.deps import RegistryDep, SettingsDep
from leadscore_api.errors import InvalidInput, LeadNotFound
from leadscore_api.service import dashboard as service
from leadscore_api.service import dashboard_sessions as sessions
from leadscore_api.service import reports
from leadscore_api.service.api_keys import Principal
from leadscore_api.service.costs import SOURCE_PATTERN

router = APIRouter(include_in_schema=False)

SESSION_COOKIE = "leadscore_dashboard"
#: The periods the selector offers, in days; the default is the reports' own (90).
PERIODS = (30, 90, 365)
_SOURCE = re.compile(SOURCE_PATTERN)
#: As the reports API: printable text, no control characters.
_OWNER = re.compile(r"^[^\x00-\x1f\x7f]{1,200}$")
_LEAD_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,40}$")

#: No script, no frame, nothing from elsewhere: the pages need only their own stylesheet.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # The wall-screen link carries a key in its URL: never send it to another site as a Referer.
    # (Not no-referrer: Chromium then sends `Origin: null` on the pages' own forms, and the
    # sign-in's same-origin check needs the real origin.)
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

_env = Environment(
    loader=PackageLoader("leadscore_api.api", "dashboard_templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def _number(value: float | None, lang: str, digits: int = 1) -> str:
    if value is None:
        return "—"
    text = f"{value:,.{digits}f}"
    if lang == "it":
        text = text.replace(",", "\x00").replace(".", ",").replace("\x00", ".")
    return text


def _when(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _flat_mapping(value: object) -> bool:
    """A mapping of plain values: shown on one line (an explanation's rule, its score)."""
    return isinstance(value, dict) and not any(
        isinstance(item, dict | list) for item in value.values()
    )


_env.filters["num"] = _number
_env.filters["when"] = _when
_env.globals["kpi_note"] = kpi_note
_env.tests["flat_mapping"] = _flat_mapping


# -- the request's language, security and session ---------------------------------------------


def _lang(request: Request) -> Lang:
    return choose(
        request.query_params.get("lang"),
        request.cookies.get(LANG_COOKIE),
        request.headers.get("accept-language"),
    )


def _is_https(request: Request) -> bool:
    forwarded = request.headers.get("x-forwarded-proto", "").split(",")[0].strip().lower()
    return request.url.scheme == "https" or forwarded == "https"


def _render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    lang = _lang(request)
    t = Translator(lang)
    html = _env.get_template(template).render(t=t, lang=lang, langs=LANGS, **context)
    response = HTMLResponse(html, status_code=status, headers=_HEADERS)
    asked = request.query_params.get("lang")
    if asked in LANGS:
        response.set_cookie(
            LANG_COOKIE,
            asked,
            max_age=365 * 86400,
            httponly=True,
            samesite="strict",
            secure=_is_https(request),
            path="/dashboard",
        )
    return response


def _error(request: Request, status: int, message: str) -> HTMLResponse:
    return _render(request, "error.html", status=status, status_code=status, message=message)


def _same_origin(request: Request) -> bool:
    """The browser says the form was posted from this site (Origin, else Referer)."""
    host = request.headers.get("host")
    claimed = request.headers.get("origin") or request.headers.get("referer")
    if not host or not claimed or claimed == "null":
        return False
    return urlsplit(claimed).netloc == host


def _principal(request: Request, settings: SettingsDep) -> Principal | None:
    factory: sessionmaker[Session] = request.app.state.read_session_factory
    with factory() as session:
        return sessions.current(
            session, request.cookies.get(SESSION_COOKIE), settings.admin_api_key
        )


def _to_login(request: Request) -> RedirectResponse:
    lang = request.query_params.get("lang")
    suffix = f"?{urlencode({'lang': lang})}" if lang in LANGS else ""
    return RedirectResponse(f"/dashboard/login{suffix}", status_code=303, headers=_HEADERS)


def _signed_in(request: Request, settings: SettingsDep, token: str, expires: datetime) -> Response:
    response = RedirectResponse("/dashboard", status_code=303, headers=_HEADERS)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=max(1, int((expires - datetime.now(UTC)).total_seconds())),
        httponly=True,
        samesite="strict",
        secure=_is_https(request),
        path="/dashboard",
    )
    return response


def _sign_in(
    request: Request, settings: SettingsDep, presented: str, read_only: bool = False
) -> Response:
    result = sessions.sign_in(
        request.app.state.session_factory,
        presented,
        settings.admin_api_key,
        timedelta(hours=settings.dashboard_session_hours),
        read_only=read_only,
    )
    if result.token is None or result.expires_at is None:
        status = 401 if result.refused == "invalid" else 403
        return _render(request, "login.html", status=status, refused=result.refused)
    return _signed_in(request, settings, result.token, result.expires_at)


# -- pages --------------------------------------------------------------------------------------


@router.get("/dashboard/dashboard.css")
async def stylesheet() -> Response:
    css = _env.loader.get_source(_env, "dashboard.css")[0]  # type: ignore[union-attr]
    return Response(
        css,
        media_type="text/css",
        headers={"Cache-Control": "max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


@router.get("/dashboard/login")
def login_page(request: Request, settings: SettingsDep) -> Response:
    """The form; with ``?token=<key>`` (a wall screen's link, a key with only leads:read) it
    signs in at once."""
    token = request.query_params.get("token")
    if token is not None:
        return _sign_in(request, settings, token, read_only=True)
    return _render(request, "login.html", refused=None)


@router.post("/dashboard/login")
async def login(request: Request, settings: SettingsDep) -> Response:
    if not _same_origin(request):
        return _render(request, "login.html", status=403, refused="origin")
    form = await request.form()
    presented = form.get("key")
    if not isinstance(presented, str):
        return _render(request, "login.html", status=401, refused="invalid")
    return await run_in_threadpool(_sign_in, request, settings, presented)


@router.post("/dashboard/logout")
async def logout(request: Request) -> Response:
    if not _same_origin(request):
        return _error(request, 403, Translator(_lang(request))("refused_origin"))
    token = request.cookies.get(SESSION_COOKIE)
    await run_in_threadpool(sessions.sign_out, request.app.state.session_factory, token)
    response = _to_login(request)
    response.delete_cookie(SESSION_COOKIE, path="/dashboard", httponly=True, samesite="strict")
    return response


def _report_filter(request: Request, registry: RegistryDep) -> tuple[reports.ReportFilter, int]:
    """The period and filters from the query string; InvalidInput names a bad one."""
    params = request.query_params
    raw_period = params.get("period", str(reports.DEFAULT_DAYS))
    if raw_period not in {str(days) for days in PERIODS}:
        raise InvalidInput.field("period", f"must be one of {', '.join(map(str, PERIODS))}")
    days = int(raw_period)
    source = params.get("source") or None
    if source is not None and (len(source) > 100 or not _SOURCE.match(source)):
        raise InvalidInput.field("source", "must be a source name (letters, digits, _ . -)")
    owner = params.get("owner") or None
    if owner is not None and not _OWNER.match(owner):
        raise InvalidInput.field("owner", "must be printable text of at most 200 characters")
    today = datetime.now(UTC).date()
    query = reports.make_filter(
        registry,
        start=today - timedelta(days=days - 1),
        end=today,
        model=None,
        source=source,
        owner=owner,
        today=today,
    )
    return query, days


@router.get("/dashboard")
def overview(request: Request, settings: SettingsDep, registry: RegistryDep) -> Response:
    principal = _principal(request, settings)
    if principal is None:
        return _to_login(request)
    try:
        query, days = _report_filter(request, registry)
    except InvalidInput as exc:
        return _error(request, 400, str(exc))
    factory: sessionmaker[Session] = request.app.state.read_session_factory
    with factory() as session:
        data = service.overview(session, registry, query, cache=request.app.state.report_cache)
    report = data.report
    matrix = report.matrix
    largest_cell = max((c.count for row in matrix.rows for c in row), default=0) if matrix else 0
    largest_step = max((step.count for step in report.funnel), default=0)
    crossings = report.crossings
    bars, busiest = charts.day_bars(
        [(day.day.isoformat(), day.total) for day in crossings.days] if crossings else []
    )
    return _render(
        request,
        "overview.html",
        principal=principal,
        report=report,
        queue=data.queue,
        now=data.now,
        computed_at=data.computed_at,
        days=days,
        periods=PERIODS,
        heat=lambda count: charts.heat_level(count, largest_cell),
        share=lambda count: charts.share(count, largest_step),
        bars=bars,
        busiest=busiest,
    )


@router.get("/dashboard/leads/{lead_id}")
def lead_page(
    request: Request, lead_id: str, settings: SettingsDep, registry: RegistryDep
) -> Response:
    principal = _principal(request, settings)
    if principal is None:
        return _to_login(request)
    t = Translator(_lang(request))
    if not _LEAD_ID.match(lead_id):
        return _error(request, 404, t("not_found"))
    factory: sessionmaker[Session] = request.app.state.read_session_factory
    try:
        with factory() as session:
            page = service.lead_page(session, registry, lead_id)
    except LeadNotFound:
        return _error(request, 404, t("not_found"))
    chart = charts.score_line(
        [(row.at, int(row.current.get("score") or 0)) for row in page.timeline]
    )
    return _render(
        request,
        "lead.html",
        principal=principal,
        lead=page.lead,
        model=page.model,
        timeline=list(reversed(page.timeline)),
        chart=chart,
    )
