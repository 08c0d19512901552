"""A stand-in of Pipedrive's API (v2, and the v1 endpoints v2 lacks: merge, webhooks).

It checks what Pipedrive checks where the connector could get it wrong: the ``x-api-token``
header or an OAuth bearer token it issued, the request fields each endpoint knows (an unknown
field or a custom-field key the account does not have is a 400), the types of custom-field
values, the search limit (10 per 2 s) and the daily budget. Answers have Pipedrive's shapes:
``{"success": true, "data": ..., "additional_data": {"next_cursor": ...}}``, errors as
``{"success": false, "error": ..., "errorCode": ...}``, rate-limit headers on every answer.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from tests.crm.standins.common import CallLog, serve

from leadscore_api.crm.base import ConnectorConfig, OutcomeType
from leadscore_api.crm.pipedrive import PipedriveConnector

API_TOKEN = "0123456789abcdef0123456789abcdef01234567"
WEBHOOK_USER = "leadscore"
WEBHOOK_PASSWORD = "long-random-webhook-password-4f9a"
CLIENT_ID = "pd-client-id"
CLIENT_SECRET = "pd-client-secret"
REFRESH_TOKEN = "pd-refresh-token"
#: The person label a rep sets when sales accepts a lead (``options.accepted_label_ids``).
ACCEPTED_LABEL = 5
USERS = {1: "Admin", 42: "Sara Sales", 77: "Tom Closer"}
COMPANY_ID = 9001

PERSON_KEYS = {
    "name",
    "owner_id",
    "org_id",
    "emails",
    "phones",
    "visible_to",
    "label_ids",
    "marketing_status",
    "add_time",
    "custom_fields",
}
ACTIVITY_KEYS = {
    "subject",
    "type",
    "owner_id",
    "deal_id",
    "lead_id",
    "org_id",
    "project_id",
    "due_date",
    "due_time",
    "duration",
    "busy",
    "done",
    "location",
    "participants",
    "attendees",
    "public_description",
    "priority",
    "outcome",
    "note",
}
ACTIVITY_TYPES = {"call", "meeting", "task", "deadline", "email", "lunch"}
FIELD_TYPES = {
    "varchar",
    "varchar_auto",
    "text",
    "double",
    "monetary",
    "date",
    "set",
    "enum",
    "user",
    "org",
    "people",
    "phone",
    "time",
    "timerange",
    "daterange",
    "address",
}
WEBHOOK_ACTIONS = {"create", "change", "delete", "*"}
WEBHOOK_OBJECTS = {"activity", "deal", "lead", "note", "organization", "person", "product", "*"}


def now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Refusal(Exception):
    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


def _code(name: str, serial: int) -> str:
    return hashlib.sha1(f"{name}:{serial}".encode()).hexdigest()


class PipedriveStandIn:
    def __init__(self, **options: Any) -> None:
        self.base_url = ""
        self.reset(**options)
        self.app = self._build()

    def reset(self, **options: Any) -> None:
        """Forget every record and call, as a fresh account (lets one served stand-in serve
        many tests: starting uvicorn per test would cost more than the tests)."""
        self.options = options
        self.log = CallLog()
        self.page_size_cap = int(options.get("page_size_cap", 500))
        self.daily_left = int(options.get("daily_budget", 100_000))
        self.token_ttl = int(options.get("token_ttl", 3599))
        self.persons: dict[int, dict[str, Any]] = {}
        self.deals: dict[int, dict[str, Any]] = {}
        self.activities: dict[int, dict[str, Any]] = {}
        self.webhooks: list[dict[str, Any]] = []
        self.fields: list[dict[str, Any]] = []
        self.access_tokens: dict[str, float] = {}
        self.refresh_token = REFRESH_TOKEN
        self.token_requests = 0
        self.failures: list[tuple[int, dict[str, Any]]] = []
        self.searches: list[float] = []
        self._serial = 100
        for code, name, kind in (
            ("name", "Name", "varchar"),
            ("emails", "Email", "varchar"),
            ("phones", "Phone", "phone"),
            ("owner_id", "Owner", "user"),
            ("label_ids", "Labels", "set"),
        ):
            self.fields.append(self._field(name, kind, code=code, custom=False))
        self.add_field("Industry", "varchar")
        if options.get("with_fields", True):
            for ours, name in PipedriveConnector.default_field_map.items():
                self.add_field(name, "double" if ours == "score" else "varchar")

    # -- the interface the tests use ---------------------------------------------------------

    def connector_config(self, name: str = "pipedrive", **overrides: Any) -> ConnectorConfig:
        config = ConnectorConfig(
            name=name,
            kind="pipedrive",
            base_url=self.base_url,
            credentials={
                "api_token": API_TOKEN,
                "webhook_user": WEBHOOK_USER,
                "webhook_password": WEBHOOK_PASSWORD,
            },
            owner_map={"rep-sara": "42", "rep-tom": "77"},
            options={
                "accepted_label_ids": [ACCEPTED_LABEL],
                "oauth_token_url": f"{self.base_url}/oauth/token",
            },
        )
        return replace(config, **overrides)

    def oauth_credentials(self) -> dict[str, str]:
        return {
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "refresh_token": REFRESH_TOKEN,
            "webhook_user": WEBHOOK_USER,
            "webhook_password": WEBHOOK_PASSWORD,
        }

    def field_code(self, name: str) -> str:
        return next(str(f["field_code"]) for f in self.fields if f["field_name"] == name)

    def person(self, email: str) -> dict[str, Any] | None:
        """The person with this email: its own fields, each custom field under its key and
        under its name (so tests can read ``person["Leadscore letter"]``)."""
        found = self._by_email(email)
        if found is None:
            return None
        view = {k: v for k, v in found.items() if k != "custom_fields"}
        view["email"] = email
        for code, value in found["custom_fields"].items():
            view[code] = value
            names = [f["field_name"] for f in self.fields if f["field_code"] == code]
            if names:
                view[names[0]] = value
        return view

    def tasks(self) -> list[dict[str, Any]]:
        return [dict(a) for a in self.activities.values()]

    def add_person(self, email: str, name: str = "Someone", **extra: Any) -> int:
        self._serial += 1
        self.persons[self._serial] = {
            "id": self._serial,
            "name": name,
            "owner_id": 1,
            "emails": [{"value": email, "primary": True, "label": "work"}],
            "label_ids": [],
            "custom_fields": {},
            "add_time": now_text(),
            "update_time": now_text(),
            **extra,
        }
        return self._serial

    def add_field(self, name: str, kind: str) -> str:
        self._serial += 1
        field = self._field(name, kind, code=_code(name, self._serial), custom=True)
        self.fields.append(field)
        return str(field["field_code"])

    def add_deal(self, person_id: int | None, **extra: Any) -> dict[str, Any]:
        self._serial += 1
        deal = {
            "id": self._serial,
            "title": f"Deal {self._serial}",
            "person_id": person_id,
            "owner_id": 42,
            "status": "open",
            "value": 12000,
            "currency": "EUR",
            "pipeline_id": 1,
            "stage_id": 2,
            "add_time": now_text(),
            "update_time": now_text(),
            "won_time": None,
            "lost_time": None,
            "lost_reason": None,
            **extra,
        }
        self.deals[self._serial] = deal
        return deal

    def fail_next(self, status: int, times: int = 1, **details: Any) -> None:
        """``details``: ``retry_after`` (a Retry-After header), ``reset`` (x-ratelimit-reset),
        ``daily_left`` (x-daily-requests-left)."""
        self.failures.extend([(status, details)] * times)

    def outcome_notification(
        self, email: str, outcome: OutcomeType, url: str
    ) -> tuple[str, dict[str, str], bytes]:
        person = self._by_email(email)
        person_id = person["id"] if person else self.add_person(email, name=email)
        if outcome == "opportunity.created":
            deal = self.add_deal(person_id)
            return self._notify(url, "create", "deal", deal, None)
        if outcome in ("deal.won", "deal.lost"):
            open_deals = [
                d
                for d in self.deals.values()
                if d["person_id"] == person_id and d["status"] == "open"
            ]
            deal = open_deals[0] if open_deals else self.add_deal(person_id)
            status = "won" if outcome == "deal.won" else "lost"
            deal.update(status=status, update_time=now_text())
            deal[f"{status}_time"] = now_text()
            if status == "lost":
                deal["lost_reason"] = "Went with a competitor"
            return self._notify(url, "change", "deal", deal, {"status": "open"})
        if outcome == "lead.contacted":
            activity = next(
                (
                    a
                    for a in self.activities.values()
                    if a["person_id"] == person_id and not a["done"]
                ),
                None,
            )
            if activity is None:
                activity = self._new_activity({"subject": "Call", "type": "call"}, person_id)
            activity.update(done=True, marked_as_done_time=now_text(), update_time=now_text())
            return self._notify(url, "change", "activity", activity, {"done": False})
        # lead.accepted: the rep gives the person the "accepted" label.
        target = self.persons[person_id]
        before = list(target["label_ids"])
        target["label_ids"] = [*before, ACCEPTED_LABEL]
        target["update_time"] = now_text()
        return self._notify(
            url, "change", "person", self._person_out(target), {"label_ids": before}
        )

    def _notify(
        self,
        url: str,
        action: str,
        entity: str,
        data: dict[str, Any],
        previous: dict[str, Any] | None,
    ) -> tuple[str, dict[str, str], bytes]:
        hook = next((h for h in self.webhooks if h["subscription_url"] == url), None)
        user = hook["http_auth_user"] if hook else WEBHOOK_USER
        password = hook["http_auth_password"] if hook else WEBHOOK_PASSWORD
        self._serial += 1
        body = {
            "meta": {
                "action": action,
                "entity": entity,
                "entity_id": str(data["id"]),
                "id": f"evt-{self._serial}",
                "version": "2.0",
                "company_id": str(COMPANY_ID),
                "user_id": "42",
                "webhook_id": str(hook["id"]) if hook else "1",
                "attempt": 1,
                "timestamp": now_text(),
                "change_source": "app",
                "is_bulk_edit": False,
                "correlation_id": f"corr-{self._serial}",
                "type": "general",
                "host": "example.pipedrive.com",
            },
            "data": data,
            "previous": previous,
        }
        auth = base64.b64encode(f"{user}:{password}".encode()).decode()
        headers = {"content-type": "application/json", "authorization": f"Basic {auth}"}
        return "POST", headers, json.dumps(body).encode()

    # -- helpers -----------------------------------------------------------------------------

    def _field(self, name: str, kind: str, *, code: str, custom: bool) -> dict[str, Any]:
        return {
            "field_name": name,
            "field_code": code,
            "field_type": kind,
            "options": None,
            "subfields": None,
            "is_custom_field": custom,
            "is_optional_response_field": False,
        }

    def _by_email(self, email: str) -> dict[str, Any] | None:
        for person in self.persons.values():
            if any(e["value"].lower() == email.lower() for e in person["emails"]):
                return person
        return None

    def _person_out(self, person: dict[str, Any]) -> dict[str, Any]:
        return json.loads(json.dumps(person))  # type: ignore[no-any-return]

    def _headers(self) -> dict[str, str]:
        recent = [t for t in self.searches if t > time.monotonic() - 2]
        return {
            "x-ratelimit-limit": "80",
            "x-ratelimit-remaining": str(max(0, 80 - len(recent))),
            "x-ratelimit-reset": "2",
            "x-daily-requests-left": str(max(0, self.daily_left)),
        }

    def _answer(self, status: int, body: Any, extra: dict[str, str] | None = None) -> Response:
        return JSONResponse(body, status_code=status, headers={**self._headers(), **(extra or {})})

    def _error(self, status: int, error: str, extra: dict[str, str] | None = None) -> Response:
        body = {
            "success": False,
            "error": error,
            "errorCode": status,
            "error_info": "Please check developers.pipedrive.com",
        }
        return self._answer(status, body, extra)

    async def _gate(self, request: Request, *, search: bool = False) -> Response | None:
        """Log the call, then answer like Pipedrive does before any endpoint logic runs."""
        await self.log.record(request)
        if self.failures:
            status, details = self.failures.pop(0)
            extra: dict[str, str] = {}
            if "retry_after" in details:
                extra["retry-after"] = str(details["retry_after"])
            if "reset" in details:
                extra["x-ratelimit-reset"] = str(details["reset"])
            if "daily_left" in details:
                extra["x-daily-requests-left"] = str(details["daily_left"])
            messages = {429: "Request over limit", 401: "unauthorized access"}
            return self._error(status, messages.get(status, "Internal server error"), extra)
        token = request.headers.get("x-api-token")
        bearer = request.headers.get("authorization", "")
        if token is not None:
            if token != API_TOKEN:
                return self._error(401, "unauthorized access")
        elif bearer.startswith("Bearer "):
            expiry = self.access_tokens.get(bearer[7:])
            if expiry is None or expiry < time.time():
                return self._error(401, "unauthorized access")
        else:
            return self._error(401, "unauthorized access")
        if self.daily_left <= 0:
            return self._error(429, "Daily request limit reached", {"x-daily-requests-left": "0"})
        self.daily_left -= 1
        if search:
            now = time.monotonic()
            self.searches = [t for t in self.searches if t > now - 2]
            if len(self.searches) >= 10:
                return self._error(429, "Search rate limit exceeded", {"x-ratelimit-reset": "2"})
            self.searches.append(now)
        return None

    @staticmethod
    async def _json(request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError as exc:
            raise Refusal(400, "Invalid JSON body") from exc
        if not isinstance(body, dict):
            raise Refusal(400, "Body must be an object")
        return body

    def _page(self, request: Request, items: list[dict[str, Any]]) -> Response:
        limit = int(request.query_params.get("limit", 100))
        if not 1 <= limit <= self.page_size_cap:
            return self._error(400, f"limit must be between 1 and {self.page_size_cap}")
        cursor = request.query_params.get("cursor")
        start = int(base64.b64decode(cursor).decode()) if cursor else 0
        page = items[start : start + limit]
        following = start + limit
        next_cursor = (
            base64.b64encode(str(following).encode()).decode() if following < len(items) else None
        )
        body = {"success": True, "data": page, "additional_data": {"next_cursor": next_cursor}}
        return self._answer(200, body)

    def _check_custom_fields(self, values: Any) -> None:
        if not isinstance(values, dict):
            raise Refusal(400, "custom_fields must be an object")
        known = {f["field_code"]: f for f in self.fields if f["is_custom_field"]}
        for code, value in values.items():
            if code not in known:
                raise Refusal(400, f"Unknown custom field key: {code}")
            kind = known[code]["field_type"]
            if value is None:
                continue
            if kind in ("double", "monetary") and not isinstance(value, int | float):
                raise Refusal(400, f"Custom field {code} expects a number")
            if kind in ("varchar", "text") and not isinstance(value, str):
                raise Refusal(400, f"Custom field {code} expects a string")
            if kind == "date" and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", str(value)):
                raise Refusal(400, f"Custom field {code} expects YYYY-MM-DD")

    def _check_person(self, body: dict[str, Any], *, creating: bool) -> None:
        unknown = set(body) - PERSON_KEYS
        if unknown:
            raise Refusal(400, f"Unknown parameters: {', '.join(sorted(unknown))}")
        if creating and not str(body.get("name") or "").strip():
            raise Refusal(400, "Name must be given")
        if "owner_id" in body and body["owner_id"] not in USERS:
            raise Refusal(400, "owner_id: user not found")
        emails = body.get("emails", [])
        if not isinstance(emails, list) or not all(
            isinstance(e, dict) and isinstance(e.get("value"), str) for e in emails
        ):
            raise Refusal(400, "emails must be a list of {value, primary, label}")
        self._check_custom_fields(body.get("custom_fields", {}))

    def _new_activity(self, body: dict[str, Any], person_id: int | None) -> dict[str, Any]:
        self._serial += 1
        activity = {
            "id": self._serial,
            "subject": body.get("subject") or body.get("type", "call"),
            "type": body.get("type", "call"),
            "owner_id": body.get("owner_id", 1),
            "person_id": person_id,
            "participants": body.get("participants")
            or ([{"person_id": person_id, "primary": True}] if person_id else []),
            "due_date": body.get("due_date"),
            "due_time": body.get("due_time"),
            "note": body.get("note"),
            "done": bool(body.get("done", False)),
            "priority": body.get("priority"),
            "marked_as_done_time": None,
            "add_time": now_text(),
            "update_time": now_text(),
        }
        self.activities[self._serial] = activity
        return activity

    # -- the API -----------------------------------------------------------------------------

    def _build(self) -> FastAPI:
        app = FastAPI()
        stand_in = self

        @app.exception_handler(Refusal)
        async def refused(_request: Request, exc: Refusal) -> Response:
            return stand_in._error(exc.status, exc.error)

        @app.post("/oauth/token")
        async def oauth_token(request: Request) -> Response:
            await stand_in.log.record(request)
            expected = base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
            if request.headers.get("authorization") != f"Basic {expected}":
                return JSONResponse({"success": False, "message": "Invalid client"}, 401)
            form = await request.form()
            if form.get("grant_type") != "refresh_token":
                return JSONResponse({"error": "unsupported_grant_type"}, 400)
            if form.get("refresh_token") != stand_in.refresh_token:
                return JSONResponse({"error": "invalid_grant"}, 400)
            stand_in.token_requests += 1
            access = f"access-{stand_in.token_requests}"
            stand_in.access_tokens[access] = time.time() + stand_in.token_ttl
            return JSONResponse(
                {
                    "access_token": access,
                    "token_type": "Bearer",
                    "refresh_token": stand_in.refresh_token,
                    "scope": "base,contacts:full,deals:read,activities:full,admin",
                    "expires_in": stand_in.token_ttl,
                    "api_domain": stand_in.base_url,
                }
            )

        @app.get("/api/v2/persons/search")
        async def search_persons(request: Request) -> Response:
            if refused := await stand_in._gate(request, search=True):
                return refused
            params = request.query_params
            term = params.get("term", "")
            if len(term) < 2:
                return stand_in._error(400, "term must be at least 2 characters")
            fields = set(
                (params.get("fields") or "custom_fields,email,name,notes,phone").split(",")
            )
            if not fields <= {"custom_fields", "email", "name", "notes", "phone"}:
                return stand_in._error(400, "Invalid fields")
            exact = params.get("exact_match") == "true"
            items = []
            for person in stand_in.persons.values():
                values = [e["value"] for e in person["emails"]] if "email" in fields else []
                if "name" in fields:
                    values.append(person["name"])
                hit = any(
                    v.lower() == term.lower() if exact else term.lower() in v.lower()
                    for v in values
                )
                if hit:
                    items.append(
                        {
                            "result_score": 1.0,
                            "item": {
                                "id": person["id"],
                                "type": "person",
                                "name": person["name"],
                                "phones": [],
                                "emails": [e["value"] for e in person["emails"]],
                                "visible_to": 3,
                                "owner": {"id": person["owner_id"]},
                                "organization": None,
                                "custom_fields": [],
                                "notes": [],
                                "update_time": person["update_time"],
                            },
                        }
                    )
            body = {
                "success": True,
                "data": {"items": items},
                "additional_data": {"next_cursor": None},
            }
            return stand_in._answer(200, body)

        @app.get("/api/v2/persons/{person_id}")
        async def get_person(request: Request, person_id: int) -> Response:
            if refused := await stand_in._gate(request):
                return refused
            if person_id not in stand_in.persons:
                return stand_in._error(404, "Person not found")
            return stand_in._answer(
                200, {"success": True, "data": stand_in._person_out(stand_in.persons[person_id])}
            )

        @app.post("/api/v2/persons")
        async def add_person(request: Request) -> Response:
            if refused := await stand_in._gate(request):
                return refused
            body = await stand_in._json(request)
            stand_in._check_person(body, creating=True)
            emails = body.get("emails", [])
            person_id = stand_in.add_person(emails[0]["value"] if emails else "", body["name"])
            person = stand_in.persons[person_id]
            person.update({k: v for k, v in body.items() if k != "custom_fields"})
            person["custom_fields"] = dict(body.get("custom_fields") or {})
            return stand_in._answer(200, {"success": True, "data": stand_in._person_out(person)})

        @app.patch("/api/v2/persons/{person_id}")
        async def update_person(request: Request, person_id: int) -> Response:
            if refused := await stand_in._gate(request):
                return refused
            if person_id not in stand_in.persons:
                return stand_in._error(404, "Person not found")
            body = await stand_in._json(request)
            stand_in._check_person(body, creating=False)
            person = stand_in.persons[person_id]
            person.update({k: v for k, v in body.items() if k != "custom_fields"})
            person["custom_fields"].update(body.get("custom_fields") or {})
            person["update_time"] = now_text()
            return stand_in._answer(200, {"success": True, "data": stand_in._person_out(person)})

        @app.delete("/api/v2/persons/{person_id}")
        async def delete_person(request: Request, person_id: int) -> Response:
            if refused := await stand_in._gate(request):
                return refused
            if stand_in.persons.pop(person_id, None) is None:
                return stand_in._error(404, "Person not found")
            return stand_in._answer(200, {"success": True, "data": {"id": person_id}})

        @app.put("/api/v1/persons/{person_id}/merge")
        async def merge_persons(request: Request, person_id: int) -> Response:
            if refused := await stand_in._gate(request):
                return refused
            body = await stand_in._json(request)
            survivor_id = body.get("merge_with_id")
            if not isinstance(survivor_id, int):
                return stand_in._error(400, "merge_with_id is required")
            if person_id not in stand_in.persons or survivor_id not in stand_in.persons:
                return stand_in._error(404, "Person not found")
            merged = stand_in.persons.pop(person_id)
            survivor = stand_in.persons[survivor_id]
            known = {e["value"] for e in survivor["emails"]}
            survivor["emails"] += [
                {**e, "primary": False} for e in merged["emails"] if e["value"] not in known
            ]
            for key, value in merged["custom_fields"].items():
                survivor["custom_fields"].setdefault(key, value)
            for item in [*stand_in.deals.values(), *stand_in.activities.values()]:
                if item.get("person_id") == person_id:
                    item["person_id"] = survivor_id
            return stand_in._answer(200, {"success": True, "data": stand_in._person_out(survivor)})

        @app.get("/api/v2/personFields")
        async def list_person_fields(request: Request) -> Response:
            if refused := await stand_in._gate(request):
                return refused
            return stand_in._page(request, stand_in.fields)

        @app.post("/api/v2/personFields")
        async def add_person_field(request: Request) -> Response:
            if refused := await stand_in._gate(request):
                return refused
            body = await stand_in._json(request)
            allowed = {"field_name", "field_type", "options", "ui_visibility", "description"}
            if set(body) - allowed:
                return stand_in._error(400, f"Unknown parameters: {sorted(set(body) - allowed)}")
            if not str(body.get("field_name") or "").strip():
                return stand_in._error(400, "field_name is required")
            if body.get("field_type") not in FIELD_TYPES:
                return stand_in._error(400, "field_type is invalid")
            if body["field_type"] in ("enum", "set") and not body.get("options"):
                return stand_in._error(400, "options are required for enum and set fields")
            code = stand_in.add_field(body["field_name"], body["field_type"])
            field = next(f for f in stand_in.fields if f["field_code"] == code)
            return stand_in._answer(200, {"success": True, "data": field})

        @app.post("/api/v2/activities")
        async def add_activity(request: Request) -> Response:
            if refused := await stand_in._gate(request):
                return refused
            body = await stand_in._json(request)
            unknown = set(body) - ACTIVITY_KEYS
            if unknown:
                return stand_in._error(400, f"Unknown parameters: {', '.join(sorted(unknown))}")
            if "type" in body and body["type"] not in ACTIVITY_TYPES:
                return stand_in._error(400, "type: activity type not found")
            if "owner_id" in body and body["owner_id"] not in USERS:
                return stand_in._error(400, "owner_id: user not found")
            if "due_date" in body and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", str(body["due_date"])):
                return stand_in._error(400, "due_date must be YYYY-MM-DD")
            if "due_time" in body and not re.fullmatch(r"\d{2}:\d{2}", str(body["due_time"])):
                return stand_in._error(400, "due_time must be HH:MM")
            person_id = None
            for participant in body.get("participants") or []:
                if participant.get("person_id") not in stand_in.persons:
                    return stand_in._error(400, "participants: person not found")
                if participant.get("primary"):
                    person_id = participant["person_id"]
            activity = stand_in._new_activity(body, person_id)
            return stand_in._answer(200, {"success": True, "data": activity})

        @app.get("/api/v2/activities")
        async def list_activities(request: Request) -> Response:
            if refused := await stand_in._gate(request):
                return refused
            items = list(stand_in.activities.values())
            done = request.query_params.get("done")
            if done is not None:
                items = [a for a in items if a["done"] == (done == "true")]
            return stand_in._page(request, stand_in._since(request, items))

        @app.get("/api/v2/deals")
        async def list_deals(request: Request) -> Response:
            if refused := await stand_in._gate(request):
                return refused
            return stand_in._page(request, stand_in._since(request, list(stand_in.deals.values())))

        @app.get("/api/v1/webhooks")
        async def list_webhooks(request: Request) -> Response:
            if refused := await stand_in._gate(request):
                return refused
            return stand_in._answer(
                200, {"status": "ok", "success": True, "data": stand_in.webhooks}
            )

        @app.post("/api/v1/webhooks")
        async def add_webhook(request: Request) -> Response:
            if refused := await stand_in._gate(request):
                return refused
            body = await stand_in._json(request)
            url = str(body.get("subscription_url") or "")
            if not url.startswith(("http://", "https://")):
                return stand_in._error(400, "subscription_url is invalid")
            if body.get("event_action") not in WEBHOOK_ACTIONS:
                return stand_in._error(400, "event_action is invalid")
            if body.get("event_object") not in WEBHOOK_OBJECTS:
                return stand_in._error(400, "event_object is invalid")
            if body.get("version", "1.0") not in ("1.0", "2.0"):
                return stand_in._error(400, "version is invalid")
            if len(stand_in.webhooks) >= 40:
                return stand_in._error(400, "Webhooks limit reached")
            stand_in._serial += 1
            hook = {
                "id": stand_in._serial,
                "company_id": COMPANY_ID,
                "owner_id": 1,
                "user_id": body.get("user_id", 1),
                "event_action": body["event_action"],
                "event_object": body["event_object"],
                "subscription_url": url,
                "version": body.get("version", "1.0"),
                "is_active": 1,
                "add_time": now_text(),
                "type": "general",
                "http_auth_user": body.get("http_auth_user"),
                "http_auth_password": body.get("http_auth_password"),
            }
            stand_in.webhooks.append(hook)
            return stand_in._answer(201, {"status": "ok", "success": True, "data": hook})

        return app

    def _since(self, request: Request, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        params = request.query_params
        since = params.get("updated_since")
        if since:
            try:
                moment = datetime.fromisoformat(since)
            except ValueError as exc:
                raise Refusal(400, "updated_since must be RFC 3339") from exc
            items = [i for i in items if datetime.fromisoformat(i["update_time"]) >= moment]
        sort_by = params.get("sort_by", "id")
        if sort_by not in ("id", "update_time", "add_time"):
            raise Refusal(400, "sort_by is invalid")
        reverse = params.get("sort_direction", "asc") == "desc"
        return sorted(items, key=lambda i: (i[sort_by], i["id"]), reverse=reverse)


@contextmanager
def running(**options: Any) -> Iterator[PipedriveStandIn]:
    """Options: ``with_fields`` (the Leadscore person fields exist already, default true),
    ``daily_budget`` (requests before the daily limit), ``page_size_cap``, ``token_ttl``."""
    stand_in = PipedriveStandIn(**options)
    with serve(stand_in.app) as base_url:
        stand_in.base_url = base_url
        yield stand_in
