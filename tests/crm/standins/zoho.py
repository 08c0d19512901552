"""A stand-in of Zoho CRM (accounts server and API v8) on loopback, for the connector tests.

It implements what the connector uses, as Zoho documents it (docs/crm/zoho.md lists sources):
the refresh-token grant at ``/oauth/v2/token`` (with Zoho's limit of 10 refreshes per 10 minutes
per refresh token, answered as Zoho does), ``Authorization: Zoho-oauthtoken`` checked on every
API call, API calls only on the ``api_domain`` the token answer gave (a different host name
than the accounts server, as with Zoho's data centres), records of Leads / Contacts / Deals /
Tasks with per-record answers, search by email, batch limits (100), field metadata and custom
field creation, the watch API and its notification bodies.

Where Zoho's exact behaviour is not documented the stand-in is strict, so that a sloppy request
fails a test: unknown field API names are refused with ``INVALID_DATA``, ``fields`` is required
on record lists, values are checked against the field's type.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from tests.crm.standins.common import CallLog, serve

from leadscore_api.crm.base import ConnectorConfig, OutcomeType

CLIENT_ID = "1000.ZOHOSTANDINCLIENT0000000000000"
CLIENT_SECRET = "5f0c1b0bd1b7c6e9a3b1d0d4c3e2f1a0b9c8d7e6f5"
REFRESH_TOKEN = "1000.9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d.0f1e2d3c4b5a69788796a5b4c3d2e1f0"
NOTIFICATION_TOKEN = "ls-zoho-3f9a7c21d84e4b6f9e0d"
CHANNEL_ID = "1000000068001"
USERS = {"anna": "4876876000000225013", "marco": "4876876000000225021"}

DATETIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d$")
DATE_RE = re.compile(r"^\d{4}-\d\d-\d\d$")

#: (api_name, data_type, length)
_PERSON_FIELDS = [
    ("Email", "email", 100),
    ("First_Name", "text", 40),
    ("Last_Name", "text", 80),
    ("Phone", "phone", 30),
    ("Owner", "ownerlookup", None),
    ("Created_Time", "datetime", None),
    ("Modified_Time", "datetime", None),
]
STANDARD_FIELDS: dict[str, list[tuple[str, str, int | None]]] = {
    "Leads": [*_PERSON_FIELDS, ("Company", "text", 200), ("Lead_Status", "picklist", None)],
    "Contacts": list(_PERSON_FIELDS),
    "Deals": [
        ("Deal_Name", "text", 120),
        ("Stage", "picklist", None),
        ("Amount", "currency", None),
        ("Contact_Name", "lookup", None),
        ("Closing_Date", "date", None),
        ("Owner", "ownerlookup", None),
        ("Created_Time", "datetime", None),
        ("Modified_Time", "datetime", None),
    ],
    "Tasks": [
        ("Subject", "text", 255),
        ("Due_Date", "date", None),
        ("Status", "picklist", None),
        ("Priority", "picklist", None),
        ("Description", "textarea", 32000),
        ("What_Id", "lookup", None),
        ("Who_Id", "lookup", None),
        ("$se_module", "text", None),
        ("Owner", "ownerlookup", None),
    ],
}
CUSTOM_TYPES: dict[str, tuple[str, int | None]] = {
    "Leadscore_Letter": ("text", 5),
    "Leadscore_Score": ("integer", 9),
    "Leadscore_Tier": ("text", 50),
    "Leadscore_Stage": ("text", 50),
    "Leadscore_Owner": ("text", 100),
    "Leadscore_Next_Action": ("text", 255),
    "Leadscore_Next_Action_Due": ("datetime", None),
    "Leadscore_Lead_Id": ("text", 64),
}
#: Zoho's default Deals stages: (name, Deal Category = forecast_type, probability).
DEFAULT_STAGES = [
    ("Qualification", "Open", 10),
    ("Needs Analysis", "Open", 20),
    ("Proposal/Price Quote", "Open", 75),
    ("Negotiation/Review", "Open", 90),
    ("Closed Won", "Closed Won", 100),
    ("Closed Lost", "Closed Lost", 0),
    ("Closed-Lost to Competition", "Closed Lost", 0),
]


def _now() -> str:
    return datetime.now(UTC).replace(microsecond=0).isoformat()


def _error(status: int, code: str, message: str, **details: Any) -> JSONResponse:
    return JSONResponse(
        {"code": code, "details": details, "message": message, "status": "error"},
        status_code=status,
    )


def _record_error(code: str, message: str, **details: Any) -> dict[str, Any]:
    return {"code": code, "details": details, "message": message, "status": "error"}


class ZohoStandIn:
    def __init__(self, **options: Any) -> None:
        self.log = CallLog()
        self.base_url = ""
        self.api_domain = ""
        self.reset(**options)
        self.app = self._build_app()

    def reset(
        self,
        *,
        module: str = "Leads",
        custom_fields: bool = True,
        can_create_fields: bool = True,
        page_size: int = 200,
        page_token_after: int = 2000,
    ) -> None:
        """Forget every record, token, channel and call: a fresh account, on the same server
        (tests share one served stand-in, as starting uvicorn costs more than a test)."""
        self.log.clear()
        self.module = module
        self.can_create_fields = can_create_fields
        self.page_size = page_size
        self.page_token_after = page_token_after
        self.records: dict[str, dict[str, dict[str, Any]]] = {m: {} for m in STANDARD_FIELDS}
        self.fields: dict[str, dict[str, dict[str, Any]]] = {}
        self._ids = itertools.count(4876876000000600001)
        for mod, specs in STANDARD_FIELDS.items():
            self.fields[mod] = {}
            for api_name, data_type, length in specs:
                self._add_field(mod, api_name, data_type, length, custom=False)
        if custom_fields:
            for mod in ("Leads", "Contacts"):
                for api_name, (data_type, length) in CUSTOM_TYPES.items():
                    self._add_field(mod, api_name, data_type, length, custom=True)
        self.stages: list[tuple[str, str, int]] = list(DEFAULT_STAGES)
        self.access_tokens: dict[str, float] = {}
        self.refreshes: list[float] = []
        self.token_lifetime = 3600
        self.channels: dict[str, dict[str, Any]] = {}
        self._failures: list[tuple[int, dict[str, Any]]] = []
        self._page_tokens: dict[str, int] = {}

    # ---------------------------------------------------------------- what tests read and do

    def connector_config(self, name: str = "zoho", **overrides: Any) -> ConnectorConfig:
        config = ConnectorConfig(
            name=name,
            kind="zoho",
            base_url=self.base_url,
            credentials={
                "client_id": CLIENT_ID,
                "client_secret": CLIENT_SECRET,
                "refresh_token": REFRESH_TOKEN,
                "notification_token": NOTIFICATION_TOKEN,
            },
            field_map={},
            owner_map=dict(USERS),
            create_missing=True,
            options={
                "module": self.module,
                "notify_url": f"https://leadscore.example/v1/crm/{name}/notifications",
                "channel_id": CHANNEL_ID,
            },
        )
        return replace(config, **overrides)

    def person(self, email: str) -> dict[str, Any] | None:
        found = self.find(self.module, email)
        return dict(found) if found else None

    def tasks(self) -> list[dict[str, Any]]:
        return [dict(task) for task in self.records["Tasks"].values()]

    def fail_next(self, status: int, times: int = 1, **details: Any) -> None:
        """The next ``times`` API calls answer ``status`` with Zoho's error body: 429 is
        ``TOO_MANY_REQUESTS`` (concurrency), ``code="LIMIT_EXCEEDED"`` the API credits, 401
        ``INVALID_TOKEN``, 5xx ``INTERNAL_ERROR``; ``retry_after`` adds a Retry-After header."""
        default_codes = {429: "TOO_MANY_REQUESTS", 401: "INVALID_TOKEN", 400: "INVALID_DATA"}
        spec = {"code": default_codes.get(status, "INTERNAL_ERROR"), **details}
        self._failures.extend([(status, spec)] * times)

    def expire_tokens(self) -> None:
        """Every access token issued so far stops working (expired or revoked on Zoho's side)."""
        for token in self.access_tokens:
            self.access_tokens[token] = 0.0

    def add_record(self, module: str, **values: Any) -> str:
        record_id = str(next(self._ids))
        now = _now()
        self.records[module][record_id] = {
            "id": record_id,
            "Created_Time": now,
            "Modified_Time": now,
            **values,
        }
        return record_id

    def add_stage(self, name: str, category: str, probability: int) -> None:
        self.stages.append((name, category, probability))

    def outcome_notification(
        self, email: str, outcome: OutcomeType, url: str
    ) -> tuple[str, dict[str, str], bytes]:
        """Make the change in the CRM (a lead's status, a deal created / won / lost for the
        person's contact, converting the lead first) and return Zoho's callback for it."""
        if outcome in ("lead.contacted", "lead.accepted"):
            lead = self.find("Leads", email)
            if lead is None:  # a person entered in Zoho by hand
                lead = self.records["Leads"][self.add_record("Leads", Email=email, Last_Name=email)]
            lead["Lead_Status"] = "Contacted" if outcome == "lead.contacted" else "Pre-Qualified"
            lead["Modified_Time"] = _now()
            return self.notification("Leads", "update", lead["id"], ["Lead_Status"])
        contact_id = self._contact_for(email)
        deals = [
            d
            for d in self.records["Deals"].values()
            if (d.get("Contact_Name") or {}).get("id") == contact_id
        ]
        if outcome == "opportunity.created" or not deals:
            deal_id = self.add_record(
                "Deals",
                Deal_Name=f"Deal {email}",
                Stage="Qualification",
                Amount=12000,
                Contact_Name={"id": contact_id, "name": email},
                Closing_Date=datetime.now(UTC).date().isoformat(),
            )
            if outcome == "opportunity.created":
                return self.notification("Deals", "insert", deal_id, ["Stage"])
        else:
            deal_id = deals[-1]["id"]
        deal = self.records["Deals"][deal_id]
        deal["Stage"] = "Closed Won" if outcome == "deal.won" else "Closed Lost"
        deal["Modified_Time"] = _now()
        return self.notification("Deals", "update", deal_id, ["Stage"])

    # ------------------------------------------------------------------------------- helpers

    def _add_field(
        self, module: str, api_name: str, data_type: str, length: int | None, *, custom: bool
    ) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "id": str(next(self._ids)),
            "api_name": api_name,
            "field_label": api_name.replace("_", " "),
            "data_type": data_type,
            "length": length,
            "custom_field": custom,
        }
        self.fields[module][api_name] = meta
        return meta

    def find(self, module: str, email: str) -> dict[str, Any] | None:
        """The stored record of ``module`` with this email (the stand-in's own, mutable)."""
        for record in self.records[module].values():
            if str(record.get("Email", "")).lower() == email.lower():
                return record
        return None

    def _contact_for(self, email: str) -> str:
        contact = self.find("Contacts", email)
        if contact is not None:
            return str(contact["id"])
        lead = self.find("Leads", email)
        if lead is None:  # a contact entered in Zoho by hand, never scored by us
            return self.add_record("Contacts", Email=email, Last_Name=email.split("@")[0])
        # Converting the lead: Zoho copies its person fields into a new Contact.
        copied = {k: lead[k] for k in ("Email", "First_Name", "Last_Name", "Phone") if k in lead}
        contact_id = self.add_record("Contacts", **copied)
        lead["$converted"] = True
        return contact_id

    def notification(
        self, module: str, operation: str, record_id: str, fields: list[str]
    ) -> tuple[str, dict[str, str], bytes]:
        """Zoho's callback for a change of ``record_id`` (already made), on the channel that
        watches the module (or the configured one when setup has not enabled a channel)."""
        channel = next(
            (c for c in self.channels.values() if any(e.startswith(module) for e in c["events"])),
            None,
        )
        body: dict[str, Any] = {
            "server_time": int(time.time() * 1000),
            "module": module,
            "resource_uri": f"{self.api_domain}/crm/v8/{module}",
            "ids": [record_id],
            "affected_fields": [{record_id: fields}] if operation == "update" else [],
            "query_params": {},
            "operation": operation,
            "channel_id": int(channel["channel_id"] if channel else CHANNEL_ID),
            "token": channel["token"] if channel else NOTIFICATION_TOKEN,
        }
        return "POST", {"content-type": "application/json"}, json.dumps(body).encode()

    def _check_value(self, module: str, api_name: str, value: Any) -> bool:
        meta = self.fields[module][api_name]
        data_type, length = meta["data_type"], meta["length"]
        if value is None:
            return api_name not in ("Last_Name", "Email")
        if data_type == "integer":
            return isinstance(value, int) and not isinstance(value, bool)
        if data_type == "datetime":
            return isinstance(value, str) and bool(DATETIME_RE.match(value))
        if data_type == "date":
            return isinstance(value, str) and bool(DATE_RE.match(value))
        if data_type == "email":
            return isinstance(value, str) and "@" in value
        if data_type == "ownerlookup":
            return isinstance(value, dict) and value.get("id") in USERS.values()
        if data_type == "lookup":
            return isinstance(value, dict) and isinstance(value.get("id"), str)
        if data_type in ("text", "textarea", "phone", "picklist"):
            return isinstance(value, str) and (length is None or len(value) <= length)
        return True

    def _validate(
        self, module: str, record: dict[str, Any], index: int, *, creating: bool
    ) -> dict[str, Any] | None:
        """Zoho's per-record check: unknown fields and bad values are INVALID_DATA, a record to
        create without its mandatory field is MANDATORY_NOT_FOUND."""
        for api_name, value in record.items():
            if api_name == "id":
                continue
            path = f"$.data[{index}].{api_name}"
            if api_name not in self.fields[module]:
                return _record_error(
                    "INVALID_DATA", "invalid data", api_name=api_name, json_path=path
                )
            if not self._check_value(module, api_name, value):
                return _record_error(
                    "INVALID_DATA",
                    "invalid data",
                    api_name=api_name,
                    json_path=path,
                    expected_data_type=self.fields[module][api_name]["data_type"],
                )
        mandatory = {"Leads": "Last_Name", "Contacts": "Last_Name", "Tasks": "Subject"}.get(module)
        if creating and mandatory and not record.get(mandatory):
            return _record_error(
                "MANDATORY_NOT_FOUND",
                "required field not found",
                api_name=mandatory,
                json_path=f"$.data[{index}].{mandatory}",
            )
        return None

    def _store(self, module: str, record_id: str | None, values: dict[str, Any]) -> str:
        if record_id is None:
            return self.add_record(module, **{k: v for k, v in values.items() if v is not None})
        stored = self.records[module][record_id]
        for key, value in values.items():
            if key == "id":
                continue
            if value is None:
                stored.pop(key, None)
            else:
                stored[key] = value
        stored["Modified_Time"] = _now()
        return record_id

    @staticmethod
    def _success(record_id: str, action: str, **extra: Any) -> dict[str, Any]:
        message = "record added" if action == "insert" else "record updated"
        return {
            "code": "SUCCESS",
            "action": action,
            **extra,
            "details": {
                "id": record_id,
                "Modified_Time": _now(),
                "Modified_By": {"id": USERS["anna"], "name": "API user"},
            },
            "message": message,
            "status": "success",
        }

    @staticmethod
    def _answer(results: list[dict[str, Any]], ok_status: int, key: str = "data") -> JSONResponse:
        """Zoho's status for a batch: all failed 400, some failed 207, else ``ok_status``."""
        failed = sum(1 for r in results if r["status"] != "success")
        status = 400 if failed == len(results) else 207 if failed else ok_status
        return JSONResponse({key: results}, status_code=status)

    # ------------------------------------------------------------------------------ the app

    def _build_app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/oauth/v2/token")
        async def token(request: Request) -> Response:
            await self.log.record(request)
            form = dict(await request.form())
            form.update(request.query_params)
            if form.get("client_id") != CLIENT_ID or form.get("client_secret") != CLIENT_SECRET:
                return JSONResponse({"error": "invalid_client"})
            if form.get("grant_type") != "refresh_token":
                return JSONResponse({"error": "unsupported_grant_type"})
            if form.get("refresh_token") != REFRESH_TOKEN:
                return JSONResponse({"error": "invalid_code"})
            now = time.time()
            self.refreshes = [t for t in self.refreshes if now - t < 600]
            if len(self.refreshes) >= 10:
                return JSONResponse(
                    {
                        "error_description": "You have made too many requests continuously."
                        " Please try again after some time.",
                        "error": "Access Denied",
                        "status": "failure",
                    },
                    status_code=400,
                )
            self.refreshes.append(now)
            access = f"1000.{next(self._ids):x}.{int(now * 1000):x}"
            self.access_tokens[access] = now + self.token_lifetime
            return JSONResponse(
                {
                    "access_token": access,
                    "scope": "ZohoCRM.modules.ALL ZohoCRM.settings.fields.ALL"
                    " ZohoCRM.notifications.ALL",
                    "api_domain": self.api_domain,
                    "token_type": "Bearer",
                    "expires_in": self.token_lifetime,
                }
            )

        @app.api_route("/crm/v8/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
        async def api(path: str, request: Request) -> Response:
            call = await self.log.record(request)
            host = request.headers.get("host", "")
            if host != urlsplit(self.api_domain).netloc:
                # A call to the wrong host (data centre) fails even with a valid token.
                return _error(401, "INVALID_TOKEN", "invalid oauth token")
            auth = request.headers.get("authorization", "")
            if not auth.startswith("Zoho-oauthtoken "):
                return _error(401, "AUTHENTICATION_FAILURE", "Authentication failed")
            if self.access_tokens.get(auth.split(" ", 1)[1], 0.0) <= time.time():
                return _error(401, "INVALID_TOKEN", "invalid oauth token")
            if self._failures:
                status, spec = self._failures.pop(0)
                spec = dict(spec)
                retry_after = spec.pop("retry_after", None)
                code = spec.pop("code")
                response = _error(status, code, spec.pop("message", code.lower()), **spec)
                if retry_after is not None:
                    response.headers["Retry-After"] = str(retry_after)
                return response
            return self._route(
                request.method, path.strip("/").split("/"), call.query, call.body, request
            )

        return app

    def _route(
        self, method: str, parts: list[str], query: dict[str, str], body: Any, request: Request
    ) -> Response:
        if parts == ["settings", "fields"]:
            return self._settings_fields(method, query, body)
        if parts == ["actions", "watch"] and method in ("POST", "PATCH"):
            return self._watch(method, body)
        module = parts[0]
        if module not in self.records:
            return _error(400, "INVALID_MODULE", "the module name given seems to be invalid")
        rest = parts[1:]
        if rest == ["upsert"] and method == "POST":
            return self._write(module, body, upsert=True)
        if not rest and method in ("POST", "PUT"):
            return self._write(module, body, update=method == "PUT")
        if rest == ["search"] and method == "GET":
            return self._search(module, query)
        if not rest and method == "GET":
            return self._list(module, query, request.headers.get("if-modified-since"))
        if not rest and method == "DELETE":
            return self._delete(module, query)
        return _error(
            404, "INVALID_URL_PATTERN", "Please check if the URL trying to access is a correct one"
        )

    def _batch(self, body: Any) -> list[dict[str, Any]] | JSONResponse:
        if not isinstance(body, dict) or not isinstance(body.get("data"), list) or not body["data"]:
            return _error(400, "INVALID_DATA", "body must have a data list")
        if len(body["data"]) > 100:
            return _error(400, "LIMIT_EXCEEDED", "the records exceed the limit", limit=100)
        return list(body["data"])

    def _write(
        self, module: str, body: Any, *, upsert: bool = False, update: bool = False
    ) -> Response:
        data = self._batch(body)
        if isinstance(data, JSONResponse):
            return data
        if upsert:
            checks = body.get("duplicate_check_fields", ["Email"])
            if not isinstance(checks, list) or any(c not in self.fields[module] for c in checks):
                return _error(
                    400,
                    "INVALID_DATA",
                    "invalid duplicate_check_fields",
                    api_name="duplicate_check_fields",
                )
        results: list[dict[str, Any]] = []
        for index, record in enumerate(data):
            if not isinstance(record, dict):
                results.append(
                    _record_error("INVALID_DATA", "invalid data", json_path=f"$.data[{index}]")
                )
                continue
            record_id: str | None = None
            if update:
                record_id = record.get("id")
                if not record_id:
                    results.append(
                        _record_error(
                            "MANDATORY_NOT_FOUND",
                            "required field not found",
                            api_name="id",
                            json_path=f"$.data[{index}].id",
                        )
                    )
                    continue
                if record_id not in self.records[module]:
                    results.append(
                        _record_error(
                            "INVALID_DATA",
                            "the related id given seems to be invalid",
                            api_name="id",
                            json_path=f"$.data[{index}].id",
                        )
                    )
                    continue
            elif upsert and record.get("Email"):
                found = self.find(module, str(record["Email"]))
                record_id = found["id"] if found else None
            if module == "Tasks":
                problem = self._check_task(record, index)
                if problem:
                    results.append(problem)
                    continue
            problem = self._validate(module, record, index, creating=record_id is None)
            if problem:
                results.append(problem)
                continue
            action = "insert" if record_id is None else "update"
            stored_id = self._store(module, record_id, record)
            extra = {"duplicate_field": "Email" if action == "update" else None} if upsert else {}
            results.append(self._success(stored_id, action, **extra))
        created = any(r.get("action") == "insert" for r in results)
        return self._answer(results, 201 if created else 200)

    def _check_task(self, record: dict[str, Any], index: int) -> dict[str, Any] | None:
        what, who = record.get("What_Id"), record.get("Who_Id")
        if what is not None:
            se_module = record.get("$se_module")
            if se_module not in ("Leads", "Accounts", "Deals") or (what or {}).get(
                "id"
            ) not in self.records.get(se_module, {}):
                return _record_error(
                    "INVALID_DATA",
                    "the related id given seems to be invalid",
                    api_name="What_Id",
                    json_path=f"$.data[{index}].What_Id",
                )
        if who is not None and (who or {}).get("id") not in self.records["Contacts"]:
            return _record_error(
                "INVALID_DATA",
                "the related id given seems to be invalid",
                api_name="Who_Id",
                json_path=f"$.data[{index}].Who_Id",
            )
        return None

    def _public(self, record: dict[str, Any], fields: list[str] | None = None) -> dict[str, Any]:
        shown = {k: v for k, v in record.items() if not k.startswith("$")}
        if fields is not None:
            shown = {k: v for k, v in shown.items() if k in fields or k == "id"}
        return shown

    def _search(self, module: str, query: dict[str, str]) -> Response:
        email = query.get("email")
        if not email:
            return _error(
                400,
                "REQUIRED_PARAM_MISSING",
                "One of the expected parameter is missing",
                param="email",
            )
        found = [
            self._public(r)
            for r in self.records[module].values()
            if str(r.get("Email", "")).lower() == email.lower() and not r.get("$converted")
        ]
        if not found:
            return Response(status_code=204)
        info = {"per_page": 200, "count": len(found), "page": 1, "more_records": False}
        return JSONResponse({"data": found, "info": info})

    def _list(self, module: str, query: dict[str, str], since_header: str | None) -> Response:
        if not query.get("fields"):
            return _error(
                400,
                "REQUIRED_PARAM_MISSING",
                "One of the expected parameter is missing",
                param="fields",
            )
        fields = query["fields"].split(",")
        unknown = [f for f in fields if f not in self.fields[module]]
        if unknown:
            return _error(400, "INVALID_DATA", "invalid data", api_name=unknown[0])
        if "ids" in query:
            ids = query["ids"].split(",")
            if len(ids) > 100:
                return _error(400, "LIMIT_EXCEEDED", "the ids exceed the limit", limit=100)
            found = [
                self._public(self.records[module][i], fields)
                for i in ids
                if i in self.records[module]
            ]
            if not found:
                return Response(status_code=204)
            return JSONResponse(
                {"data": found, "info": {"count": len(found), "more_records": False}}
            )
        records = [r for r in self.records[module].values() if not r.get("$converted")]
        if since_header:
            since = datetime.fromisoformat(since_header)
            records = [r for r in records if datetime.fromisoformat(r["Modified_Time"]) >= since]
            if not records:
                return Response(status_code=304)
        if query.get("sort_by") == "Modified_Time":
            records.sort(
                key=lambda r: r["Modified_Time"], reverse=query.get("sort_order") == "desc"
            )
        per_page = min(int(query.get("per_page", "200")), 200, self.page_size)
        if "page_token" in query:
            if query["page_token"] not in self._page_tokens:
                return _error(400, "INVALID_DATA", "invalid page_token", param="page_token")
            page = self._page_tokens[query["page_token"]]
        else:
            page = int(query.get("page", "1"))
            if (page - 1) * per_page >= self.page_token_after:
                return _error(
                    400, "DISCRETE_PAGINATION_LIMIT_EXCEEDED", "use page_token beyond this limit"
                )
        chunk = records[(page - 1) * per_page : page * per_page]
        if not chunk:
            return Response(status_code=204)
        more = page * per_page < len(records)
        next_token = None
        if more and page * per_page >= self.page_token_after:
            next_token = f"pt{next(self._ids):x}"
            self._page_tokens[next_token] = page + 1
        info = {
            "per_page": per_page,
            "count": len(chunk),
            "page": page,
            "sort_by": query.get("sort_by", "id"),
            "sort_order": query.get("sort_order", "desc"),
            "more_records": more,
            "next_page_token": next_token,
        }
        return JSONResponse({"data": [self._public(r, fields) for r in chunk], "info": info})

    def _delete(self, module: str, query: dict[str, str]) -> Response:
        ids = [i for i in query.get("ids", "").split(",") if i]
        if not ids:
            return _error(
                400,
                "REQUIRED_PARAM_MISSING",
                "One of the expected parameter is missing",
                param="ids",
            )
        results: list[dict[str, Any]] = []
        for record_id in ids:
            if self.records[module].pop(record_id, None) is None:
                results.append(
                    _record_error(
                        "INVALID_DATA", "the related id given seems to be invalid", id=record_id
                    )
                )
            else:
                results.append(
                    {
                        "code": "SUCCESS",
                        "details": {"id": record_id},
                        "message": "record deleted",
                        "status": "success",
                    }
                )
        return self._answer(results, 200)

    def _settings_fields(self, method: str, query: dict[str, str], body: Any) -> Response:
        module = query.get("module")
        if not module:
            return _error(
                400,
                "REQUIRED_PARAM_MISSING",
                "One of the expected parameter is missing",
                param="module",
            )
        if module not in self.fields:
            return _error(400, "INVALID_MODULE", "the module name given seems to be invalid")
        if method == "GET":
            listed = []
            for meta in self.fields[module].values():
                entry = dict(meta)
                if module == "Deals" and meta["api_name"] == "Stage":
                    entry["pick_list_values"] = [
                        {
                            "display_value": name,
                            "actual_value": name,
                            "forecast_type": category,
                            "forecast_category": {
                                "name": "Closed" if category != "Open" else "Pipeline"
                            },
                            "probability": probability,
                        }
                        for name, category, probability in self.stages
                    ]
                listed.append(entry)
            return JSONResponse({"fields": listed})
        if method != "POST":
            return _error(
                405, "INVALID_REQUEST_METHOD", "The http request method type is not a valid one"
            )
        if not self.can_create_fields:
            return _error(401, "OAUTH_SCOPE_MISMATCH", "invalid oauth scope to access this URL")
        if not isinstance(body, dict) or not isinstance(body.get("fields"), list):
            return _error(400, "INVALID_DATA", "body must have a fields list")
        results: list[dict[str, Any]] = []
        for index, spec in enumerate(body["fields"]):
            label, data_type = spec.get("field_label"), spec.get("data_type")
            if not label or data_type not in (
                "text",
                "integer",
                "datetime",
                "date",
                "textarea",
                "email",
            ):
                results.append(
                    _record_error("INVALID_DATA", "invalid data", json_path=f"$.fields[{index}]")
                )
                continue
            if data_type == "text" and not isinstance(spec.get("length"), int):
                results.append(
                    _record_error(
                        "MANDATORY_NOT_FOUND", "required field not found", api_name="length"
                    )
                )
                continue
            api_name = str(label).replace(" ", "_")
            if api_name in self.fields[module]:
                results.append(
                    _record_error("DUPLICATE_DATA", "duplicate data", api_name="field_label")
                )
                continue
            meta = self._add_field(module, api_name, data_type, spec.get("length"), custom=True)
            results.append(
                {
                    "code": "SUCCESS",
                    "details": {"id": meta["id"]},
                    "message": "field created",
                    "status": "success",
                }
            )
        return self._answer(results, 201, key="fields")

    def _watch(self, method: str, body: Any) -> Response:
        if not isinstance(body, dict) or not isinstance(body.get("watch"), list):
            return _error(400, "INVALID_DATA", "body must have a watch list")
        results: list[dict[str, Any]] = []
        for spec in body["watch"]:
            problem = self._check_watch(spec)
            if (
                problem is None
                and method == "PATCH"
                and str(spec.get("channel_id")) not in self.channels
            ):
                problem = _record_error(
                    "RESOURCE_NOT_FOUND", "the channel does not exist", api_name="channel_id"
                )
            if problem:
                results.append(problem)
                continue
            channel_id = str(spec["channel_id"])
            self.channels[channel_id] = {**spec, "channel_id": channel_id}
            results.append(
                {
                    "code": "SUCCESS",
                    "details": {
                        "events": [
                            {
                                "channel_expiry": spec["channel_expiry"],
                                "resource_uri": f"{self.api_domain}/crm/v8/{event.split('.')[0]}",
                                "resource_id": str(next(self._ids)),
                                "resource_name": event.split(".")[0],
                                "channel_id": channel_id,
                            }
                            for event in spec["events"]
                        ]
                    },
                    "message": "Successfully subscribed for actions-watch of the given module",
                    "status": "success",
                }
            )
        return self._answer(results, 200, key="watch")

    def _check_watch(self, spec: Any) -> dict[str, Any] | None:
        if not isinstance(spec, dict):
            return _record_error("INVALID_DATA", "invalid data")
        for key in ("channel_id", "events", "notify_url"):
            if not spec.get(key):
                return _record_error(
                    "MANDATORY_NOT_FOUND", "required field not found", api_name=key
                )
        if not str(spec["channel_id"]).isdigit():
            return _record_error("INVALID_DATA", "invalid data", api_name="channel_id")
        for event in spec["events"]:
            module, _, operation = str(event).partition(".")
            if module not in self.records or operation not in ("all", "create", "edit", "delete"):
                return _record_error("INVALID_DATA", "invalid data", api_name="events")
        token = spec.get("token")
        if token is not None and (not isinstance(token, str) or len(token) > 50):
            return _record_error("INVALID_DATA", "token exceeds 50 characters", api_name="token")
        expiry = spec.get("channel_expiry")
        if expiry is not None:
            if not isinstance(expiry, str) or not DATETIME_RE.match(expiry):
                return _record_error("INVALID_DATA", "invalid data", api_name="channel_expiry")
            if datetime.fromisoformat(expiry) > datetime.now(UTC) + timedelta(days=7):
                return _record_error(
                    "INVALID_DATA", "channel_expiry beyond one week", api_name="channel_expiry"
                )
        for condition in spec.get("notification_condition") or []:
            watched = ((condition or {}).get("module") or {}).get("api_name")
            group = (((condition or {}).get("field_selection") or {}).get("group")) or []
            if (
                condition.get("type") != "field_selection"
                or watched not in self.fields
                or not group
            ):
                return _record_error(
                    "INVALID_DATA", "invalid data", api_name="notification_condition"
                )
            for item in group:
                if ((item or {}).get("field") or {}).get("api_name") not in self.fields[watched]:
                    return _record_error(
                        "INVALID_DATA", "invalid data", api_name="notification_condition"
                    )
        return None


@contextmanager
def running(**options: Any) -> Iterator[ZohoStandIn]:
    """Serve a Zoho stand-in on loopback. The API answers on ``localhost`` and the accounts
    server on ``127.0.0.1`` (same port), so a connector that ignores ``api_domain`` fails."""
    stand_in = ZohoStandIn(**options)
    with serve(stand_in.app) as base_url:
        stand_in.base_url = base_url
        stand_in.api_domain = base_url.replace("127.0.0.1", "localhost")
        yield stand_in


__all__ = ["CHANNEL_ID", "NOTIFICATION_TOKEN", "USERS", "ZohoStandIn", "running"]
