"""HubSpot: scores into contact properties, hand-over tasks, deals and lead statuses back.

Facts this module leans on (HubSpot's public API reference; the unverified ones are listed in
docs/crm/hubspot.md): a private-app token or service key is a static bearer token (nothing to
refresh); contacts are upserted by email in batches of 100; every call over a limit is a 429
whose ``policyName`` says whether the daily quota (reset at midnight in the account's time
zone) or the per-second window was hit; webhooks arrive as a JSON array of events signed with
signature v3; a deal is won or lost when its stage's probability is 1.0 or 0.0.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
import weakref
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, ClassVar
from urllib.parse import quote
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx

from leadscore_api.crm.base import (
    OUTCOME_TYPES,
    Connector,
    ConnectorConfig,
    CrmError,
    HandoverTask,
    InboundRequest,
    LeadSnapshot,
    NotificationRejected,
    Outcome,
    OutcomeType,
    RecordRef,
    SetupReport,
    TokenCache,
    answer_error,
    seconds_until_midnight,
)
from leadscore_api.retry_after import retry_after_seconds

DEFAULT_BASE_URL = "https://api.hubapi.com"
CONTACT = "contacts"
#: HubSpot's object type ids, as ``object.*`` (generic) webhook events name the object.
CONTACT_TYPE_ID = "0-1"
DEAL_TYPE_ID = "0-3"
#: The HUBSPOT_DEFINED association type "task to contact". Widely used, but HubSpot's pages
#: tell you to read it from the associations schema: ``setup`` does, and caches what it finds.
TASK_TO_CONTACT_TYPE_ID = 204
#: Signature v3: requests older than this are replays (HubSpot's SDK uses the same window).
SIGNATURE_MAX_AGE = timedelta(minutes=5)
#: CRM Search allows 4 requests per second per token; we leave a little room.
SEARCH_INTERVAL_SECONDS = 0.26
#: The search API pages at most 10,000 results deep; past that we restart from a new cursor.
SEARCH_MAX_DEPTH = 10_000
#: HubSpot's search index lags behind writes by a few seconds: each pull re-reads this much.
PULL_OVERLAP = timedelta(minutes=5)
#: Pipeline stages change rarely; re-read them after this long (or on an unknown stage id).
STAGE_CACHE_SECONDS = 3600.0
#: Without ``Retry-After``, a per-second limit is over after at most its 10 s window.
SECONDLY_RETRY_SECONDS = 10.0

#: ``hs_lead_status`` values that are outcomes, by default (options.lead_status_outcomes).
DEFAULT_LEAD_STATUS_OUTCOMES: Mapping[str, OutcomeType] = {
    "OPEN": "lead.accepted",
    "IN_PROGRESS": "lead.accepted",
    "ATTEMPTED_TO_CONTACT": "lead.contacted",
    "CONNECTED": "lead.contacted",
}

#: Our field -> (label, HubSpot type, fieldType) for ``setup``.
_PROPERTY_DEFINITIONS: Mapping[str, tuple[str, str, str]] = {
    "letter": ("Leadscore letter", "string", "text"),
    "score": ("Leadscore score", "number", "number"),
    "tier": ("Leadscore tier", "string", "text"),
    "stage": ("Leadscore stage", "string", "text"),
    "owner": ("Leadscore owner", "string", "text"),
    "next_action": ("Leadscore next action", "string", "text"),
    "next_action_due": ("Leadscore next action due", "datetime", "date"),
    "lead_id": ("Leadscore lead id", "string", "text"),
}

#: Lead attributes written when we create a contact (never over what sales typed later).
_CREATE_ATTRIBUTES: Mapping[str, str] = {
    "first_name": "firstname",
    "last_name": "lastname",
    "company": "company",
    "phone": "phone",
}

_DEAL_PROPERTIES = [
    "dealstage",
    "pipeline",
    "createdate",
    "closedate",
    "hs_lastmodifieddate",
    "amount",
]

# Last search call per token, shared by every connector instance in the process, because
# HubSpot counts the 4 requests per second per token, not per client. Locks belong to an
# event loop, so there is one set per loop.
_last_search: dict[str, float] = {}
_search_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = (
    weakref.WeakKeyDictionary()
)


def hubspot_time(value: datetime) -> str:
    """A datetime as HubSpot writes them (ISO 8601, UTC, milliseconds); naive means UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def parse_hubspot_time(value: Any) -> datetime | None:
    """HubSpot gives times as ISO strings or epoch milliseconds (numbers or digit strings)."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float) or (isinstance(value, str) and value.isdigit()):
        return datetime.fromtimestamp(int(value) / 1000, tz=UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def _epoch_ms(value: datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return int(value.timestamp() * 1000)


def _json(response: httpx.Response) -> Any:
    """A success answer's JSON object; anything else (a proxy's HTML page) is retried."""
    try:
        body = response.json()
    except ValueError as exc:
        raise CrmError(
            f"HubSpot answered {response.status_code} without JSON", status=response.status_code
        ) from exc
    if not isinstance(body, dict):
        raise CrmError(f"HubSpot answered {response.status_code} with JSON that is no object")
    return body


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict):
        message = body.get("message")
        category = body.get("category")
        if message:
            return f"{category}: {message}" if category else str(message)
    return response.text[:300]


# Signature v3: HubSpot decodes these percent-escapes in the URI before signing it.
_URI_DECODE = {
    "%3A": ":",
    "%2F": "/",
    "%3F": "?",
    "%40": "@",
    "%21": "!",
    "%24": "$",
    "%27": "'",
    "%28": "(",
    "%29": ")",
    "%2A": "*",
    "%2C": ",",
    "%3B": ";",
}


def _signature_uri(uri: str) -> str:
    for escaped, char in _URI_DECODE.items():
        uri = uri.replace(escaped, char).replace(escaped.lower(), char)
    return uri


def signature_v3(client_secret: str, method: str, uri: str, body: bytes, timestamp: str) -> str:
    """``X-HubSpot-Signature-v3``: base64(HMAC-SHA256(secret, method + uri + body + timestamp))."""
    message = method.upper().encode() + _signature_uri(uri).encode() + body + timestamp.encode()
    digest = hmac.new(client_secret.encode(), message, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


class HubSpotConnector(Connector):
    """Contacts by email (batch upsert) or stored id (batch update); tasks; v3-signed webhooks.

    Options (``ConnectorConfig.options``): ``time_zone`` (the account's, for the daily quota
    reset; default UTC), ``lead_status_outcomes`` (hs_lead_status value -> outcome type),
    ``stage_cache_seconds``, ``task_contact_association_type_id``, ``notification_url`` (the
    public URL HubSpot calls, when a proxy changes what the service sees), ``hard_delete``
    (erase with HubSpot's GDPR delete instead of archiving).
    """

    kind = "hubspot"
    max_batch = 100
    default_field_map: ClassVar[Mapping[str, str]] = {
        "letter": "leadscore_letter",
        "score": "leadscore_score",
        "tier": "leadscore_tier",
        "stage": "leadscore_stage",
        "owner": "leadscore_owner",
        "next_action": "leadscore_next_action",
        "next_action_due": "leadscore_next_action_due",
        "lead_id": "leadscore_lead_id",
    }

    def __init__(self, config: ConnectorConfig, http: httpx.AsyncClient, tokens: TokenCache):
        super().__init__(config, http, tokens)
        zone_name = config.options.get("time_zone")
        self.time_zone: tzinfo = UTC
        #: An unknown ``options.time_zone`` (reported by ``setup``): the daily reset is then
        #: counted in UTC rather than failing every call of a running connector.
        self.time_zone_problem: str | None = None
        if zone_name:
            try:
                self.time_zone = ZoneInfo(str(zone_name))
            except (ZoneInfoNotFoundError, ValueError):
                self.time_zone_problem = (
                    f"options.time_zone {zone_name!r} is not an IANA time zone (e.g. "
                    "Europe/Rome): the daily quota's reset is counted in UTC until you fix it."
                )
        statuses = config.options.get("lead_status_outcomes")
        self.lead_status_outcomes: Mapping[str, str] = (
            dict(statuses) if isinstance(statuses, Mapping) else DEFAULT_LEAD_STATUS_OUTCOMES
        )
        self.base_url = (config.base_url or DEFAULT_BASE_URL).rstrip("/")

    def check_config(self) -> None:
        if self.time_zone_problem is not None:
            zone = self.config.options.get("time_zone")
            raise ValueError(
                f"options.time_zone: {zone!r} is not an IANA time zone (e.g. Europe/Rome)"
            )

    # -- the wire -----------------------------------------------------------------------

    def _token(self) -> str:
        token = self.config.credentials.get("token")
        if not token:
            raise CrmError("credentials.token is missing", permanent=True)
        return token

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        ok: Sequence[int] = (),
    ) -> httpx.Response:
        """One request; over-limit answers become CrmRateLimited, others CrmError.

        Statuses in ``ok`` are handed back for the caller to judge (a 404 on delete, a 409 on
        create in setup)."""
        try:
            response = await self.http.request(
                method,
                self.base_url + path,
                json=json,
                headers={"Authorization": f"Bearer {self._token()}"},
            )
        except httpx.HTTPError as exc:
            raise CrmError(f"HubSpot {method} {path}: {exc!r}") from exc
        status = response.status_code
        if status < 300 or status in ok:
            return response
        # Every over-limit answer is a 429; a 408 is HubSpot timing out and may pass.
        raise answer_error(
            f"HubSpot {method} {path} answered {status}: {_error_message(response)}",
            status,
            rate_limit_wait=self._rate_limit_wait(response) if status == 429 else None,
            retry_after=retry_after_seconds(response.headers.get("retry-after"), datetime.now(UTC)),
            transient=(408,),
        )

    def _rate_limit_wait(self, response: httpx.Response) -> float:
        now = datetime.now(UTC)
        policy = ""
        try:
            body = response.json()
            if isinstance(body, dict):
                policy = str(body.get("policyName") or "")
        except ValueError:
            pass
        if policy.upper() == "DAILY":
            return seconds_until_midnight(now, self.time_zone)
        waited = retry_after_seconds(response.headers.get("retry-after"), now)
        return SECONDLY_RETRY_SECONDS if waited is None else waited

    async def _search(self, object_type: str, body: Mapping[str, Any]) -> Mapping[str, Any]:
        """A CRM search call, paced to HubSpot's 4 requests per second per token."""
        token = hashlib.sha256(self._token().encode()).hexdigest()
        locks = _search_locks.setdefault(asyncio.get_running_loop(), {})
        lock = locks.setdefault(token, asyncio.Lock())
        async with lock:
            interval = float(
                self.config.options.get("search_interval_seconds", SEARCH_INTERVAL_SECONDS)
            )
            wait = _last_search.get(token, 0.0) + interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                response = await self._call(
                    "POST", f"/crm/v3/objects/{object_type}/search", json=body
                )
            finally:
                _last_search[token] = time.monotonic()
        result: Mapping[str, Any] = _json(response)
        return result

    # -- scores out ---------------------------------------------------------------------

    def _properties(self, lead: LeadSnapshot) -> dict[str, Any]:
        values: dict[str, Any] = {
            "letter": lead.letter,
            "score": str(lead.score),
            "tier": lead.tier,
            "stage": lead.stage,
            "owner": lead.owner,
            "next_action": lead.next_action,
            "next_action_due": hubspot_time(lead.next_action_due) if lead.next_action_due else None,
            "lead_id": lead.lead_id,
        }
        # An empty string is how HubSpot clears a property.
        properties = {
            crm_name: "" if values.get(ours) is None else values[ours]
            for ours, crm_name in self.field_map.items()
            if ours in values
        }
        owner_id = self.config.owner_map.get(lead.owner) if lead.owner else None
        if owner_id and self.config.options.get("set_record_owner", True):
            properties["hubspot_owner_id"] = owner_id
        return properties

    async def push(
        self, leads: Sequence[LeadSnapshot], known: Mapping[str, RecordRef]
    ) -> dict[str, RecordRef]:
        if len(leads) > self.max_batch:
            raise CrmError(f"at most {self.max_batch} leads per push", permanent=True)
        try:
            written, gone = await self._push(leads, known)
        except CrmError as exc:
            if exc.status != 404 or not known:
                raise
            # A stored contact was deleted or merged away in HubSpot and batch update refused
            # the whole batch for it: find which, and look those leads up by email instead.
            gone = await self._missing_contacts([ref.record_id for ref in known.values()])
            if not gone:
                raise
            still = {lead: ref for lead, ref in known.items() if ref.record_id not in gone}
            written, _gone = await self._push(leads, still)
            return written
        if gone:
            # The same, when HubSpot answers 207 with per-id errors: only those leads again.
            again = [
                lead
                for lead in leads
                if lead.lead_id in known and known[lead.lead_id].record_id in gone
            ]
            for lead in again:
                written.pop(lead.lead_id, None)
            found, _gone = await self._push(again, {})
            written.update(found)
        return written

    async def _missing_contacts(self, record_ids: list[str]) -> set[str]:
        response = await self._call(
            "POST",
            "/crm/v3/objects/contacts/batch/read",
            json={"properties": ["email"], "inputs": [{"id": rid} for rid in record_ids]},
        )
        present = {str(result["id"]) for result in _json(response).get("results", [])}
        return set(record_ids) - present

    async def _push(
        self, leads: Sequence[LeadSnapshot], known: Mapping[str, RecordRef]
    ) -> tuple[dict[str, RecordRef], set[str]]:
        """Write once: the records written, and the stored ids HubSpot said are gone."""
        written: dict[str, RecordRef] = {}
        updates: dict[str, dict[str, Any]] = {}  # record id -> properties
        by_email: dict[str, list[LeadSnapshot]] = {}
        for lead in leads:
            ref = known.get(lead.lead_id)
            if ref is not None and ref.record_id:
                updates[ref.record_id] = self._properties(lead)
                written[lead.lead_id] = RecordRef(CONTACT, ref.record_id)
            elif lead.email:
                # HubSpot keys contacts by lower-case email and refuses a batch that names one
                # twice: two leads with one email share one contact, written once (the newest).
                by_email.setdefault(lead.email.strip().lower(), []).append(lead)
        if by_email:
            newest = {
                email: max(group, key=lambda lead: lead.updated_at)
                for email, group in by_email.items()
            }
            if self.config.create_missing:
                found, created = await self._upsert(newest)
                for record_id, email in created.items():
                    names = {
                        crm: str(newest[email].attributes[ours])
                        for ours, crm in _CREATE_ATTRIBUTES.items()
                        if newest[email].attributes.get(ours)
                    }
                    if names:
                        updates[record_id] = names
            else:
                found = await self._read_by_email(list(newest))
                for email, record_id in found.items():
                    updates[record_id] = self._properties(newest[email])
            for email, record_id in found.items():
                for lead in by_email[email]:
                    written[lead.lead_id] = RecordRef(CONTACT, record_id)
        gone: set[str] = set()
        if updates:
            response = await self._call(
                "POST",
                "/crm/v3/objects/contacts/batch/update",
                json={
                    "inputs": [
                        {"id": record_id, "properties": properties}
                        for record_id, properties in updates.items()
                    ]
                },
            )
            if response.status_code == 207:
                gone = _missing_ids(_json(response)) & {r.record_id for r in known.values()}
        return written, gone

    async def _upsert(
        self, leads: Mapping[str, LeadSnapshot]
    ) -> tuple[dict[str, str], dict[str, str]]:
        """Upsert by email: (email -> contact id, created contact id -> email)."""
        inputs = []
        for email, lead in leads.items():
            properties = self._properties(lead)
            properties["email"] = email  # echoed back, so results map to leads whatever order
            inputs.append({"id": email, "idProperty": "email", "properties": properties})
        response = await self._call(
            "POST", "/crm/v3/objects/contacts/batch/upsert", json={"inputs": inputs}
        )
        found: dict[str, str] = {}
        created: dict[str, str] = {}
        for result in _json(response).get("results", []):
            email = str(result.get("properties", {}).get("email") or "").lower()
            if email in leads:
                found[email] = str(result["id"])
                if result.get("new"):
                    created[str(result["id"])] = email
        return found, created

    async def _read_by_email(self, emails: list[str]) -> dict[str, str]:
        """The contacts that exist for these emails (create_missing off: nothing is created)."""
        response = await self._call(
            "POST",
            "/crm/v3/objects/contacts/batch/read",
            json={
                "idProperty": "email",
                "properties": ["email"],
                "inputs": [{"id": email} for email in emails],
            },
        )
        found: dict[str, str] = {}
        # 207 Multi-Status lists the emails without a contact under "errors": not an error here.
        for result in _json(response).get("results", []):
            email = str(result.get("properties", {}).get("email") or "").lower()
            if email in emails:
                found[email] = str(result["id"])
        return found

    async def create_task(self, task: HandoverTask, record: RecordRef) -> str:
        properties: dict[str, Any] = {
            "hs_timestamp": hubspot_time(task.due_at),
            "hs_task_subject": task.subject,
            "hs_task_body": task.body,
            "hs_task_status": "NOT_STARTED",
            "hs_task_priority": "HIGH",
            "hs_task_type": "CALL",
        }
        owner_id = self.config.owner_map.get(task.owner) if task.owner else None
        if owner_id:
            properties["hubspot_owner_id"] = owner_id
        response = await self._call(
            "POST",
            "/crm/v3/objects/tasks",
            json={
                "properties": properties,
                "associations": [
                    {
                        "to": {"id": record.record_id},
                        "types": [
                            {
                                "associationCategory": "HUBSPOT_DEFINED",
                                "associationTypeId": self._task_association_type(),
                            }
                        ],
                    }
                ],
            },
        )
        return str(_json(response)["id"])

    def _task_association_type(self) -> int:
        configured = self.config.options.get("task_contact_association_type_id")
        if configured is not None:
            return int(configured)
        cached = self.tokens.get().get("task_contact_association_type_id")
        return int(cached) if cached is not None else TASK_TO_CONTACT_TYPE_ID

    async def erase(self, record: RecordRef) -> None:
        if self.config.options.get("hard_delete"):
            # GDPR delete: permanent, no 90-day recycle bin; unknown ids answer 404 too.
            await self._call(
                "POST",
                "/crm/v3/objects/contacts/gdpr-delete",
                json={"objectId": record.record_id},
                ok=(404,),
            )
            return
        await self._call(
            "DELETE", f"/crm/v3/objects/contacts/{quote(record.record_id, safe='')}", ok=(404,)
        )

    async def merge(self, survivor: RecordRef, merged: RecordRef) -> RecordRef:
        if survivor.record_id == merged.record_id:
            return survivor
        response = await self._call(
            "POST",
            "/crm/v3/objects/contacts/merge",
            json={"primaryObjectId": survivor.record_id, "objectIdToMerge": merged.record_id},
        )
        # HubSpot answers with the merged record; trust its id over the one we sent.
        record_id = str(_json(response).get("id") or survivor.record_id)
        return RecordRef(CONTACT, record_id)

    # -- outcomes in --------------------------------------------------------------------

    def verify_notification(self, request: InboundRequest, now: datetime) -> None:
        secret = self.config.credentials.get("client_secret")
        if not secret:
            raise NotificationRejected("credentials.client_secret is not configured")
        signature = request.headers.get("x-hubspot-signature-v3")
        timestamp = request.headers.get("x-hubspot-request-timestamp")
        if not signature or not timestamp:
            raise NotificationRejected("X-HubSpot-Signature-v3 or its timestamp is missing")
        if not timestamp.isdigit():
            raise NotificationRejected("X-HubSpot-Request-Timestamp is not in milliseconds")
        sent = datetime.fromtimestamp(int(timestamp) / 1000, tz=UTC)
        if now.tzinfo is None:
            now = now.replace(tzinfo=UTC)
        if abs(now - sent) > SIGNATURE_MAX_AGE:
            raise NotificationRejected("X-HubSpot-Request-Timestamp is more than 5 minutes off")
        url = str(self.config.options.get("notification_url") or request.url)
        expected = signature_v3(secret, request.method, url, request.body, timestamp)
        if not hmac.compare_digest(expected.encode(), signature.encode()):
            raise NotificationRejected("X-HubSpot-Signature-v3 does not match")

    async def parse_notification(self, request: InboundRequest) -> list[Outcome]:
        try:
            events = json.loads(request.body)
        except ValueError as exc:
            raise CrmError("HubSpot notification is not JSON", permanent=True) from exc
        if isinstance(events, dict):
            events = [events]
        if not isinstance(events, list):
            raise CrmError("HubSpot notification is not an array of events", permanent=True)
        outcomes: list[Outcome] = []
        for event in events:
            if isinstance(event, dict):
                outcome = await self._event_outcome(event)
                if outcome is not None:
                    outcomes.append(outcome)
        return outcomes

    async def _event_outcome(self, event: Mapping[str, Any]) -> Outcome | None:
        kind = str(event.get("subscriptionType") or "")
        object_type = kind.split(".", 1)[0]
        if object_type == "object":
            object_type = {CONTACT_TYPE_ID: "contact", DEAL_TYPE_ID: "deal"}.get(
                str(event.get("objectTypeId") or ""), "other"
            )
        change = kind.split(".", 1)[-1]
        object_id = str(event.get("objectId") or "")
        occurred_at = parse_hubspot_time(event.get("occurredAt")) or datetime.now(UTC)
        if not object_id:
            return None
        source = {
            "hubspot_subscription_type": kind,
            "hubspot_event_id": event.get("eventId"),
            "hubspot_portal_id": event.get("portalId"),
        }
        prop = event.get("propertyName")
        value = event.get("propertyValue")
        if object_type == "deal" and change == "creation":
            return await self._deal_outcome(object_id, "opportunity.created", occurred_at, source)
        if object_type == "deal" and change == "propertyChange" and prop == "dealstage":
            outcome_type = await self._stage_outcome(str(value or ""))
            if outcome_type is None:
                return None
            return await self._deal_outcome(
                object_id, outcome_type, occurred_at, {**source, "stage": value}
            )
        if object_type == "contact" and change == "propertyChange" and prop == "hs_lead_status":
            lead_outcome = self._lead_status_outcome(value)
            if lead_outcome is None:
                return None
            return Outcome(
                type=lead_outcome,
                occurred_at=occurred_at,
                dedup_key=f"contact:{object_id}:{lead_outcome}",
                record=RecordRef(CONTACT, object_id),
                properties={**source, "hs_lead_status": value},
            )
        return None

    def _lead_status_outcome(self, value: Any) -> OutcomeType | None:
        outcome = self.lead_status_outcomes.get(str(value or ""))
        return outcome if outcome in OUTCOME_TYPES else None

    async def _deal_outcome(
        self,
        deal_id: str,
        outcome_type: OutcomeType,
        occurred_at: datetime,
        properties: Mapping[str, Any],
    ) -> Outcome | None:
        contact_id = await self._deal_contact(deal_id)
        if contact_id is None:
            # A deal without a contact concerns no lead (yet): a later pull picks it up
            # once sales associates one, under the same dedup key.
            return None
        return Outcome(
            type=outcome_type,
            occurred_at=occurred_at,
            dedup_key=f"deal:{deal_id}:{outcome_type}",
            record=RecordRef(CONTACT, contact_id),
            properties={**properties, "deal_id": deal_id},
        )

    async def _deal_contact(self, deal_id: str) -> str | None:
        response = await self._call(
            "GET", f"/crm/v4/objects/deals/{quote(deal_id, safe='')}/associations/contacts"
        )
        results = _json(response).get("results") or []
        return str(results[0]["toObjectId"]) if results else None

    async def _stages(self, *, refresh: bool = False) -> Mapping[str, Mapping[str, Any]]:
        """Deal stage id -> its probability and closed flag, cached in the token cache so every
        replica reads the pipelines once per TTL."""
        ttl = float(self.config.options.get("stage_cache_seconds", STAGE_CACHE_SECONDS))
        cached = self.tokens.get()
        stages = cached.get("deal_stages")
        fetched_at = cached.get("deal_stages_fetched_at")
        if (
            not refresh
            and isinstance(stages, Mapping)
            and isinstance(fetched_at, int | float)
            and time.time() - fetched_at < ttl
        ):
            return stages
        response = await self._call("GET", "/crm/v3/pipelines/deals")
        fresh: dict[str, dict[str, Any]] = {}
        for pipeline in _json(response).get("results", []):
            for stage in pipeline.get("stages", []):
                metadata = stage.get("metadata") or {}
                fresh[str(stage["id"])] = {
                    "pipeline": str(pipeline.get("id")),
                    "probability": metadata.get("probability"),
                    "is_closed": metadata.get("isClosed"),
                }
        self.tokens.put({"deal_stages": fresh, "deal_stages_fetched_at": time.time()})
        return fresh

    async def _stage_outcome(self, stage_id: str) -> OutcomeType | None:
        stages = await self._stages()
        if stage_id not in stages:
            stages = await self._stages(refresh=True)  # a stage added since we cached
        stage = stages.get(stage_id)
        if stage is None:
            return None
        return _won_or_lost(stage)

    async def pull_changes(self, since: datetime) -> tuple[list[Outcome], datetime]:
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        started = datetime.now(UTC)
        outcomes: list[Outcome] = []
        deal_outcomes, deals_reached = await self._pull_deals(since)
        outcomes.extend(deal_outcomes)
        contact_outcomes, contacts_reached = await self._pull_contacts(since)
        outcomes.extend(contact_outcomes)
        overlap = timedelta(
            seconds=float(self.config.options.get("pull_overlap_seconds", PULL_OVERLAP.seconds))
        )
        cursor = started - overlap
        for reached in (deals_reached, contacts_reached):
            if reached is not None:  # a search stopped at HubSpot's depth limit
                cursor = min(cursor, reached)
        return outcomes, max(since, cursor)

    async def _search_all(
        self, object_type: str, body: Mapping[str, Any], modified: str
    ) -> tuple[list[Mapping[str, Any]], datetime | None]:
        """Every page of a search sorted by ``modified``; the time reached if cut at 10,000."""
        results: list[Mapping[str, Any]] = []
        after: str | None = None
        while True:
            page = await self._search(object_type, {**body, **({"after": after} if after else {})})
            results.extend(page.get("results", []))
            after = ((page.get("paging") or {}).get("next") or {}).get("after")
            if not after:
                return results, None
            if after.isdigit() and int(after) >= SEARCH_MAX_DEPTH:
                last = parse_hubspot_time(results[-1].get("properties", {}).get(modified))
                return results, last

    async def _pull_deals(self, since: datetime) -> tuple[list[Outcome], datetime | None]:
        deals, reached = await self._search_all(
            "deals",
            {
                "filterGroups": [
                    {
                        "filters": [
                            {
                                "propertyName": "hs_lastmodifieddate",
                                "operator": "GTE",
                                "value": str(_epoch_ms(since)),
                            }
                        ]
                    }
                ],
                "sorts": [{"propertyName": "hs_lastmodifieddate", "direction": "ASCENDING"}],
                "properties": _DEAL_PROPERTIES,
                "limit": 100,
            },
            "hs_lastmodifieddate",
        )
        found: list[tuple[str, OutcomeType, datetime, dict[str, Any]]] = []
        stages = await self._stages() if deals else {}
        for deal in deals:
            deal_id = str(deal["id"])
            props = deal.get("properties") or {}
            created = parse_hubspot_time(props.get("createdate"))
            modified = parse_hubspot_time(props.get("hs_lastmodifieddate")) or since
            extra = {"deal_id": deal_id, "pipeline": props.get("pipeline")}
            if props.get("amount"):
                extra["amount"] = props.get("amount")
            if created is not None and created >= since:
                found.append((deal_id, "opportunity.created", created, extra))
            stage_id = str(props.get("dealstage") or "")
            if stage_id and stage_id not in stages:
                stages = await self._stages(refresh=True)
            stage = stages.get(stage_id)
            outcome_type = _won_or_lost(stage) if stage else None
            if outcome_type is not None:
                # HubSpot sets the close date when a deal enters a closed stage; the last
                # modification is only the fallback (a later edit would move it).
                closed = parse_hubspot_time(props.get("closedate")) or modified
                found.append((deal_id, outcome_type, closed, {**extra, "stage": stage_id}))
        if not found:
            return [], reached
        contacts = await self._deal_contacts({deal_id for deal_id, *_ in found})
        return [
            Outcome(
                type=outcome_type,
                occurred_at=when,
                dedup_key=f"deal:{deal_id}:{outcome_type}",
                record=RecordRef(CONTACT, contacts[deal_id]),
                properties=extra,
            )
            for deal_id, outcome_type, when, extra in found
            if deal_id in contacts
        ], reached

    async def _deal_contacts(self, deal_ids: set[str]) -> dict[str, str]:
        """Each deal's first associated contact, read in batches (one call per 100 deals)."""
        contacts: dict[str, str] = {}
        ordered = sorted(deal_ids)
        for start in range(0, len(ordered), 100):
            response = await self._call(
                "POST",
                "/crm/v4/associations/deals/contacts/batch/read",
                json={"inputs": [{"id": deal_id} for deal_id in ordered[start : start + 100]]},
            )
            for result in _json(response).get("results", []):
                to = result.get("to") or []
                if to:
                    contacts[str(result["from"]["id"])] = str(to[0]["toObjectId"])
        return contacts

    async def _pull_contacts(self, since: datetime) -> tuple[list[Outcome], datetime | None]:
        statuses = sorted(self.lead_status_outcomes)
        if not statuses:
            return [], None
        contacts, reached = await self._search_all(
            "contacts",
            {
                "filterGroups": [
                    {
                        "filters": [
                            {
                                "propertyName": "lastmodifieddate",
                                "operator": "GTE",
                                "value": str(_epoch_ms(since)),
                            },
                            {
                                "propertyName": "hs_lead_status",
                                "operator": "IN",
                                "values": statuses,
                            },
                        ]
                    }
                ],
                "sorts": [{"propertyName": "lastmodifieddate", "direction": "ASCENDING"}],
                "properties": ["email", "hs_lead_status", "lastmodifieddate"],
                "limit": 100,
            },
            "lastmodifieddate",
        )
        outcomes = []
        for contact in contacts:
            props = contact.get("properties") or {}
            outcome_type = self._lead_status_outcome(props.get("hs_lead_status"))
            if outcome_type is None:
                continue
            contact_id = str(contact["id"])
            outcomes.append(
                Outcome(
                    type=outcome_type,
                    # Search gives no time of the status change; the record's last change is
                    # the closest it says (dedup keeps the first sighting, see the docs).
                    occurred_at=parse_hubspot_time(props.get("lastmodifieddate")) or since,
                    dedup_key=f"contact:{contact_id}:{outcome_type}",
                    record=RecordRef(CONTACT, contact_id),
                    email=props.get("email") or None,
                    properties={"hs_lead_status": props.get("hs_lead_status")},
                )
            )
        return outcomes, reached

    # -- setup --------------------------------------------------------------------------

    async def setup(self) -> SetupReport:
        report = SetupReport()
        group = "leadscore"
        response = await self._call(
            "POST",
            "/crm/v3/properties/contacts/groups",
            json={"name": group, "label": "Leadscore", "displayOrder": -1},
            ok=(409,),
        )
        (report.existing if response.status_code == 409 else report.created).append(
            f"property group {group}"
        )
        for ours, crm_name in self.field_map.items():
            label, type_, field_type = _PROPERTY_DEFINITIONS.get(
                ours, (f"Leadscore {ours}", "string", "text")
            )
            response = await self._call(
                "POST",
                "/crm/v3/properties/contacts",
                json={
                    "name": crm_name,
                    "label": label,
                    "type": type_,
                    "fieldType": field_type,
                    "groupName": group,
                    "description": f"Written by leadscore ({ours}); edits are overwritten.",
                },
                ok=(409,),
            )
            (report.existing if response.status_code == 409 else report.created).append(crm_name)
        response = await self._call("GET", "/crm/v4/associations/tasks/contacts/labels")
        for label in _json(response).get("results", []):
            if label.get("category") == "HUBSPOT_DEFINED" and not label.get("label"):
                self.tokens.put({"task_contact_association_type_id": int(label["typeId"])})
                break
        report.manual_steps.extend(self._manual_steps())
        return report

    def _manual_steps(self) -> list[str]:
        steps = [self.time_zone_problem] if self.time_zone_problem else []
        if not self.config.credentials.get("client_secret"):
            steps.append(
                "Add the app's client secret as credentials.client_secret (Settings > "
                "Integrations > Private Apps > your app > Auth > Client secret): without it "
                "notifications are refused."
            )
        steps.append(
            "Subscribe the private app to changes (the API cannot do it for private apps): "
            "Settings > Integrations > Private Apps > your app > Edit app > Webhooks. Target "
            f"URL: https://<your-host>/v1/crm/{self.config.name}/notifications. Create "
            "subscriptions: Deal - Created; Deal - Property changed - dealstage; Contact - "
            "Property changed - hs_lead_status. Commit changes."
        )
        return steps


def _missing_ids(body: Any) -> set[str]:
    """The ids a 207 Multi-Status answer reports as not found."""
    ids: set[str] = set()
    for error in (body.get("errors") if isinstance(body, dict) else None) or []:
        if isinstance(error, dict) and error.get("category") == "OBJECT_NOT_FOUND":
            ids.update(str(i) for i in (error.get("context") or {}).get("ids", []))
    return ids


def _won_or_lost(stage: Mapping[str, Any]) -> OutcomeType | None:
    try:
        probability = float(stage.get("probability"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    closed = str(stage.get("is_closed", "true")).lower() != "false"
    if probability >= 1.0:
        return "deal.won"
    if probability <= 0.0 and closed:
        return "deal.lost"
    return None
