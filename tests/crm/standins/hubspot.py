"""A HubSpot stand-in: the CRM v3/v4 endpoints the connector uses, as HubSpot documents them.

It checks what HubSpot checks (the bearer token, batch sizes, unknown properties, required
fields, enumeration values, owner ids, duplicate ids in a batch, the 4 requests per second of
CRM search) and answers in HubSpot's shapes: string ids, ``properties`` as strings, ``paging``
with ``after``, ``{"status":"error","message":...,"category":...}`` errors, 207 Multi-Status
for batch reads with missing ids, ``X-HubSpot-RateLimit-*`` headers and 429s with
``policyName``. Notifications are JSON arrays of events signed with signature v3.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from tests.crm.standins.common import Call, CallLog, serve

from leadscore_api.crm.base import ConnectorConfig, OutcomeType
from leadscore_api.crm.hubspot import hubspot_time, signature_v3

TOKEN = "pat-na1-11111111-2222-3333-4444-555555555555"
CLIENT_SECRET = "hubspot-client-secret-0123456789"
PORTAL_ID = 62515
APP_ID = 1160452
OWNERS = {"rep-anna": "101", "rep-ben": "102"}
DAILY_LIMIT = 650_000
MAX_BATCH = 100
SEARCH_PER_SECOND = 4

LEADSCORE_PROPERTIES = {
    "leadscore_letter": "string",
    "leadscore_score": "number",
    "leadscore_tier": "string",
    "leadscore_stage": "string",
    "leadscore_owner": "string",
    "leadscore_next_action": "string",
    "leadscore_next_action_due": "datetime",
    "leadscore_lead_id": "string",
}
STANDARD_CONTACT_PROPERTIES = {
    "email": "string",
    "firstname": "string",
    "lastname": "string",
    "company": "string",
    "phone": "string",
    "hs_lead_status": "enumeration",
    "hubspot_owner_id": "enumeration",
    "lifecyclestage": "enumeration",
    "createdate": "datetime",
    "lastmodifieddate": "datetime",
    "hs_object_id": "number",
}
READ_ONLY = {"createdate", "lastmodifieddate", "hs_object_id"}
LEAD_STATUSES = {
    "NEW",
    "OPEN",
    "IN_PROGRESS",
    "OPEN_DEAL",
    "UNQUALIFIED",
    "ATTEMPTED_TO_CONTACT",
    "CONNECTED",
    "BAD_TIMING",
}
TASK_ENUMS = {
    "hs_task_status": {"NOT_STARTED", "IN_PROGRESS", "WAITING", "COMPLETED", "DEFERRED"},
    "hs_task_priority": {"NONE", "LOW", "MEDIUM", "HIGH"},
    "hs_task_type": {"CALL", "EMAIL", "TODO", "LINKED_IN", "MEETING"},
}
TASK_PROPERTIES = {
    "hs_timestamp",
    "hs_task_subject",
    "hs_task_body",
    "hs_task_status",
    "hs_task_priority",
    "hs_task_type",
    "hubspot_owner_id",
}
TASK_TO_CONTACT = 204
DEAL_TO_CONTACT = 3
#: The default sales pipeline as HubSpot creates it (probabilities are strings in metadata).
DEFAULT_PIPELINE = {
    "id": "default",
    "label": "Sales Pipeline",
    "displayOrder": 0,
    "archived": False,
    "stages": [
        {"id": sid, "label": label, "displayOrder": i, "archived": False, "metadata": meta}
        for i, (sid, label, meta) in enumerate(
            [
                (
                    "appointmentscheduled",
                    "Appointment Scheduled",
                    {"isClosed": "false", "probability": "0.2"},
                ),
                ("qualifiedtobuy", "Qualified To Buy", {"isClosed": "false", "probability": "0.4"}),
                ("contractsent", "Contract Sent", {"isClosed": "false", "probability": "0.9"}),
                ("closedwon", "Closed Won", {"isClosed": "true", "probability": "1.0"}),
                ("closedlost", "Closed Lost", {"isClosed": "true", "probability": "0.0"}),
            ]
        )
    ],
}
#: Top-level fields each endpoint (by its last path segment) accepts; others are a 400.
ALLOWED_FIELDS = {
    "upsert": {"inputs"},
    "update": {"inputs"},
    "read": {"inputs", "idProperty", "properties", "propertiesWithHistory", "archived"},
    "tasks": {"properties", "associations"},
    "merge": {"primaryObjectId", "objectIdToMerge"},
    "gdpr-delete": {"objectId", "idProperty"},
    "search": {"filterGroups", "sorts", "properties", "limit", "after", "query"},
    "groups": {"name", "label", "displayOrder"},
    "contacts": {
        "name",
        "label",
        "type",
        "fieldType",
        "groupName",
        "description",
        "options",
        "displayOrder",
        "hasUniqueValue",
        "hidden",
        "formField",
    },
}
INPUT_FIELDS = {"id", "idProperty", "properties", "objectWriteTraceId"}
SUBSCRIPTIONS = {"deal.creation": 1801, "deal.propertyChange": 1802, "contact.propertyChange": 1803}


class HubSpotError(Exception):
    def __init__(self, status: int, message: str, category: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = {
            "status": "error",
            "message": message,
            "correlationId": "4f7a2c1e-0d4b-4a6e-9a57-2f3a4c5d6e7f",
            "category": category,
            **extra,
        }


def _now() -> str:
    return hubspot_time(datetime.now(UTC))


def _ms(value: str) -> int:
    return int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000)


@dataclass
class Record:
    id: str
    properties: dict[str, str]
    created_at: str = field(default_factory=_now)
    updated_at: str = field(default_factory=_now)

    def shape(self, only: list[str] | None = None) -> dict[str, Any]:
        props = dict(self.properties)
        if only is not None:
            keep = {*only, "hs_object_id", "createdate", "lastmodifieddate", "hs_lastmodifieddate"}
            props = {k: v for k, v in props.items() if k in keep}
        return {
            "id": self.id,
            "properties": props,
            "createdAt": self.created_at,
            "updatedAt": self.updated_at,
            "archived": False,
        }


@dataclass
class Failure:
    status: int
    details: dict[str, Any]


class HubSpotStandIn:
    """An account (portal) with contacts, deals, tasks, a default pipeline and two owners."""

    def __init__(
        self,
        *,
        token: str = TOKEN,
        client_secret: str = CLIENT_SECRET,
        custom_properties: bool = True,
        owners: dict[str, str] | None = None,
        missing_update: str = "404",
    ) -> None:
        # How batch update answers an id that does not exist: HubSpot's reference does not
        # say; "404" refuses the whole batch, "207" writes the others and lists it in errors.
        self.missing_update = missing_update
        self.token = token
        self.client_secret = client_secret
        self.owner_map = dict(OWNERS if owners is None else owners)
        self.custom_properties = custom_properties
        self.log = CallLog()
        self.base_url = ""
        self.lock = threading.Lock()
        self.reset()
        self.app = self._build_app()

    def reset(self) -> None:
        """Back to a fresh account (tests share one server per module to save start-ups)."""
        with self.lock:
            self.log.clear()
            self.contacts: dict[str, Record] = {}
            self.deals: dict[str, Record] = {}
            self.deal_contacts: dict[str, list[str]] = {}
            self._tasks: list[Record] = []
            self.task_contacts: dict[str, list[str]] = {}
            self.properties: dict[str, str] = dict(STANDARD_CONTACT_PROPERTIES)
            self.groups: set[str] = {"contactinformation"}
            if self.custom_properties:
                self.properties.update(LEADSCORE_PROPERTIES)
                self.groups.add("leadscore")
            self.property_definitions: dict[str, dict[str, Any]] = {}
            self.pipelines = [json.loads(json.dumps(DEFAULT_PIPELINE))]
            self.erased: list[str] = []
            self._ids = itertools.count(51)
            self._failures: deque[Failure] = deque()
            self._searches: deque[float] = deque()
            self.daily_remaining = DAILY_LIMIT

    # -- the interface every stand-in has -------------------------------------------------

    def connector_config(self, name: str = "hubspot", **overrides: Any) -> ConnectorConfig:
        values: dict[str, Any] = {
            "name": name,
            "kind": "hubspot",
            "base_url": self.base_url,
            "credentials": {"token": self.token, "client_secret": self.client_secret},
            "field_map": {},  # the connector's default map (leadscore_* properties)
            "owner_map": dict(self.owner_map),
            "create_missing": True,
            "options": {},
        }
        values.update(overrides)
        return ConnectorConfig(**values)

    def person(self, email: str) -> dict[str, Any] | None:
        record = self._contact_by_email(email)
        return dict(record.properties) if record else None

    def tasks(self) -> list[dict[str, Any]]:
        return [
            {"id": task.id, **task.properties, "contacts": self.task_contacts.get(task.id, [])}
            for task in self._tasks
        ]

    def outcome_notification(
        self, email: str, outcome: OutcomeType, url: str
    ) -> tuple[str, dict[str, str], bytes]:
        with self.lock:
            contact = self._contact_by_email(email) or self._create_contact(
                {"email": email.lower()}
            )
            if outcome in ("lead.accepted", "lead.contacted"):
                value = "IN_PROGRESS" if outcome == "lead.accepted" else "CONNECTED"
                self._touch(contact, {"hs_lead_status": value})
                event = self._event("contact.propertyChange", contact.id, "hs_lead_status", value)
            elif outcome == "opportunity.created":
                deal = self._create_deal(contact.id, "appointmentscheduled")
                event = self._event("deal.creation", deal.id)
            else:
                stage = "closedwon" if outcome == "deal.won" else "closedlost"
                deal = self._deal_of(contact.id) or self._create_deal(
                    contact.id, "appointmentscheduled"
                )
                self._touch(
                    deal, {"dealstage": stage, "closedate": _now()}, modified="hs_lastmodifieddate"
                )
                event = self._event("deal.propertyChange", deal.id, "dealstage", stage)
        return self.sign("POST", url, json.dumps([event]).encode())

    def fail_next(self, status: int, times: int = 1, **details: Any) -> None:
        """``details``: ``policy`` (DAILY, SECONDLY, TEN_SECONDLY) and ``retry_after`` for 429s."""
        with self.lock:
            self._failures.extend(Failure(status, dict(details)) for _ in range(times))

    # -- helpers for tests ----------------------------------------------------------------

    def sign(
        self, method: str, url: str, body: bytes, timestamp_ms: int | None = None
    ) -> tuple[str, dict[str, str], bytes]:
        timestamp = str(timestamp_ms if timestamp_ms is not None else int(time.time() * 1000))
        return (
            method,
            {
                "content-type": "application/json",
                "user-agent": "HubSpot Webhooks",
                "x-hubspot-request-timestamp": timestamp,
                "x-hubspot-signature-v3": signature_v3(
                    self.client_secret, method, url, body, timestamp
                ),
            },
            body,
        )

    def add_contact(self, email: str, **properties: str) -> str:
        with self.lock:
            return self._create_contact({"email": email.lower(), **properties}).id

    def add_deal(
        self, contact_id: str | None, stage: str = "appointmentscheduled", **properties: str
    ) -> str:
        with self.lock:
            deal = self._create_deal(contact_id, stage)
            deal.properties.update(properties)
            return deal.id

    def contact_id(self, email: str) -> str | None:
        record = self._contact_by_email(email)
        return record.id if record else None

    def calls(self, path_prefix: str = "") -> list[Call]:
        return [call for call in self.log.calls if call.path.startswith(path_prefix)]

    # -- state ----------------------------------------------------------------------------

    def _next_id(self) -> str:
        return str(next(self._ids))

    def _contact_by_email(self, email: str) -> Record | None:
        email = email.strip().lower()
        for record in self.contacts.values():
            if record.properties.get("email", "").lower() == email:
                return record
        return None

    def _create_contact(self, properties: dict[str, str]) -> Record:
        record_id = self._next_id()
        now = _now()
        record = Record(record_id, {}, now, now)
        record.properties.update(
            {**properties, "hs_object_id": record_id, "createdate": now, "lastmodifieddate": now}
        )
        self.contacts[record_id] = record
        return record

    def _create_deal(self, contact_id: str | None, stage: str) -> Record:
        deal_id = self._next_id()
        now = _now()
        deal = Record(
            deal_id,
            {
                "dealname": f"Deal {deal_id}",
                "dealstage": stage,
                "pipeline": "default",
                "amount": "12000",
                "createdate": now,
                "hs_lastmodifieddate": now,
                "hs_object_id": deal_id,
                **({"closedate": now} if stage.startswith("closed") else {}),
            },
            now,
            now,
        )
        self.deals[deal_id] = deal
        self.deal_contacts[deal_id] = [contact_id] if contact_id else []
        return deal

    def _deal_of(self, contact_id: str) -> Record | None:
        for deal_id, contacts in self.deal_contacts.items():
            if contact_id in contacts:
                return self.deals[deal_id]
        return None

    def _touch(
        self, record: Record, properties: dict[str, str], modified: str = "lastmodifieddate"
    ) -> None:
        now = _now()
        record.properties.update(properties)
        record.properties[modified] = now
        record.updated_at = now

    def _event(
        self, kind: str, object_id: str, prop: str | None = None, value: str | None = None
    ) -> dict[str, Any]:
        event: dict[str, Any] = {
            "eventId": next(self._ids) * 1000 + 7,
            "subscriptionId": SUBSCRIPTIONS[kind],
            "portalId": PORTAL_ID,
            "appId": APP_ID,
            "occurredAt": int(time.time() * 1000),
            "subscriptionType": kind,
            "attemptNumber": 0,
            "objectId": int(object_id),
            "changeFlag": "NEW" if kind.endswith("creation") else "UPDATED",
            "changeSource": "CRM_UI",
        }
        if prop is not None:
            event["propertyName"] = prop
            event["propertyValue"] = value
        return event

    # -- the HTTP side --------------------------------------------------------------------

    def _build_app(self) -> FastAPI:
        app = FastAPI()
        routes: list[tuple[str, re.Pattern[str], Callable[..., tuple[int, Any]]]] = [
            ("POST", re.compile(r"/crm/v3/objects/contacts/batch/upsert"), self._upsert),
            ("POST", re.compile(r"/crm/v3/objects/contacts/batch/update"), self._batch_update),
            ("POST", re.compile(r"/crm/v3/objects/contacts/batch/read"), self._batch_read),
            ("POST", re.compile(r"/crm/v3/objects/contacts/merge"), self._merge),
            ("POST", re.compile(r"/crm/v3/objects/contacts/gdpr-delete"), self._gdpr_delete),
            ("POST", re.compile(r"/crm/v3/objects/(contacts|deals)/search"), self._search),
            ("DELETE", re.compile(r"/crm/v3/objects/contacts/(?P<id>[^/]+)"), self._delete),
            ("POST", re.compile(r"/crm/v3/objects/tasks"), self._create_task),
            ("GET", re.compile(r"/crm/v3/pipelines/deals"), self._pipelines),
            (
                "GET",
                re.compile(r"/crm/v4/objects/deals/(?P<id>[^/]+)/associations/contacts"),
                self._deal_associations,
            ),
            (
                "POST",
                re.compile(r"/crm/v4/associations/deals/contacts/batch/read"),
                self._batch_deal_associations,
            ),
            (
                "GET",
                re.compile(r"/crm/v4/associations/tasks/contacts/labels"),
                self._task_labels,
            ),
            ("POST", re.compile(r"/crm/v3/properties/contacts/groups"), self._create_group),
            ("POST", re.compile(r"/crm/v3/properties/contacts"), self._create_property),
        ]

        @app.api_route("/{path:path}", methods=["GET", "POST", "PATCH", "PUT", "DELETE"])
        async def handle(request: Request) -> Response:
            call = await self.log.record(request)
            with self.lock:
                return self._answer(call, routes)

        return app

    def _headers(self) -> dict[str, str]:
        return {
            "X-HubSpot-RateLimit-Daily": str(DAILY_LIMIT),
            "X-HubSpot-RateLimit-Daily-Remaining": str(self.daily_remaining),
            "X-HubSpot-RateLimit-Interval-Milliseconds": "10000",
            "X-HubSpot-RateLimit-Max": "190",
            "X-HubSpot-RateLimit-Remaining": "189",
        }

    def _answer(
        self, call: Call, routes: list[tuple[str, re.Pattern[str], Callable[..., tuple[int, Any]]]]
    ) -> Response:
        if call.headers.get("authorization") != f"Bearer {self.token}":
            return self._error(
                HubSpotError(
                    401,
                    "Authentication credentials not found. This API supports OAuth 2.0 "
                    "authentication and you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview",
                    "INVALID_AUTHENTICATION",
                )
            )
        if self._failures:
            return self._failure(self._failures.popleft())
        self.daily_remaining -= 1
        for method, pattern, handler in routes:
            match = pattern.fullmatch(call.path)
            if match and method == call.method:
                try:
                    status, body = handler(call, **match.groupdict())
                except HubSpotError as error:
                    return self._error(error)
                if body is None:
                    return Response(status_code=status, headers=self._headers())
                return JSONResponse(body, status_code=status, headers=self._headers())
        return self._error(HubSpotError(404, "Not found", "OBJECT_NOT_FOUND"))

    def _error(self, error: HubSpotError) -> Response:
        return JSONResponse(error.body, status_code=error.status, headers=self._headers())

    def _failure(self, failure: Failure) -> Response:
        headers = self._headers()
        if failure.status == 429:
            policy = str(failure.details.get("policy", "TEN_SECONDLY"))
            if "retry_after" in failure.details:
                headers["Retry-After"] = str(failure.details["retry_after"])
            message = (
                "You have reached your daily limit."
                if policy == "DAILY"
                else "You have reached your ten_secondly_rolling limit."
            )
            if policy == "DAILY":
                headers["X-HubSpot-RateLimit-Daily-Remaining"] = "0"
            body = {
                "status": "error",
                "message": message,
                "errorType": "RATE_LIMIT",
                "correlationId": "c033cdaa-2c40-4a64-ae48-b4cec88dad24",
                "policyName": policy,
                "requestId": "3d3e35b7-0dae-4b9f-a6e3-9c230cbcf8dd",
            }
            return JSONResponse(body, status_code=429, headers=headers)
        category = "INTERNAL_ERROR" if failure.status >= 500 else "VALIDATION_ERROR"
        body = {
            "status": "error",
            "message": str(failure.details.get("message", "internal error")),
            "correlationId": "0b4b5c0e-6b32-4c5e-9d9f-8d9f6f0e1a2b",
            "category": category,
        }
        return JSONResponse(body, status_code=failure.status, headers=headers)

    # -- checks ---------------------------------------------------------------------------

    @staticmethod
    def _object(call: Call) -> dict[str, Any]:
        if not isinstance(call.body, dict):
            raise HubSpotError(400, "Invalid input JSON on line 1", "VALIDATION_ERROR")
        allowed = ALLOWED_FIELDS.get(call.path.rsplit("/", 1)[-1])
        unknown = sorted(set(call.body) - allowed) if allowed is not None else []
        for item in call.body.get("inputs") or [] if allowed is not None else []:
            if isinstance(item, dict):
                unknown += sorted(set(item) - INPUT_FIELDS)
        if unknown:
            raise HubSpotError(
                400,
                f'Invalid input JSON on line 1, column 2: Unrecognized field "{unknown[0]}"',
                "VALIDATION_ERROR",
            )
        return call.body

    def _inputs(self, call: Call) -> list[dict[str, Any]]:
        inputs = self._object(call).get("inputs")
        if not isinstance(inputs, list) or not all(isinstance(i, dict) for i in inputs):
            raise HubSpotError(
                400, "Invalid input JSON: inputs must be an array", "VALIDATION_ERROR"
            )
        if len(inputs) > MAX_BATCH:
            raise HubSpotError(
                400,
                f"Batch input size {len(inputs)} exceeds maximum allowed size of {MAX_BATCH}",
                "VALIDATION_ERROR",
            )
        return inputs

    def _check_properties(self, properties: Any) -> dict[str, str]:
        if not isinstance(properties, dict):
            raise HubSpotError(400, "properties must be an object", "VALIDATION_ERROR")
        problems = []
        for name, value in properties.items():
            kind = self.properties.get(name)
            if kind is None:
                problems.append(
                    (name, f'Property "{name}" does not exist', "PROPERTY_DOESNT_EXIST")
                )
            elif name in READ_ONLY:
                problems.append((name, f'"{name}" is a read only property', "READ_ONLY_VALUE"))
            elif not isinstance(value, str | int | float):
                problems.append((name, f"{value!r} is not a valid value", "INVALID_TYPE"))
            elif value == "":
                continue
            elif kind == "number" and not re.fullmatch(r"-?\d+(\.\d+)?", str(value)):
                problems.append((name, f"{value} is not a valid number", "INVALID_INTEGER"))
            elif kind == "datetime" and not _is_hubspot_time(str(value)):
                problems.append((name, f"{value} is not a valid datetime", "INVALID_DATE"))
            elif name == "hubspot_owner_id" and str(value) not in self.owner_map.values():
                problems.append((name, f"{value} is not a valid owner id", "INVALID_OWNER_ID"))
            elif name == "hs_lead_status" and value not in LEAD_STATUSES:
                problems.append(
                    (name, f"{value} was not one of the allowed options", "INVALID_OPTION")
                )
        if problems:
            detail = [
                {"isValid": False, "message": message, "error": error, "name": name}
                for name, message, error in problems
            ]
            raise HubSpotError(
                400,
                f"Property values were not valid: {json.dumps(detail)}",
                "VALIDATION_ERROR",
            )
        return {name: str(value) for name, value in properties.items()}

    # -- contacts -------------------------------------------------------------------------

    def _upsert(self, call: Call) -> tuple[int, Any]:
        inputs = self._inputs(call)
        ids = [str(item.get("id", "")).lower() for item in inputs]
        if len(set(ids)) != len(ids):
            raise HubSpotError(400, "Duplicate IDs found in batch input", "VALIDATION_ERROR")
        checked = []
        for item in inputs:
            if item.get("idProperty") != "email" or not item.get("id"):
                raise HubSpotError(
                    400, "idProperty must be a unique property such as email", "VALIDATION_ERROR"
                )
            checked.append(
                (str(item["id"]).lower(), self._check_properties(item.get("properties")))
            )
        results = []
        for email, properties in checked:
            record = self._contact_by_email(email)
            new = record is None
            if record is None:
                record = self._create_contact({**properties, "email": email})
            else:
                self._touch(record, {**properties, "email": email})
            results.append({**record.shape(list(properties)), "new": new})
        return 200, {"status": "COMPLETE", "results": results, **_batch_times()}

    def _batch_update(self, call: Call) -> tuple[int, Any]:
        inputs = self._inputs(call)
        missing = [
            str(item.get("id")) for item in inputs if str(item.get("id")) not in self.contacts
        ]
        if missing and self.missing_update == "207":
            found = [item for item in inputs if str(item.get("id")) in self.contacts]
            _status, answer = self._batch_update(
                Call(call.method, call.path, {}, {}, {"inputs": found})
            )
            answer["numErrors"] = 1
            answer["errors"] = [
                {
                    "status": "error",
                    "category": "OBJECT_NOT_FOUND",
                    "message": "Could not get some CONTACT objects, they may be deleted or not exist.",
                    "context": {"ids": missing},
                }
            ]
            return 207, answer
        if missing:
            raise HubSpotError(
                404,
                f"Could not find objects with IDs: {', '.join(missing)}",
                "OBJECT_NOT_FOUND",
            )
        checked = [
            (str(item["id"]), self._check_properties(item.get("properties"))) for item in inputs
        ]
        results = []
        for record_id, properties in checked:
            record = self.contacts[record_id]
            self._touch(record, properties)
            results.append(record.shape(list(properties)))
        return 200, {"status": "COMPLETE", "results": results, **_batch_times()}

    def _batch_read(self, call: Call) -> tuple[int, Any]:
        body = self._object(call)
        inputs = self._inputs(call)
        id_property = body.get("idProperty")
        if id_property not in (None, "email"):
            raise HubSpotError(400, f"{id_property} is not a unique property", "VALIDATION_ERROR")
        wanted = body.get("properties") or []
        results, missing = [], []
        for item in inputs:
            key = str(item.get("id", ""))
            record = (
                self._contact_by_email(key) if id_property == "email" else self.contacts.get(key)
            )
            if record is None:
                missing.append(key)
            else:
                results.append(record.shape(list(wanted)))
        answer: dict[str, Any] = {"status": "COMPLETE", "results": results, **_batch_times()}
        if missing:
            answer["numErrors"] = 1
            answer["errors"] = [
                {
                    "status": "error",
                    "category": "OBJECT_NOT_FOUND",
                    "message": "Could not get some CONTACT objects, they may be deleted or not exist. Check that ids are valid.",
                    "context": {"ids": missing},
                }
            ]
            return 207, answer
        return 200, answer

    def _delete(self, call: Call, id: str) -> tuple[int, Any]:
        if self.contacts.pop(id, None) is None:
            raise HubSpotError(
                404, f"Object not found. objectId are usually numeric. id={id}", "OBJECT_NOT_FOUND"
            )
        self.erased.append(id)
        return 204, None

    def _gdpr_delete(self, call: Call) -> tuple[int, Any]:
        body = self._object(call)
        key = str(body.get("objectId", ""))
        record = (
            self._contact_by_email(key)
            if body.get("idProperty") == "email"
            else self.contacts.get(key)
        )
        if record is None:
            raise HubSpotError(404, "Object not found", "OBJECT_NOT_FOUND")
        del self.contacts[record.id]
        self.erased.append(record.id)
        return 204, None

    def _merge(self, call: Call) -> tuple[int, Any]:
        body = self._object(call)
        unknown = set(body) - {"primaryObjectId", "objectIdToMerge"}
        if unknown or not body.get("primaryObjectId") or not body.get("objectIdToMerge"):
            raise HubSpotError(
                400,
                "Invalid input JSON: primaryObjectId and objectIdToMerge are required",
                "VALIDATION_ERROR",
            )
        primary = self.contacts.get(str(body["primaryObjectId"]))
        other = self.contacts.get(str(body["objectIdToMerge"]))
        if primary is None or other is None:
            raise HubSpotError(404, "Object not found", "OBJECT_NOT_FOUND")
        if primary.id == other.id:
            raise HubSpotError(400, "Cannot merge an object with itself", "VALIDATION_ERROR")
        for name, value in other.properties.items():
            if not primary.properties.get(name):
                primary.properties[name] = value
        del self.contacts[other.id]
        for contacts in self.deal_contacts.values():
            contacts[:] = [primary.id if c == other.id else c for c in contacts]
        self._touch(primary, {})
        return 200, primary.shape()

    # -- tasks ----------------------------------------------------------------------------

    def _create_task(self, call: Call) -> tuple[int, Any]:
        body = self._object(call)
        properties = body.get("properties")
        if not isinstance(properties, dict) or not properties.get("hs_timestamp"):
            raise HubSpotError(400, "hs_timestamp is required", "VALIDATION_ERROR")
        problems = [name for name in properties if name not in TASK_PROPERTIES]
        problems += [
            name
            for name, allowed in TASK_ENUMS.items()
            if name in properties and properties[name] not in allowed
        ]
        if not _is_hubspot_time(str(properties["hs_timestamp"])):
            problems.append("hs_timestamp")
        owner = properties.get("hubspot_owner_id")
        if owner is not None and str(owner) not in self.owner_map.values():
            problems.append("hubspot_owner_id")
        if problems:
            raise HubSpotError(
                400, f"Property values were not valid: {sorted(problems)}", "VALIDATION_ERROR"
            )
        contacts = []
        for association in body.get("associations") or []:
            to = str((association.get("to") or {}).get("id", ""))
            types = association.get("types") or []
            if to not in self.contacts:
                raise HubSpotError(400, f"No CONTACT with id {to}", "VALIDATION_ERROR")
            if types != [
                {"associationCategory": "HUBSPOT_DEFINED", "associationTypeId": TASK_TO_CONTACT}
            ]:
                raise HubSpotError(
                    400,
                    f"Invalid association type for task to contact: {types}",
                    "VALIDATION_ERROR",
                )
            contacts.append(to)
        task = Record(self._next_id(), {k: str(v) for k, v in properties.items()})
        self._tasks.append(task)
        self.task_contacts[task.id] = contacts
        return 201, task.shape()

    def _task_labels(self, call: Call) -> tuple[int, Any]:
        return 200, {
            "results": [{"category": "HUBSPOT_DEFINED", "typeId": TASK_TO_CONTACT, "label": None}]
        }

    # -- deals, pipelines, associations ---------------------------------------------------

    def _pipelines(self, call: Call) -> tuple[int, Any]:
        return 200, {"results": self.pipelines}

    def _deal_associations(self, call: Call, id: str) -> tuple[int, Any]:
        if id not in self.deals:
            raise HubSpotError(404, f"Object not found: deal {id}", "OBJECT_NOT_FOUND")
        return 200, {
            "results": [
                {
                    "toObjectId": int(contact_id),
                    "associationTypes": [
                        {"category": "HUBSPOT_DEFINED", "typeId": DEAL_TO_CONTACT, "label": None}
                    ],
                }
                for contact_id in self.deal_contacts.get(id, [])
            ]
        }

    def _batch_deal_associations(self, call: Call) -> tuple[int, Any]:
        results = []
        for item in self._inputs(call):
            deal_id = str(item.get("id", ""))
            contacts = self.deal_contacts.get(deal_id, [])
            if contacts:
                results.append(
                    {
                        "from": {"id": deal_id},
                        "to": [
                            {
                                "toObjectId": int(contact_id),
                                "associationTypes": [
                                    {
                                        "category": "HUBSPOT_DEFINED",
                                        "typeId": DEAL_TO_CONTACT,
                                        "label": None,
                                    }
                                ],
                            }
                            for contact_id in contacts
                        ],
                    }
                )
        return 200, {"status": "COMPLETE", "results": results, **_batch_times()}

    # -- search ---------------------------------------------------------------------------

    def _search(self, call: Call) -> tuple[int, Any]:
        now = time.monotonic()
        while self._searches and now - self._searches[0] >= 1.0:
            self._searches.popleft()
        if len(self._searches) >= SEARCH_PER_SECOND:
            raise HubSpotError(
                429,
                "You have reached your secondly limit.",
                "RATE_LIMITS",
                errorType="RATE_LIMIT",
                policyName="SECONDLY",
            )
        self._searches.append(now)
        body = self._object(call)
        object_type = call.path.split("/")[4]
        records = self.contacts if object_type == "contacts" else self.deals
        limit = body.get("limit", 10)
        if not isinstance(limit, int) or not 0 < limit <= 200:
            raise HubSpotError(400, "limit must be between 1 and 200", "VALIDATION_ERROR")
        groups = body.get("filterGroups") or []
        matches = [
            record
            for record in records.values()
            if not groups
            or any(all(_matches(record, f) for f in g.get("filters", [])) for g in groups)
        ]
        for sort in reversed(body.get("sorts") or []):
            name = sort["propertyName"]
            matches.sort(
                key=lambda r: r.properties.get(name, ""),
                reverse=sort.get("direction") == "DESCENDING",
            )
        after = int(body.get("after") or 0)
        page = matches[after : after + limit]
        answer: dict[str, Any] = {
            "total": len(matches),
            "results": [record.shape(body.get("properties") or []) for record in page],
        }
        if after + limit < len(matches):
            answer["paging"] = {"next": {"after": str(after + limit)}}
        return 200, answer

    # -- properties -----------------------------------------------------------------------

    def _create_group(self, call: Call) -> tuple[int, Any]:
        body = self._object(call)
        if not body.get("name") or not body.get("label"):
            raise HubSpotError(400, "name and label are required", "VALIDATION_ERROR")
        if body["name"] in self.groups:
            raise HubSpotError(
                409,
                f"A property group named '{body['name']}' already exists.",
                "OBJECT_ALREADY_EXISTS",
            )
        self.groups.add(body["name"])
        return 201, {
            "name": body["name"],
            "label": body["label"],
            "displayOrder": body.get("displayOrder", -1),
            "archived": False,
        }

    def _create_property(self, call: Call) -> tuple[int, Any]:
        body = self._object(call)
        required = ["name", "label", "type", "fieldType", "groupName"]
        missing = [key for key in required if not body.get(key)]
        if missing:
            raise HubSpotError(400, f"Missing required fields: {missing}", "VALIDATION_ERROR")
        valid = {
            "string": {"text", "textarea", "phonenumber", "html", "file"},
            "number": {"number", "calculation_equation"},
            "datetime": {"date"},
            "date": {"date"},
            "enumeration": {"select", "radio", "checkbox", "booleancheckbox"},
            "bool": {"booleancheckbox"},
        }
        if body["fieldType"] not in valid.get(body["type"], set()):
            raise HubSpotError(
                400,
                f"fieldType {body['fieldType']} is not valid for type {body['type']}",
                "VALIDATION_ERROR",
            )
        if body["groupName"] not in self.groups:
            raise HubSpotError(
                400, f"Property group {body['groupName']} does not exist", "VALIDATION_ERROR"
            )
        if body["name"] in self.properties:
            raise HubSpotError(
                409, f"Property named '{body['name']}' already exists.", "OBJECT_ALREADY_EXISTS"
            )
        self.properties[body["name"]] = body["type"]
        self.property_definitions[body["name"]] = dict(body)
        return 201, {**body, "hidden": False, "formField": False}


def _batch_times() -> dict[str, str]:
    now = _now()
    return {"startedAt": now, "completedAt": now}


def _is_hubspot_time(value: str) -> bool:
    if value.isdigit():
        return True
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def _matches(record: Record, flt: dict[str, Any]) -> bool:
    value = record.properties.get(flt["propertyName"])
    operator = flt["operator"]
    if operator == "IN":
        return value in flt.get("values", [])
    if operator == "EQ":
        return value == flt.get("value")
    if operator == "HAS_PROPERTY":
        return bool(value)
    if operator in ("GTE", "LTE", "GT", "LT"):
        if not value:
            return False
        left = _ms(value) if not value.isdigit() else int(value)
        right = int(flt["value"])
        return {
            "GTE": left >= right,
            "LTE": left <= right,
            "GT": left > right,
            "LT": left < right,
        }[operator]
    raise HubSpotError(400, f"Unknown operator {operator}", "VALIDATION_ERROR")


@contextmanager
def running(**options: Any) -> Iterator[HubSpotStandIn]:
    """A HubSpot account on 127.0.0.1. Options: ``token``, ``client_secret``,
    ``custom_properties`` (False: the leadscore properties are not created yet), ``owners``."""
    standin = HubSpotStandIn(**options)
    with serve(standin.app) as base_url:
        standin.base_url = base_url
        yield standin
