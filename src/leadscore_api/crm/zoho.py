"""Zoho CRM (API v8): scores into Leads or Contacts, hand-over tasks, deals and first contacts back.

Zoho issues OAuth refresh tokens (a Self Client in the API console is enough for one org). An
access token lives one hour, and one refresh token may mint only 10 access tokens per 10 minutes
before Zoho blocks it for the rest of the window: so the access token, its expiry and the
account's ``api_domain`` live in the shared ``TokenCache`` and every replica reuses them, and the
connector counts its own refreshes and stops before Zoho would block it.

Notifications come from Zoho's watch API. They carry no signature: authenticity rests on the
``token`` we chose when enabling the channel (and the channel id), so both are compared here.
Channels expire (at most a week ahead), silently, so ``pull_changes`` renews ours when it is
within a day of expiry. docs/crm/zoho.md has the details and what is not verified.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import httpx

from leadscore_api.crm.base import (
    Connector,
    CrmError,
    CrmRateLimited,
    HandoverTask,
    InboundRequest,
    LeadSnapshot,
    NotificationRejected,
    Outcome,
    OutcomeType,
    RecordRef,
    SetupReport,
    answer_error,
)

API = "/crm/v8"
#: Zoho's limit: one refresh token mints at most this many access tokens per window.
REFRESHES_PER_WINDOW = 10
REFRESH_WINDOW_SECONDS = 600.0
#: Refresh this long before the access token's expiry, so a call never starts with a dying token.
EXPIRY_MARGIN_SECONDS = 60.0
#: ``TOO_MANY_REQUESTS`` is the per-org concurrency limit: it frees as soon as calls finish.
CONCURRENCY_RETRY_SECONDS = 5.0
#: Exhausted API credits free up as the rolling 24 h window moves; Zoho does not say when (not
#: verified), so we look again hourly unless the answer carries a Retry-After.
CREDITS_RETRY_SECONDS = 3600.0
#: Channel expiry: Zoho allows at most one week ahead (v4+); renewed when a day is left.
CHANNEL_LIFETIME = timedelta(days=7) - timedelta(minutes=5)
CHANNEL_RENEW_BEFORE = timedelta(days=1)
#: The Deals Stage metadata (won / lost categories) changes rarely: read it at most hourly.
STAGES_TTL_SECONDS = 3600.0
#: Zoho's placeholder-free way does not exist: a Lead or Contact needs Last_Name to be created.
LAST_NAME_PLACEHOLDER = "(unknown)"

DEAL_FIELDS = "Deal_Name,Stage,Amount,Contact_Name,Closing_Date,Created_Time,Modified_Time"
DEFAULT_STATUS_MAP: Mapping[str, OutcomeType] = {
    "Contacted": "lead.contacted",
    "Contact in Future": "lead.contacted",
    "Pre-Qualified": "lead.accepted",
}

#: Our field -> (Zoho field label, data_type, length) for ``setup``; Zoho derives the API name
#: from the label (spaces become underscores), so the label is the API name with spaces.
FIELD_TYPES: Mapping[str, tuple[str, int | None]] = {
    "letter": ("text", 5),
    "score": ("integer", 9),
    "tier": ("text", 50),
    "stage": ("text", 50),
    "owner": ("text", 100),
    "next_action": ("text", 255),
    "next_action_due": ("datetime", None),
    "lead_id": ("text", 64),
}


def zoho_datetime(value: datetime) -> str:
    """Zoho's datetime format: ISO 8601 with an offset and no fractions (it rejects others)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).replace(microsecond=0).isoformat()


def parse_zoho_datetime(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _error_code(body: Any) -> str:
    if isinstance(body, dict):
        code = body.get("code")
        if isinstance(code, str):
            return code
        data = body.get("data")
        if isinstance(data, list) and data and isinstance(data[0], dict):
            return str(data[0].get("code", ""))
    return ""


class ZohoConnector(Connector):
    kind = "zoho"
    max_batch = 100
    default_field_map: ClassVar[Mapping[str, str]] = {
        "letter": "Leadscore_Letter",
        "score": "Leadscore_Score",
        "tier": "Leadscore_Tier",
        "stage": "Leadscore_Stage",
        "owner": "Leadscore_Owner",
        "next_action": "Leadscore_Next_Action",
        "next_action_due": "Leadscore_Next_Action_Due",
        "lead_id": "Leadscore_Lead_Id",
    }

    _refresh_lock: asyncio.Lock | None = None

    # ----------------------------------------------------------------- options and credentials

    @property
    def module(self) -> str:
        module = str(self.config.options.get("module", "Leads"))
        if module not in ("Leads", "Contacts"):
            raise CrmError(
                f"options.module must be Leads or Contacts, not {module!r}", permanent=True
            )
        return module

    def _credential(self, key: str) -> str:
        value = self.config.credentials.get(key)
        if not value:
            raise CrmError(f"credentials.{key} is missing", permanent=True)
        return value

    @property
    def channel_id(self) -> str:
        """Our watch channel's id: options.channel_id, else a number derived from the name, so
        that every replica (and ``verify_notification``) knows it without asking Zoho."""
        configured = self.config.options.get("channel_id")
        if configured:
            return str(configured)
        digest = int(hashlib.sha256(self.config.name.encode()).hexdigest()[:15], 16)
        return str(1_000_000_000_000 + digest % 9_000_000_000_000)

    @property
    def status_map(self) -> Mapping[str, OutcomeType]:
        configured = self.config.options.get("status_map")
        return configured if isinstance(configured, Mapping) else DEFAULT_STATUS_MAP

    # ------------------------------------------------------------------------- tokens and calls

    async def _access(self) -> tuple[str, str]:
        """A valid access token and the api_domain, refreshed only when the cached one expired."""
        cached = self.tokens.get()
        token, domain = cached.get("access_token"), cached.get("api_domain")
        expires_at = float(cached.get("expires_at") or 0)
        if token and domain and expires_at - EXPIRY_MARGIN_SECONDS > time.time():
            return str(token), str(domain)
        return await self._refresh(stale=str(token) if token else None)

    async def _refresh(self, stale: str | None) -> tuple[str, str]:
        if self._refresh_lock is None:
            self._refresh_lock = asyncio.Lock()
        async with self._refresh_lock:
            cached = self.tokens.get()
            # Another call in this process refreshed while we waited: use its token.
            fresh = float(cached.get("expires_at") or 0) - EXPIRY_MARGIN_SECONDS > time.time()
            if cached.get("access_token") and cached.get("access_token") != stale and fresh:
                return str(cached["access_token"]), str(cached["api_domain"])
            now = time.time()
            recent = [
                float(t)
                for t in cached.get("refreshes", [])
                if now - float(t) < REFRESH_WINDOW_SECONDS
            ]
            if len(recent) >= REFRESHES_PER_WINDOW:
                raise CrmRateLimited(
                    "Zoho allows 10 token refreshes per 10 minutes; waiting for the window",
                    retry_after=max(1.0, min(recent) + REFRESH_WINDOW_SECONDS - now),
                )
            url = self.config.base_url.rstrip("/") + "/oauth/v2/token"
            form = {
                "client_id": self._credential("client_id"),
                "client_secret": self._credential("client_secret"),
                "grant_type": "refresh_token",
                "refresh_token": self._credential("refresh_token"),
            }
            try:
                response = await self.http.post(url, data=form)
            except httpx.TransportError as exc:
                raise CrmError(f"Zoho accounts server unreachable: {exc!r}") from exc
            self.tokens.put({"refreshes": [*recent, now]})
            body = self._json(response)
            error = body.get("error") if isinstance(body, dict) else None
            if response.status_code >= 500:
                raise CrmError(
                    f"Zoho token refresh answered {response.status_code}",
                    status=response.status_code,
                )
            if error == "Access Denied" or "too many requests" in str(body).lower():
                # Zoho blocks the refresh token for the rest of its 10-minute window.
                raise CrmRateLimited(
                    "Zoho blocked token refreshes (too many in 10 minutes)",
                    status=response.status_code,
                    retry_after=REFRESH_WINDOW_SECONDS,
                )
            if error or not isinstance(body, dict) or "access_token" not in body:
                # invalid_code (revoked / wrong refresh token), invalid_client: retrying won't help.
                raise CrmError(
                    f"Zoho token refresh failed: {error or response.status_code}",
                    status=response.status_code,
                    permanent=True,
                )
            token = str(body["access_token"])
            domain = str(body.get("api_domain") or self.config.base_url).rstrip("/")
            expires_in = float(body.get("expires_in", 3600))
            self.tokens.put(
                {"access_token": token, "api_domain": domain, "expires_at": now + expires_in}
            )
            return token, domain

    @staticmethod
    def _json(response: httpx.Response) -> Any:
        if response.status_code in (204, 304) or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            return None

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        headers: Mapping[str, str] | None = None,
        per_record: bool = False,
    ) -> tuple[int, Any]:
        """One API call with the cached token; a 401 INVALID_TOKEN refreshes once and repeats.
        Returns (status, parsed body) for 2xx/304, and with ``per_record`` also for a 400 that
        carries one answer per record (Zoho's answer when every record of a batch failed);
        raises CrmError otherwise."""
        token, domain = await self._access()
        for attempt in range(2):
            try:
                response = await self.http.request(
                    method,
                    domain + API + path,
                    params=params,
                    json=body,
                    headers={"Authorization": f"Zoho-oauthtoken {token}", **(headers or {})},
                )
            except httpx.TransportError as exc:
                raise CrmError(f"Zoho unreachable: {exc!r}") from exc
            parsed = self._json(response)
            code = _error_code(parsed)
            if response.status_code == 401 and code == "INVALID_TOKEN" and attempt == 0:
                token, domain = await self._refresh(stale=token)
                continue
            if not (
                per_record
                and response.status_code == 400
                and isinstance(parsed, dict)
                and isinstance(parsed.get("data"), list)
            ):
                self._raise_for(response, parsed, code, f"{method} {path}")
            return response.status_code, parsed
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _raise_for(response: httpx.Response, body: Any, code: str, what: str) -> None:
        status = response.status_code
        if status < 300 or status == 304:
            return
        message = body.get("message", "") if isinstance(body, dict) else ""
        detail = f"Zoho {what} answered {status} {code} {message}".strip()
        wait: float | None = None
        if status == 429 or code == "TOO_MANY_REQUESTS":
            header = response.headers.get("retry-after")
            if header is not None and header.strip().isdigit():
                wait = float(header)
            elif code == "TOO_MANY_REQUESTS":
                wait = CONCURRENCY_RETRY_SECONDS
            else:
                wait = CREDITS_RETRY_SECONDS
        raise answer_error(detail, status, rate_limit_wait=wait)

    # ------------------------------------------------------------------------------- scores out

    def _fields(self, lead: LeadSnapshot) -> dict[str, Any]:
        values: dict[str, Any] = {
            "letter": lead.letter,
            "score": lead.score,
            "tier": lead.tier,
            "stage": lead.stage,
            "owner": lead.owner,
            "next_action": lead.next_action,
            "next_action_due": zoho_datetime(lead.next_action_due)
            if lead.next_action_due
            else None,
            "lead_id": lead.lead_id,
        }
        record = {self.field_map[ours]: values[ours] for ours in values if ours in self.field_map}
        owner_id = self.config.owner_map.get(lead.owner) if lead.owner else None
        if owner_id:
            record["Owner"] = {"id": owner_id}
        return record

    def _creation_fields(self, lead: LeadSnapshot) -> dict[str, Any]:
        """What only a new record gets: the person's name and company. Last_Name is mandatory in
        Zoho, so a lead without one gets a placeholder (the sales team fills it in)."""
        attributes = lead.attributes
        record: dict[str, Any] = {
            "Last_Name": attributes.get("last_name") or LAST_NAME_PLACEHOLDER,
        }
        for ours, theirs in (("first_name", "First_Name"), ("phone", "Phone")):
            if attributes.get(ours):
                record[theirs] = attributes[ours]
        if attributes.get("company") and self.module == "Leads":
            record["Company"] = attributes["company"]
        return record

    async def push(
        self, leads: Sequence[LeadSnapshot], known: Mapping[str, RecordRef]
    ) -> dict[str, RecordRef]:
        if len(leads) > self.max_batch:
            raise CrmError(f"at most {self.max_batch} leads per push", permanent=True)
        module = self.module
        written: dict[str, RecordRef] = {}
        new = [lead for lead in leads if lead.lead_id not in known and lead.email]
        gone: list[LeadSnapshot] = []

        # 1. Records we stored: update by id, no search (one call per module they are in).
        for object_type in sorted(
            {known[lead.lead_id].object_type for lead in leads if lead.lead_id in known}
        ):
            by_id = [
                lead
                for lead in leads
                if lead.lead_id in known and known[lead.lead_id].object_type == object_type
            ]
            data = [{"id": known[lead.lead_id].record_id, **self._fields(lead)} for lead in by_id]
            results = await self._write("PUT", f"/{object_type}", data)
            for lead, result in zip(by_id, results, strict=True):
                if result.get("status") == "success":
                    written[lead.lead_id] = known[lead.lead_id]
                elif self._is_bad_id(result):
                    # Deleted (or converted) in Zoho meanwhile: someone there removed it, so it
                    # is not created again; a record with the same email is updated, if any.
                    if lead.email:
                        gone.append(lead)
                else:
                    raise self._record_error(result, lead)

        # 2. The others, by email: upserted, or only updated when found.
        if new and self.config.create_missing:
            await self._upsert(module, new, written)
        elif new:
            gone = new + gone
        if gone:
            await self._update_found(module, gone, written)
        return written

    async def _upsert(
        self, module: str, leads: list[LeadSnapshot], written: dict[str, RecordRef]
    ) -> None:
        """Upsert by Email. Our fields only: an existing record keeps its name. A record Zoho
        would have to create fails with MANDATORY_NOT_FOUND (Last_Name); those are created in
        one more call with the person's name (or a placeholder)."""
        data = [{"Email": lead.email, **self._fields(lead)} for lead in leads]
        results = await self._write(
            "POST", f"/{module}/upsert", data, extra={"duplicate_check_fields": ["Email"]}
        )
        missing: list[LeadSnapshot] = []
        for lead, result in zip(leads, results, strict=True):
            if result.get("status") == "success":
                written[lead.lead_id] = RecordRef(module, str(result["details"]["id"]))
            elif result.get("code") == "MANDATORY_NOT_FOUND":
                missing.append(lead)
            else:
                raise self._record_error(result, lead)
        if not missing:
            return
        data = [
            {"Email": lead.email, **self._creation_fields(lead), **self._fields(lead)}
            for lead in missing
        ]
        results = await self._write("POST", f"/{module}", data)
        for lead, result in zip(missing, results, strict=True):
            if result.get("status") != "success":
                raise self._record_error(result, lead)
            written[lead.lead_id] = RecordRef(module, str(result["details"]["id"]))

    async def _update_found(
        self, module: str, leads: list[LeadSnapshot], written: dict[str, RecordRef]
    ) -> None:
        """create_missing off: find each by email (search, 204 = none) and update those found."""
        found: list[tuple[LeadSnapshot, str]] = []
        for lead in leads:
            assert lead.email is not None
            status, body = await self._call(
                "GET", f"/{module}/search", params={"email": lead.email}
            )
            if status == 200 and isinstance(body, dict) and body.get("data"):
                found.append((lead, str(body["data"][0]["id"])))
        if not found:
            return
        data = [{"id": record_id, **self._fields(lead)} for lead, record_id in found]
        results = await self._write("PUT", f"/{module}", data)
        for (lead, record_id), result in zip(found, results, strict=True):
            if result.get("status") != "success":
                raise self._record_error(result, lead)
            written[lead.lead_id] = RecordRef(module, record_id)

    async def _write(
        self,
        method: str,
        path: str,
        data: list[dict[str, Any]],
        extra: Mapping[str, Any] | None = None,
    ) -> list[dict[str, Any]]:
        """A batch write; Zoho answers per record (200/201/202/207 or 400 when all failed)."""
        _, body = await self._call(
            method, path, body={"data": data, **(extra or {})}, per_record=True
        )
        results = body.get("data") if isinstance(body, dict) else None
        if not isinstance(results, list) or len(results) != len(data):
            raise CrmError(f"Zoho {method} {path}: unexpected answer {body!r}"[:300])
        return results

    @staticmethod
    def _is_bad_id(result: Mapping[str, Any]) -> bool:
        details = result.get("details") or {}
        return result.get("code") == "INVALID_DATA" and details.get("api_name") == "id"

    @staticmethod
    def _record_error(result: Mapping[str, Any], lead: LeadSnapshot) -> CrmError:
        """A record Zoho refused (invalid data, a field that does not exist, a missing
        mandatory field): the same data would fail again, so the message is dead-lettered
        with Zoho's reason."""
        details = result.get("details") or {}
        return CrmError(
            f"Zoho refused lead {lead.lead_id}: {result.get('code')} {result.get('message')}"
            f" (field {details.get('api_name')})",
            permanent=True,
        )

    async def create_task(self, task: HandoverTask, record: RecordRef) -> str:
        due = task.due_at if task.due_at.tzinfo else task.due_at.replace(tzinfo=UTC)
        description = task.body
        # Zoho tasks have a due date only; the hour goes into the description.
        description += f"\nDue: {zoho_datetime(due)}"
        data: dict[str, Any] = {
            "Subject": task.subject,
            "Due_Date": due.astimezone(UTC).date().isoformat(),
            "Status": "Not Started",
            "Priority": "High",
            "Description": description,
        }
        if record.object_type == "Contacts":
            data["Who_Id"] = {"id": record.record_id}
        else:
            data["What_Id"] = {"id": record.record_id}
            data["$se_module"] = record.object_type
        owner_id = self.config.owner_map.get(task.owner) if task.owner else None
        if owner_id:
            data["Owner"] = {"id": owner_id}
        results = await self._write("POST", "/Tasks", [data])
        result = results[0]
        if result.get("status") != "success":
            raise CrmError(
                f"Zoho refused the task: {result.get('code')} {result.get('message')}",
                permanent=True,
            )
        return str(result["details"]["id"])

    async def erase(self, record: RecordRef) -> None:
        _, body = await self._call(
            "DELETE", f"/{record.object_type}", params={"ids": record.record_id}, per_record=True
        )
        results = body.get("data") if isinstance(body, dict) else None
        for result in results or []:
            # INVALID_DATA: the id is unknown, the record is already gone.
            if result.get("status") != "success" and result.get("code") != "INVALID_DATA":
                raise CrmError(f"Zoho did not delete {record.record_id}: {result}", permanent=True)

    async def merge(self, survivor: RecordRef, merged: RecordRef) -> RecordRef:
        """Zoho's own merge is not used (its answer shape is not verified here): our fields are
        cleared on the merged record so that only the survivor shows a score; the sales team
        merges the two records with Zoho's deduplication if they want one."""
        cleared: dict[str, Any] = {"id": merged.record_id}
        cleared.update(dict.fromkeys(self.field_map.values()))
        results = await self._write("PUT", f"/{merged.object_type}", [cleared])
        result = results[0]
        if result.get("status") != "success" and not self._is_bad_id(result):
            raise CrmError(f"Zoho refused clearing {merged.record_id}: {result}", permanent=True)
        return survivor

    # ----------------------------------------------------------------------------- outcomes in

    def verify_notification(self, request: InboundRequest, now: datetime) -> None:
        expected = self.config.credentials.get("notification_token") or ""
        try:
            body = json.loads(request.body)
        except ValueError as exc:
            raise NotificationRejected("not a Zoho notification (invalid JSON)") from exc
        if not isinstance(body, dict):
            raise NotificationRejected("not a Zoho notification")
        token = body.get("token")
        if not expected or not isinstance(token, str):
            raise NotificationRejected("Zoho notification without a token")
        if not hmac.compare_digest(token.encode(), expected.encode()):
            raise NotificationRejected("Zoho notification token does not match")
        if str(body.get("channel_id")) != self.channel_id:
            raise NotificationRejected("Zoho notification for another channel")

    async def parse_notification(self, request: InboundRequest) -> list[Outcome]:
        body = json.loads(request.body)
        module = body.get("module")
        operation = body.get("operation")
        ids = [str(i) for i in body.get("ids") or []]
        if not ids or operation not in ("insert", "update"):
            return []
        if module == "Deals":
            deals = await self._get_records("Deals", ids, DEAL_FIELDS)
            return await self._deal_outcomes(deals, created=operation == "insert")
        if module == "Leads" and self.module == "Leads":
            leads = await self._get_records("Leads", ids, "Email,Lead_Status,Modified_Time")
            return self._lead_outcomes(leads)
        return []

    async def _get_records(
        self, module: str, ids: Sequence[str], fields: str
    ) -> list[dict[str, Any]]:
        records: list[dict[str, Any]] = []
        for start in range(0, len(ids), 100):
            chunk = ",".join(ids[start : start + 100])
            status, body = await self._call(
                "GET", f"/{module}", params={"ids": chunk, "fields": fields}
            )
            if status == 200 and isinstance(body, dict):
                records.extend(body.get("data") or [])
        return records

    async def _stage_categories(self) -> dict[str, str]:
        """Stage -> Deal Category ("Open" / "Closed Won" / "Closed Lost"), from the Stage
        picklist's ``forecast_type`` in the Deals field metadata: won and lost follow the
        category, not the stage's name. Cached hourly in the TokenCache."""
        cached = self.tokens.get()
        if (
            cached.get("deal_stages")
            and time.time() - float(cached.get("deal_stages_at", 0)) < STAGES_TTL_SECONDS
        ):
            return dict(cached["deal_stages"])
        _, body = await self._call("GET", "/settings/fields", params={"module": "Deals"})
        stages: dict[str, str] = {}
        for field_meta in (body or {}).get("fields", []):
            if field_meta.get("api_name") != "Stage":
                continue
            for value in field_meta.get("pick_list_values", []):
                name = value.get("actual_value") or value.get("display_value")
                category = value.get("forecast_type") or (
                    name if name in ("Closed Won", "Closed Lost") else "Open"
                )
                stages[str(name)] = str(category)
        self.tokens.put({"deal_stages": stages, "deal_stages_at": time.time()})
        return stages

    async def _deal_outcomes(
        self, deals: Iterable[Mapping[str, Any]], created: bool
    ) -> list[Outcome]:
        """``created``: the deals are new (an insert, or created since the pull's cursor). The
        person is the deal's contact (a converted lead becomes one, with the lead's email)."""
        deals = list(deals)
        if not deals:
            return []
        stages = await self._stage_categories()
        contact_ids = sorted(
            {str(d["Contact_Name"]["id"]) for d in deals if isinstance(d.get("Contact_Name"), dict)}
        )
        emails: dict[str, str | None] = {}
        if contact_ids:
            for person in await self._get_records("Contacts", contact_ids, "Email"):
                emails[str(person["id"])] = person.get("Email")
        outcomes: list[Outcome] = []
        for deal in deals:
            contact = deal.get("Contact_Name")
            if not isinstance(contact, dict):
                continue  # a deal with no contact: nobody to credit
            contact_id = str(contact["id"])
            stage = str(deal.get("Stage") or "")
            category = stages.get(stage, "Open")
            when = parse_zoho_datetime(deal.get("Modified_Time")) or datetime.now(UTC)
            props = {
                "deal_id": str(deal["id"]),
                "deal_name": deal.get("Deal_Name"),
                "stage": stage,
                "amount": deal.get("Amount"),
            }
            types: list[OutcomeType] = []
            if created:
                types.append("opportunity.created")
            if category == "Closed Won":
                types.append("deal.won")
            elif category == "Closed Lost":
                types.append("deal.lost")
            for outcome_type in types:
                occurred = when
                if outcome_type == "opportunity.created":
                    occurred = parse_zoho_datetime(deal.get("Created_Time")) or when
                outcomes.append(
                    Outcome(
                        type=outcome_type,
                        occurred_at=occurred,
                        # One deal is created, won or lost once: the notification and the pull
                        # of the same change give the same key.
                        dedup_key=f"Deals:{deal['id']}:{outcome_type}",
                        record=RecordRef("Contacts", contact_id),
                        email=emails.get(contact_id),
                        properties=props,
                    )
                )
        return outcomes

    def _lead_outcomes(self, leads: Iterable[Mapping[str, Any]]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        for lead in leads:
            outcome_type = self.status_map.get(str(lead.get("Lead_Status")))
            if outcome_type is None:
                continue
            outcomes.append(
                Outcome(
                    type=outcome_type,
                    occurred_at=parse_zoho_datetime(lead.get("Modified_Time")) or datetime.now(UTC),
                    dedup_key=f"Leads:{lead['id']}:{outcome_type}",
                    record=RecordRef("Leads", str(lead["id"])),
                    email=lead.get("Email"),
                    properties={"lead_status": lead.get("Lead_Status")},
                )
            )
        return outcomes

    async def pull_changes(self, since: datetime) -> tuple[list[Outcome], datetime]:
        await self._renew_channel_if_due()
        # A second of overlap: whether If-Modified-Since is inclusive is not documented, and
        # the dedup keys absorb a record seen twice.
        header = {"If-Modified-Since": zoho_datetime(since - timedelta(seconds=1))}
        cursor = since
        deals = await self._list_modified("Deals", DEAL_FIELDS, header)
        outcomes: list[Outcome] = []
        new_ids = {
            str(d["id"])
            for d in deals
            if (parse_zoho_datetime(d.get("Created_Time")) or since) >= since
        }
        created = [d for d in deals if str(d["id"]) in new_ids]
        others = [d for d in deals if str(d["id"]) not in new_ids]
        outcomes += await self._deal_outcomes(created, created=True)
        outcomes += await self._deal_outcomes(others, created=False)
        leads: list[dict[str, Any]] = []
        if self.module == "Leads":
            leads = await self._list_modified("Leads", "Email,Lead_Status,Modified_Time", header)
            outcomes += self._lead_outcomes(leads)
        for record in [*deals, *leads]:
            modified = parse_zoho_datetime(record.get("Modified_Time"))
            if modified and modified > cursor:
                cursor = modified
        return outcomes, cursor

    async def _list_modified(
        self, module: str, fields: str, headers: Mapping[str, str]
    ) -> list[dict[str, Any]]:
        """All pages: ``page`` while ``info.more_records``, switching to ``page_token`` when
        Zoho gives one (it must beyond 2,000 records)."""
        records: list[dict[str, Any]] = []
        params: dict[str, str] = {
            "fields": fields,
            "sort_by": "Modified_Time",
            "sort_order": "asc",
            "per_page": "200",
            "page": "1",
        }
        while True:
            status, body = await self._call("GET", f"/{module}", params=params, headers=headers)
            if status in (204, 304) or not isinstance(body, dict):
                return records
            records.extend(body.get("data") or [])
            info = body.get("info") or {}
            if not info.get("more_records"):
                return records
            if info.get("next_page_token"):
                params.pop("page", None)
                params["page_token"] = str(info["next_page_token"])
            else:
                params["page"] = str(int(params.get("page", "1")) + 1)

    # ------------------------------------------------------------------ notifications channel

    def _watch_body(self, expiry: datetime) -> dict[str, Any]:
        token = self._credential("notification_token")
        if len(token) > 50:
            raise CrmError(
                "credentials.notification_token: Zoho allows at most 50 characters", permanent=True
            )
        notify_url = self.config.options.get("notify_url")
        if not notify_url:
            raise CrmError("options.notify_url is needed for Zoho notifications", permanent=True)
        events = ["Deals.all"]
        conditions: list[dict[str, Any]] = [
            {
                "type": "field_selection",
                "module": {"api_name": "Deals"},
                "field_selection": {
                    "group_operator": "or",
                    "group": [{"field": {"api_name": "Stage"}}],
                },
            }
        ]
        if self.module == "Leads":
            events.append("Leads.edit")
            conditions.append(
                {
                    "type": "field_selection",
                    "module": {"api_name": "Leads"},
                    "field_selection": {
                        "group_operator": "or",
                        "group": [{"field": {"api_name": "Lead_Status"}}],
                    },
                }
            )
        watch: dict[str, Any] = {
            "channel_id": self.channel_id,
            "events": events,
            "notify_url": str(notify_url),
            "token": token,
            "channel_expiry": zoho_datetime(expiry),
        }
        condition = self.config.options.get("notification_condition", True)
        # From the command line (--option key=value) the value is a string.
        if str(condition).strip().lower() not in ("false", "0", "no", "off"):
            watch["notification_condition"] = conditions
        return {"watch": [watch]}

    async def _enable_channel(self, method: str = "POST") -> datetime:
        expiry = datetime.now(UTC) + CHANNEL_LIFETIME
        _, body = await self._call(method, "/actions/watch", body=self._watch_body(expiry))
        results = body.get("watch") if isinstance(body, dict) else None
        if not results or results[0].get("status") != "success":
            raise CrmError(
                f"Zoho did not enable the notification channel: {body!r}"[:300], permanent=True
            )
        self.tokens.put({"channel_expiry": zoho_datetime(expiry)})
        return expiry

    async def _renew_channel_if_due(self) -> None:
        """Channels lapse silently: renew ours when it has less than a day left (only once
        setup enabled it, which left its expiry in the TokenCache)."""
        expiry = parse_zoho_datetime(self.tokens.get().get("channel_expiry"))
        if expiry is None or expiry - datetime.now(UTC) > CHANNEL_RENEW_BEFORE:
            return
        try:
            await self._enable_channel("PATCH")
        except CrmError as exc:
            if not exc.permanent or exc.status is None:
                raise
            await self._enable_channel("POST")  # the channel is gone: enable it anew

    # ----------------------------------------------------------------------------------- setup

    async def setup(self) -> SetupReport:
        report = SetupReport()
        module = self.module
        _, body = await self._call("GET", "/settings/fields", params={"module": module})
        existing = {f.get("api_name") for f in (body or {}).get("fields", [])}
        for ours, api_name in self.field_map.items():
            if api_name in existing:
                report.existing.append(api_name)
                continue
            data_type, length = FIELD_TYPES.get(ours, ("text", 255))
            field_def: dict[str, Any] = {
                "field_label": api_name.replace("_", " "),
                "data_type": data_type,
            }
            if length is not None:
                field_def["length"] = length
            try:
                await self._call(
                    "POST",
                    "/settings/fields",
                    params={"module": module},
                    body={"fields": [field_def]},
                )
            except CrmError as exc:
                if not exc.permanent:
                    raise
                report.manual_steps.append(
                    f"Create the field {field_def['field_label']!r} ({data_type}) in Zoho CRM: Setup ›"
                    f" Customization › Modules and Fields › {module} (Zoho answered: {exc})"
                )
                continue
            report.created.append(api_name)
        report.manual_steps += self._manual_steps()
        if self.config.options.get("notify_url") and self.config.credentials.get(
            "notification_token"
        ):
            expiry = await self._enable_channel()
            report.created.append(
                f"notification channel {self.channel_id} (until {zoho_datetime(expiry)})"
            )
        else:
            report.manual_steps.append(
                "Set options.notify_url to https://<host>/v1/crm/<name>/notifications and"
                " credentials.notification_token, then run setup again to enable Zoho notifications"
                " (without them, outcomes come only from the periodic pull)."
            )
        return report

    def _manual_steps(self) -> list[str]:
        return [
            "Credentials: in https://api-console.zoho.com (use your data centre's console) create a"
            " Self Client, generate a grant code with the scopes ZohoCRM.modules.leads.ALL,"
            " ZohoCRM.modules.contacts.ALL, ZohoCRM.modules.deals.READ, ZohoCRM.modules.tasks.ALL,"
            " ZohoCRM.settings.fields.ALL, ZohoCRM.notifications.ALL, and exchange it for a refresh"
            " token (docs/crm/zoho.md).",
            "base_url must be your data centre's accounts server (accounts.zoho.com, .eu, .in,"
            " .com.au, .jp, .com.cn, accounts.zohocloud.ca); API calls then go to the api_domain"
            " Zoho returns with the token.",
            "Zoho CRM field permissions: make the Leadscore fields read-only for sales profiles in"
            " Setup › Customization › Modules and Fields if they should not be edited by hand.",
        ]
