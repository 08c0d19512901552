"""A Salesforce org on loopback: OAuth on a login host, the REST API on a separate instance host.

What it implements, from Salesforce's REST API, SOQL and Outbound Messaging references:

- ``POST /services/oauth2/token`` (login host only): ``client_credentials`` and
  ``refresh_token`` grants; answers ``access_token`` and an ``instance_url`` that is a *different*
  server, so a connector calling the login host for data gets 404.
- On the instance, every call needs ``Authorization: Bearer`` with a live token (else 401
  ``INVALID_SESSION_ID``), counts against the org's allocation (403 ``REQUEST_LIMIT_EXCEEDED``
  over it) and answers ``Sforce-Limit-Info: api-usage=N/M``.
- ``GET /services/data/vXX.X/query?q=`` (SOQL, see ``salesforce_soql``) with ``nextRecordsUrl``
  pages; ``PATCH``/``POST /composite/sobjects`` (≤ 200 records, ``allOrNone``, per-record
  results in order, required fields, field types, unknown fields); ``PATCH``/``DELETE
  /sobjects/{type}/{id}``; ``POST /sobjects/Task``; ``POST /tooling/sobjects/CustomField``.
- ``outcome_notification`` converts the lead / moves the opportunity and returns the SOAP
  outbound message Salesforce would send.
"""

from __future__ import annotations

import base64
import itertools
import re
import secrets
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from tests.crm.standins import salesforce_soql as soql
from tests.crm.standins.common import CallLog, serve

from leadscore_api.crm import salesforce_outbound as outbound
from leadscore_api.crm.base import ConnectorConfig, OutcomeType

API_VERSION_RE = re.compile(r"^v(\d{2,3})\.0$")
MIN_VERSION, MAX_VERSION = 31, 64
COLLECTION_LIMIT = 200
ORG_ID = "00D5g000004ABCDEAQ"
INTEGRATION_USER = "0055g000001INTGAA2"
REP_USER = "0055g000001MARIAA2"

_COMMON = {
    "Id": "id",
    "OwnerId": "reference:User",
    "CreatedDate": "datetime",
    "LastModifiedDate": "datetime",
    "SystemModstamp": "datetime",
}
_READ_ONLY = {
    "Id",
    "CreatedDate",
    "LastModifiedDate",
    "SystemModstamp",
    "IsConverted",
    "ConvertedOpportunityId",
    "ConvertedContactId",
    "IsClosed",
    "IsWon",
}
_BASE_FIELDS: dict[str, dict[str, str]] = {
    "User": {"Id": "id", "Name": "string:121"},
    "Lead": {
        **_COMMON,
        "FirstName": "string:40",
        "LastName": "string:80",
        "Company": "string:255",
        "Email": "email",
        "Phone": "string:40",
        "Status": "picklist",
        "Rating": "string:40",
        "IsConverted": "bool",
        "ConvertedOpportunityId": "reference:Opportunity",
        "ConvertedContactId": "reference:Contact",
    },
    "Contact": {
        **_COMMON,
        "FirstName": "string:40",
        "LastName": "string:80",
        "Email": "email",
        "Phone": "string:40",
    },
    "Opportunity": {
        **_COMMON,
        "Name": "string:120",
        "StageName": "picklist",
        "IsClosed": "bool",
        "IsWon": "bool",
        "Amount": "number",
        "CloseDate": "date",
    },
    "OpportunityContactRole": {
        **_COMMON,
        "OpportunityId": "reference:Opportunity",
        "ContactId": "reference:Contact",
        "IsPrimary": "bool",
        "Role": "string:40",
    },
    "OpportunityStage": {
        "Id": "id",
        "ApiName": "string:255",
        "MasterLabel": "string:255",
        "IsClosed": "bool",
        "IsWon": "bool",
    },
    "Task": {
        **_COMMON,
        "Subject": "string:255",
        "Description": "string:32000",
        "ActivityDate": "date",
        "WhoId": "reference:Lead",
        "WhatId": "reference:Opportunity",
        "Status": "picklist",
        "Priority": "picklist",
        "IsReminderSet": "bool",
        "ReminderDateTime": "datetime",
    },
}
_PICKLISTS = {
    ("Lead", "Status"): {
        "Open - Not Contacted",
        "Working - Contacted",
        "Closed - Converted",
        "Closed - Not Converted",
        "Qualified",
    },
    ("Task", "Status"): {
        "Not Started",
        "In Progress",
        "Completed",
        "Waiting on someone else",
        "Deferred",
    },
    ("Task", "Priority"): {"High", "Normal", "Low"},
    ("Opportunity", "StageName"): {
        "Prospecting",
        "Qualification",
        "Proposal/Price Quote",
        "Negotiation/Review",
        "Closed Won",
        "Closed Lost",
    },
}
_STAGES = [
    ("Prospecting", False, False),
    ("Qualification", False, False),
    ("Proposal/Price Quote", False, False),
    ("Negotiation/Review", False, False),
    ("Closed Won", True, True),
    ("Closed Lost", True, False),
]
_REQUIRED = {
    "Lead": ("LastName", "Company"),
    "Contact": ("LastName",),
    "Opportunity": ("Name", "StageName", "CloseDate"),
}
_PREFIX = {
    "Lead": "00Q",
    "Contact": "003",
    "Opportunity": "006",
    "OpportunityContactRole": "00K",
    "Task": "00T",
    "OpportunityStage": "01J",
    "CustomField": "00N",
    "Notification": "04l",
}
_CUSTOM_DEFAULT = {
    "Leadscore_Letter__c": "string:5",
    "Leadscore_Score__c": "number",
    "Leadscore_Tier__c": "string:40",
    "Leadscore_Stage__c": "string:40",
    "Leadscore_Owner__c": "string:80",
    "Leadscore_Next_Action__c": "string:255",
    "Leadscore_Next_Action_Due__c": "datetime",
    "Leadscore_Lead_Id__c": "string:64",
}
_FAIL_BODIES = {
    400: ("BAD_REQUEST", "Bad request"),
    401: ("INVALID_SESSION_ID", "Session expired or invalid"),
    403: ("REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded."),
    404: ("NOT_FOUND", "The requested resource does not exist"),
    500: ("UNKNOWN_EXCEPTION", "An unexpected error occurred. Please include this ErrorId."),
    503: ("SERVER_UNAVAILABLE", "Server temporarily unavailable."),
}
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[A-Za-z]{2,}$")


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> Response:
    return JSONResponse(
        [{"message": message, "errorCode": code}], status_code=status, headers=headers
    )


def _fmt(kind: str, value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + (
            f"{value.microsecond // 1000:03d}+0000"
        )
    if isinstance(value, date):
        return value.isoformat()
    return value


def _parse_datetime(text: str) -> datetime:
    text = re.sub(r"([+-]\d{2})(\d{2})$", r"\1:\2", text.replace("Z", "+00:00"))
    parsed = datetime.fromisoformat(text)
    if parsed.tzinfo is None:
        raise ValueError("no time zone")
    return parsed


class SalesforceStandIn:
    """An org: objects in memory, every request logged, failures injectable."""

    def __init__(
        self,
        *,
        custom_fields: bool = True,
        page_size: int = 2000,
        api_max: int = 15_000,
        rotate_refresh_tokens: bool = False,
    ) -> None:
        self.log = CallLog()
        self.base_url = ""
        self.instance_url = ""
        self._lock = threading.Lock()
        self.reset(
            custom_fields=custom_fields,
            page_size=page_size,
            api_max=api_max,
            rotate_refresh_tokens=rotate_refresh_tokens,
        )
        self.login_app = self._login_app()
        self.instance_app = self._instance_app()

    def reset(
        self,
        *,
        custom_fields: bool = True,
        page_size: int = 2000,
        api_max: int = 15_000,
        rotate_refresh_tokens: bool = False,
    ) -> None:
        """A fresh org behind the same servers (new credentials, no records, empty log): lets a
        test module start the two servers once."""
        self.log.clear()
        self.client_id = "3MVG9" + secrets.token_hex(20)
        self.client_secret = secrets.token_hex(32)
        self.refresh_token = "5Aep861" + secrets.token_hex(24)
        self.organization_id = ORG_ID
        self.page_size = page_size
        self.api_max = api_max
        self.api_used = 0
        self.rotate_refresh_tokens = rotate_refresh_tokens
        self.tokens_issued: list[str] = []
        self._live_tokens: set[str] = set()
        self._refresh_tokens = {self.refresh_token}
        self._ids = itertools.count(1)
        self._clock = datetime.now(UTC).replace(microsecond=0)
        self._failures: list[tuple[int, dict[str, Any]]] = []
        self._record_failures: dict[str, tuple[str, str]] = {}
        self._cursors: dict[str, tuple[list[dict[str, Any]], int]] = {}
        self.fields: dict[str, dict[str, str]] = {k: dict(v) for k, v in _BASE_FIELDS.items()}
        if custom_fields:
            for obj in ("Lead", "Contact"):
                self.fields[obj].update(_CUSTOM_DEFAULT)
        self.records: dict[str, dict[str, dict[str, Any]]] = {obj: {} for obj in self.fields}
        self.deleted: dict[str, str] = {}  # id -> object
        #: Fields an outbound message carries, as chosen in its Setup page.
        self.opportunity_message_fields = [
            "Id",
            "StageName",
            "IsClosed",
            "IsWon",
            "Amount",
            "CreatedDate",
            "LastModifiedDate",
        ]
        self.lead_message_fields = ["Id", "Email", "Status", "LastModifiedDate"]
        for user_id, name in ((INTEGRATION_USER, "Integration User"), (REP_USER, "Maria Rossi")):
            self.records["User"][user_id] = {"Id": user_id, "Name": name}
        for api_name, closed, won in _STAGES:
            stage_id = self._new_id("OpportunityStage")
            self.records["OpportunityStage"][stage_id] = {
                "Id": stage_id,
                "ApiName": api_name,
                "MasterLabel": api_name,
                "IsClosed": closed,
                "IsWon": won,
            }
        self.schema = soql.Schema(
            fields=self.fields,
            children={
                ("Opportunity", "OpportunityContactRoles"): (
                    "OpportunityContactRole",
                    "OpportunityId",
                )
            },
            records=lambda obj: self.records.get(obj, {}),
        )

    # -- the interface the tests use ------------------------------------------------------------

    def connector_config(self, name: str = "salesforce", **overrides: Any) -> ConnectorConfig:
        values: dict[str, Any] = {
            "name": name,
            "kind": "salesforce",
            "base_url": self.base_url,
            "credentials": {
                "client_id": self.client_id,
                "client_secret": self.client_secret,
                "organization_id": self.organization_id,
            },
            "field_map": {},
            "owner_map": {},
            "create_missing": True,
            "options": {"api_version": "v62.0", "object": "Lead"},
        }
        values.update(overrides)
        return ConnectorConfig(**values)

    def person(self, email: str) -> dict[str, Any] | None:
        for obj in ("Lead", "Contact"):
            for record in self.records[obj].values():
                if str(record.get("Email") or "").lower() == email.lower():
                    return self._render(obj, record)
        return None

    def tasks(self) -> list[dict[str, Any]]:
        return [self._render("Task", record) for record in self.records["Task"].values()]

    def fail_next(self, status: int, times: int = 1, **details: Any) -> None:
        """The next ``times`` instance calls answer ``status`` with Salesforce's error body
        (``errorCode`` and ``message`` in ``details`` override the defaults per status)."""
        with self._lock:
            self._failures.extend([(status, details)] * times)

    def fail_record(
        self,
        email: str,
        code: str = "UNABLE_TO_LOCK_ROW",
        message: str = "unable to obtain exclusive access to this record",
    ) -> None:
        """The next collection write of the record with this email fails with ``code``."""
        self._record_failures[email.lower()] = (code, message)

    def expire_sessions(self) -> None:
        """Every access token stops working (session timeout, or revoked)."""
        self._live_tokens.clear()

    def add(self, obj: str, **fields: Any) -> str:
        """A record made in Salesforce's UI (not through the connector)."""
        record_id = self._new_id(obj)
        stamp = self._tick()
        record = {
            "Id": record_id,
            "OwnerId": INTEGRATION_USER,
            "CreatedDate": stamp,
            "LastModifiedDate": stamp,
            "SystemModstamp": stamp,
            **fields,
        }
        if obj == "Lead":
            record.setdefault("Status", "Open - Not Contacted")
            record.setdefault("IsConverted", False)
        self.records[obj][record_id] = record
        return record_id

    def outcome_notification(
        self, email: str, outcome: OutcomeType, url: str
    ) -> tuple[str, dict[str, str], bytes]:
        lead = self._find("Lead", email)
        if outcome in ("lead.contacted", "lead.accepted"):
            if lead is None:
                # A person entered in Salesforce by hand, never scored by us: Status lives on
                # leads (contacts have none), so a lead is what a rep would work on.
                lead = self.records["Lead"][
                    self.add("Lead", LastName="Entered by hand", Company="Unknown", Email=email)
                ]
            self._touch(
                lead, Status="Working - Contacted" if outcome == "lead.contacted" else "Qualified"
            )
            return self._message("Lead", lead, self.lead_message_fields)
        opportunity = self._opportunity_for(email, lead)
        if outcome == "deal.won":
            self._touch(opportunity, StageName="Closed Won", IsClosed=True, IsWon=True)
        elif outcome == "deal.lost":
            self._touch(opportunity, StageName="Closed Lost", IsClosed=True, IsWon=False)
        return self._message("Opportunity", opportunity, self.opportunity_message_fields)

    # -- org state --------------------------------------------------------------------------------

    def _new_id(self, obj: str) -> str:
        return f"{_PREFIX.get(obj, '001')}5g{next(self._ids):010d}AAA"

    def _tick(self) -> datetime:
        """Salesforce's clock: real time, but strictly increasing so ordering is testable."""
        now = datetime.now(UTC)
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)  # Salesforce keeps ms
        self._clock = max(now, self._clock + timedelta(milliseconds=1))
        return self._clock

    def _touch(self, record: dict[str, Any], **fields: Any) -> None:
        stamp = self._tick()
        record.update(fields, LastModifiedDate=stamp, SystemModstamp=stamp)

    def _find(self, obj: str, email: str) -> dict[str, Any] | None:
        return next(
            (
                r
                for r in self.records[obj].values()
                if str(r.get("Email") or "").lower() == email.lower()
            ),
            None,
        )

    def _opportunity_for(self, email: str, lead: dict[str, Any] | None) -> dict[str, Any]:
        """The person's open opportunity; a lead is converted (contact, opportunity, contact
        role) the first time, as Salesforce's Convert button does."""
        if lead is not None and lead.get("ConvertedOpportunityId"):
            return self.records["Opportunity"][lead["ConvertedOpportunityId"]]
        contact = self._find("Contact", email)
        if contact is not None:
            for role in self.records["OpportunityContactRole"].values():
                if role["ContactId"] == contact["Id"]:
                    return self.records["Opportunity"][role["OpportunityId"]]
        if contact is None:
            source = lead or {}
            contact_id = self.add(
                "Contact",
                LastName=source.get("LastName", "Unknown"),
                FirstName=source.get("FirstName"),
                Email=email,
            )
            contact = self.records["Contact"][contact_id]
        name = (lead or {}).get("Company") or email
        opportunity_id = self.add(
            "Opportunity",
            Name=f"{name} - deal",
            StageName="Prospecting",
            IsClosed=False,
            IsWon=False,
            Amount=12000.0,
            CloseDate=date.today() + timedelta(days=30),
        )
        self.add(
            "OpportunityContactRole",
            OpportunityId=opportunity_id,
            ContactId=contact["Id"],
            IsPrimary=True,
            Role="Decision Maker",
        )
        if lead is not None:
            self._touch(
                lead,
                IsConverted=True,
                ConvertedOpportunityId=opportunity_id,
                ConvertedContactId=contact["Id"],
                Status="Closed - Converted",
            )
        return self.records["Opportunity"][opportunity_id]

    def _message(
        self, obj: str, record: dict[str, Any], fields: list[str]
    ) -> tuple[str, dict[str, str], bytes]:
        values: dict[str, str | None] = {}
        for name in fields:
            value = record.get(name)
            if isinstance(value, bool):
                values[name] = "true" if value else "false"
            elif isinstance(value, datetime):
                values[name] = value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + (
                    f"{value.microsecond // 1000:03d}Z"
                )
            elif isinstance(value, float):
                values[name] = repr(value)
            else:
                values[name] = None if value is None else str(value)
        notification = outbound.Notification(self._new_id("Notification"), obj, values)
        body = outbound.build(
            self.organization_id, "04k5g000000ACTNAA2", self.instance_url, [notification]
        )
        headers = {"content-type": "text/xml; charset=utf-8", "soapaction": '""'}
        return "POST", headers, body

    def _render(self, obj: str, record: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "attributes": {"type": obj, "url": f"/services/data/v62.0/sobjects/{obj}"}
        }
        for name, value in record.items():
            out[name] = _fmt(self.fields[obj].get(name, ""), value)
        return out

    # -- the login host -------------------------------------------------------------------------

    def _login_app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/services/oauth2/token")
        async def token(request: Request) -> Response:
            await self.log.record(request)
            if not request.headers.get("content-type", "").startswith(
                "application/x-www-form-urlencoded"
            ):
                return JSONResponse(
                    {
                        "error": "invalid_request",
                        "error_description": "must use application/x-www-form-urlencoded",
                    },
                    status_code=400,
                )
            form = dict((await request.form()).items())
            if (
                form.get("client_id") != self.client_id
                or form.get("client_secret") != self.client_secret
            ):
                return JSONResponse(
                    {"error": "invalid_client", "error_description": "invalid client credentials"},
                    status_code=400,
                )
            grant = form.get("grant_type")
            answer: dict[str, Any] = {}
            if grant == "refresh_token":
                if form.get("refresh_token") not in self._refresh_tokens:
                    return JSONResponse(
                        {
                            "error": "invalid_grant",
                            "error_description": "expired access/refresh token",
                        },
                        status_code=400,
                    )
                if self.rotate_refresh_tokens:
                    self._refresh_tokens.discard(str(form["refresh_token"]))
                    fresh = "5Aep861" + secrets.token_hex(24)
                    self._refresh_tokens.add(fresh)
                    answer["refresh_token"] = fresh
            elif grant == "client_credentials":
                answer["scope"] = "api"
            else:
                return JSONResponse(
                    {
                        "error": "unsupported_grant_type",
                        "error_description": "grant type not supported",
                    },
                    status_code=400,
                )
            access = f"{self.organization_id[:15]}!AR" + secrets.token_urlsafe(48)
            self._live_tokens.add(access)
            self.tokens_issued.append(access)
            return JSONResponse(
                {
                    **answer,
                    "access_token": access,
                    "instance_url": self.instance_url,
                    "id": f"{self.base_url}/id/{self.organization_id}/{INTEGRATION_USER}",
                    "token_type": "Bearer",
                    "issued_at": str(int(datetime.now(UTC).timestamp() * 1000)),
                    "signature": base64.b64encode(secrets.token_bytes(32)).decode(),
                }
            )

        return app

    # -- the instance ---------------------------------------------------------------------------

    def _instance_app(self) -> FastAPI:
        app = FastAPI()

        @app.api_route("/{path:path}", methods=["GET", "POST", "PATCH", "DELETE", "PUT"])
        async def handle(request: Request, path: str) -> Response:
            call = await self.log.record(request)
            auth = request.headers.get("authorization", "")
            if not auth.startswith("Bearer ") or auth[7:] not in self._live_tokens:
                return _error(401, "INVALID_SESSION_ID", "Session expired or invalid")
            with self._lock:
                failure = self._failures.pop(0) if self._failures else None
                self.api_used += 1
                used = self.api_used
            usage = {"Sforce-Limit-Info": f"api-usage={min(used, self.api_max)}/{self.api_max}"}
            if failure is not None:
                status, details = failure
                code, message = _FAIL_BODIES.get(status, ("UNKNOWN_EXCEPTION", "error"))
                return _error(
                    status, details.get("errorCode", code), details.get("message", message), usage
                )
            if used > self.api_max:
                return _error(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.", usage)
            status, body = self._route(request.method, "/" + path, call.query, call.body)
            if status == 204:
                return Response(status_code=204, headers=usage)
            return JSONResponse(body, status_code=status, headers=usage)

        return app

    def _route(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        match = re.match(r"^/services/data/(v[^/]+)(/.*)$", path)
        not_found = (
            404,
            [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}],
        )
        if match is None:
            return not_found
        version = API_VERSION_RE.match(match.group(1))
        if version is None or not MIN_VERSION <= int(version.group(1)) <= MAX_VERSION:
            return not_found
        rest = match.group(2)
        if method == "GET" and rest == "/query":
            return self._query(query.get("q", ""), match.group(1))
        if method == "GET" and rest.startswith("/query/"):
            return self._more(rest.removeprefix("/query/"), match.group(1))
        if rest == "/composite/sobjects" and method in ("POST", "PATCH"):
            return self._collection(method, body)
        if rest == "/sobjects/Task" and method == "POST":
            return self._create_task(body)
        if rest == "/tooling/sobjects/CustomField" and method == "POST":
            return self._custom_field(body)
        record = re.match(r"^/sobjects/(\w+)/(\w{15,18})$", rest)
        if record and method in ("PATCH", "DELETE"):
            obj, record_id = record.groups()
            if record_id in self.deleted:
                return 404, [
                    {"errorCode": "ENTITY_IS_DELETED", "message": "entity is deleted", "fields": []}
                ]
            if obj not in self.records or record_id not in self.records[obj]:
                return not_found
            if method == "DELETE":
                self.deleted[record_id] = obj
                del self.records[obj][record_id]
                return 204, None
            errors = self._write(obj, self.records[obj][record_id], body, creating=False)
            if errors:
                return 400, [
                    {"errorCode": e["statusCode"], "message": e["message"], "fields": e["fields"]}
                    for e in errors
                ]
            return 204, None
        return not_found

    # queries

    def _query(self, text: str, version: str) -> tuple[int, Any]:
        try:
            rows = soql.run(self.schema, soql.parse(text), self._render_empty)
        except soql.SoqlError as exc:
            return 400, [{"message": exc.message, "errorCode": exc.code}]
        return 200, self._page(rows, 0, secrets.token_hex(8), version)

    def _more(self, locator: str, version: str) -> tuple[int, Any]:
        key, _, offset = locator.rpartition("-")
        if key not in self._cursors or not offset.isdigit():
            return 400, [{"errorCode": "INVALID_QUERY_LOCATOR", "message": "invalid query locator"}]
        rows, _ = self._cursors[key]
        return 200, self._page(rows, int(offset), key, version)

    def _page(
        self, rows: list[dict[str, Any]], offset: int, key: str, version: str
    ) -> dict[str, Any]:
        page = rows[offset : offset + self.page_size]
        answer: dict[str, Any] = {
            "totalSize": len(rows),
            "done": offset + len(page) >= len(rows),
            "records": page,
        }
        if not answer["done"]:
            self._cursors[key] = (rows, offset + len(page))
            answer["nextRecordsUrl"] = f"/services/data/{version}/query/{key}-{offset + len(page)}"
        return answer

    def _render_empty(self, obj: str, values: dict[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "attributes": {"type": obj, "url": f"/services/data/v62.0/sobjects/{obj}"}
        }
        for name, value in values.items():
            out[name] = _fmt("", value)
        return out

    # writes

    def _collection(self, method: str, body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("records"), list):
            return 400, [
                {"errorCode": "JSON_PARSER_ERROR", "message": "Expected a JSON object with records"}
            ]
        unknown = set(body) - {"allOrNone", "records"}
        if unknown:
            return 400, [
                {
                    "errorCode": "JSON_PARSER_ERROR",
                    "message": f"Unrecognized field name: {sorted(unknown)[0]}",
                }
            ]
        if "allOrNone" in body and not isinstance(body["allOrNone"], bool):
            return 400, [{"errorCode": "JSON_PARSER_ERROR", "message": "allOrNone must be boolean"}]
        records = body["records"]
        if len(records) > COLLECTION_LIMIT:
            return 400, [
                {
                    "errorCode": "EXCEEDED_ID_LIMIT",
                    "message": "record limit reached. cannot submit more than 200 records "
                    "into this call",
                }
            ]
        for record in records:
            obj = (record.get("attributes") or {}).get("type") if isinstance(record, dict) else None
            if obj not in ("Lead", "Contact", "Task", "Opportunity"):
                return 400, [
                    {"errorCode": "INVALID_TYPE", "message": "Must send a concrete entity type."}
                ]
            for name in record:
                if name not in ("attributes", "id") and name not in self.fields[obj]:
                    return 400, [
                        {
                            "errorCode": "INVALID_FIELD",
                            "message": f"No such column '{name}' on sobject of type {obj}",
                        }
                    ]
        results = []
        for record in records:
            obj = record["attributes"]["type"]
            values = {k: v for k, v in record.items() if k not in ("attributes", "id")}
            email = str(values.get("Email") or "").lower()
            if method == "PATCH":
                record_id = record.get("id")
                target = self.records[obj].get(record_id or "")
                if not record_id:
                    results.append(
                        _failed("MISSING_ARGUMENT", "Id not specified in an update call")
                    )
                    continue
                if target is None:
                    code = (
                        "ENTITY_IS_DELETED"
                        if record_id in self.deleted
                        else "INVALID_CROSS_REFERENCE_KEY"
                    )
                    results.append(
                        _failed(
                            code,
                            "entity is deleted"
                            if record_id in self.deleted
                            else "invalid cross reference id",
                            id_=record_id,
                        )
                    )
                    continue
                email = email or str(target.get("Email") or "").lower()
                injected = self._record_failures.pop(email, None)
                if injected:
                    results.append(_failed(*injected, id_=record_id))
                    continue
                if target.get("IsConverted"):
                    results.append(
                        _failed(
                            "CANNOT_UPDATE_CONVERTED_LEAD",
                            "cannot reference converted lead",
                            id_=record_id,
                        )
                    )
                    continue
                errors = self._write(obj, target, values, creating=False)
                results.append({"id": record_id, "success": not errors, "errors": errors})
            else:
                if "id" in record:
                    results.append(_failed("INVALID_FIELD", "cannot specify Id in an insert call"))
                    continue
                injected = self._record_failures.pop(email, None)
                if injected:
                    results.append(_failed(*injected))
                    continue
                candidate: dict[str, Any] = {}
                errors = self._write(obj, candidate, values, creating=True)
                if errors:
                    results.append({"success": False, "errors": errors})
                    continue
                record_id = self.add(obj, **candidate)
                results.append({"id": record_id, "success": True, "errors": []})
        return 200, results

    def _write(
        self, obj: str, target: dict[str, Any], values: Any, *, creating: bool
    ) -> list[dict[str, Any]]:
        """Check and apply one record's fields; Salesforce's per-record errors if any."""
        if not isinstance(values, dict):
            return [_err("JSON_PARSER_ERROR", "expected an object", [])]
        converted: dict[str, Any] = {}
        for name, value in values.items():
            kind = self.fields[obj].get(name)
            if kind is None:
                return [
                    _err(
                        "INVALID_FIELD", f"No such column '{name}' on sobject of type {obj}", [name]
                    )
                ]
            if name in _READ_ONLY:
                return [
                    _err(
                        "INVALID_FIELD_FOR_INSERT_UPDATE",
                        f"Unable to create/update fields: {name}. Please check the security "
                        "settings of this field and verify that it is read/write for your "
                        "profile or permission set.",
                        [name],
                    )
                ]
            if value is None:
                converted[name] = None
                continue
            try:
                converted[name] = self._convert(obj, name, kind, value)
            except ValueError as exc:
                code, _, message = str(exc).partition("|")
                return [_err(code, message, [name])]
        merged = {**target, **converted}
        if creating:
            missing = [name for name in _REQUIRED.get(obj, ()) if not merged.get(name)]
            if missing:
                return [
                    _err(
                        "REQUIRED_FIELD_MISSING",
                        f"Required fields are missing: [{', '.join(missing)}]",
                        missing,
                    )
                ]
        if creating:
            target.update(converted)
        else:
            self._touch(target, **converted)
        return []

    def _convert(self, obj: str, name: str, kind: str, value: Any) -> Any:
        if kind.startswith("string"):
            if not isinstance(value, str):
                raise ValueError(
                    f"INVALID_TYPE_ON_FIELD_IN_RECORD|{name}: value not of required type"
                )
            limit = int(kind.split(":")[1])
            if len(value) > limit:
                raise ValueError(
                    f"STRING_TOO_LONG|{name}: data value too large: {value[:20]}"
                    f" (max length={limit})"
                )
            return value
        if kind == "email":
            if not isinstance(value, str) or not _EMAIL.match(value):
                raise ValueError(f"INVALID_EMAIL_ADDRESS|{name}: invalid email address: {value}")
            return value
        if kind == "number":
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(
                    f"INVALID_TYPE_ON_FIELD_IN_RECORD|{name}: value not of required type"
                )
            return float(value)
        if kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(
                    f"INVALID_TYPE_ON_FIELD_IN_RECORD|{name}: value not of required type"
                )
            return value
        if kind == "datetime":
            try:
                return _parse_datetime(str(value))
            except ValueError:
                raise ValueError(
                    f"INVALID_TYPE_ON_FIELD_IN_RECORD|{name}: value not of required type: {value}"
                ) from None
        if kind == "date":
            if not isinstance(value, str) or not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
                raise ValueError(
                    f"INVALID_TYPE_ON_FIELD_IN_RECORD|{name}: value not of required type: {value}"
                )
            return date.fromisoformat(value)
        if kind == "picklist":
            allowed = _PICKLISTS.get((obj, name), set())
            if value not in allowed:
                raise ValueError(
                    f"INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST|{name}: bad value for "
                    f"restricted picklist field: {value}"
                )
            return value
        if kind.startswith("reference:"):
            target = kind.split(":", 1)[1]
            targets = ("Lead", "Contact") if (obj, name) == ("Task", "WhoId") else (target,)
            if not any(value in self.records[t] for t in targets):
                raise ValueError(
                    f"INVALID_CROSS_REFERENCE_KEY|{name}: id value of incorrect type: {value}"
                )
            return value
        return value

    def _create_task(self, body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict):
            return 400, [{"errorCode": "JSON_PARSER_ERROR", "message": "expected an object"}]
        for name in body:
            if name not in self.fields["Task"]:
                return 400, [
                    {
                        "errorCode": "INVALID_FIELD",
                        "message": f"No such column '{name}' on sobject of type Task",
                    }
                ]
        candidate: dict[str, Any] = {}
        errors = self._write("Task", candidate, body, creating=True)
        if errors:
            return 400, [
                {"errorCode": e["statusCode"], "message": e["message"], "fields": e["fields"]}
                for e in errors
            ]
        candidate.setdefault("OwnerId", INTEGRATION_USER)
        return 201, {"id": self.add("Task", **candidate), "success": True, "errors": []}

    def _custom_field(self, body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict) or set(body) != {"FullName", "Metadata"}:
            return 400, [
                {
                    "errorCode": "JSON_PARSER_ERROR",
                    "message": "CustomField needs FullName and Metadata",
                }
            ]
        match = re.fullmatch(r"(\w+)\.([A-Za-z][A-Za-z0-9_]*__c)", str(body["FullName"]))
        metadata = body["Metadata"]
        if match is None or match.group(1) not in self.fields:
            return 400, [
                {"errorCode": "INVALID_FIELD", "message": "invalid FullName", "fields": []}
            ]
        if not isinstance(metadata, dict) or not metadata.get("label"):
            return 400, [
                {
                    "errorCode": "REQUIRED_FIELD_MISSING",
                    "message": "Required field is missing: label",
                    "fields": ["label"],
                }
            ]
        obj, name = match.groups()
        kind = metadata.get("type")
        if kind == "Text":
            length = metadata.get("length")
            if not isinstance(length, int) or not 1 <= length <= 255:
                return 400, [
                    {
                        "errorCode": "FIELD_INTEGRITY_EXCEPTION",
                        "message": "Length: Must be between 1 and 255",
                        "fields": ["length"],
                    }
                ]
            field_kind = f"string:{length}"
        elif kind == "Number":
            if not isinstance(metadata.get("precision"), int) or not isinstance(
                metadata.get("scale"), int
            ):
                return 400, [
                    {
                        "errorCode": "FIELD_INTEGRITY_EXCEPTION",
                        "message": "Number fields need precision and scale",
                        "fields": ["precision"],
                    }
                ]
            field_kind = "number"
        elif kind == "DateTime":
            field_kind = "datetime"
        else:
            return 400, [
                {
                    "errorCode": "FIELD_INTEGRITY_EXCEPTION",
                    "message": f"unsupported type: {kind}",
                    "fields": ["type"],
                }
            ]
        if name in self.fields[obj]:
            return 400, [
                {
                    "errorCode": "DUPLICATE_DEVELOPER_NAME",
                    "message": f"There is already a field named {name.removesuffix('__c')} "
                    f"on {obj}.",
                    "fields": [],
                }
            ]
        self.fields[obj][name] = field_kind
        return 201, {
            "id": self._new_id("CustomField"),
            "success": True,
            "errors": [],
            "warnings": [],
            "infos": [],
        }


def _err(code: str, message: str, fields: list[str]) -> dict[str, Any]:
    return {"statusCode": code, "message": message, "fields": fields}


def _failed(code: str, message: str, id_: str | None = None) -> dict[str, Any]:
    result: dict[str, Any] = {"success": False, "errors": [_err(code, message, [])]}
    if id_:
        result["id"] = id_
    return result


@contextmanager
def running(**options: Any) -> Iterator[SalesforceStandIn]:
    """The org's login host and instance host, each a real uvicorn server on 127.0.0.1."""
    stand_in = SalesforceStandIn(**options)
    with ExitStack() as stack:
        stand_in.base_url = stack.enter_context(serve(stand_in.login_app))
        stand_in.instance_url = stack.enter_context(serve(stand_in.instance_app))
        yield stand_in
