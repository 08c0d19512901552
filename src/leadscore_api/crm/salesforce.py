"""The Salesforce connector: REST API (sObject Collections, SOQL, Tooling) and Outbound Messages.

Why it is built the way it is:

- **Email match by SOQL, write by Id.** sObject Collections upsert takes external-id fields
  only, and whether ``Lead.Email`` counts as one is not documented, so a batch first asks
  ``SELECT Id, Email FROM Lead WHERE Email IN (...)`` and then updates by Id (``PATCH
  composite/sobjects``) and creates the rest (``POST composite/sobjects``), ≤ 200 records each,
  ``allOrNone: false`` so that one bad record does not sink the others.
- **Tokens.** The OAuth answer's ``instance_url`` is the host for every call, not the login
  URL. Salesforce tokens carry no expiry (the session timeout is an org setting), so the token
  is kept until a call answers 401 ``INVALID_SESSION_ID``; then it is fetched again once.
- **Limits.** Over the org's rolling 24 h allocation Salesforce answers 403
  ``REQUEST_LIMIT_EXCEEDED`` and sends no ``Retry-After``; when calls work again is unknowable
  from outside, so the connector waits ``options.limit_retry_after`` (1 h by default). Every
  answer's ``Sforce-Limit-Info`` reading is kept in the token cache for the status pages.
- **Outcomes.** Stage names are org-specific, so won / lost come from ``IsWon`` / ``IsClosed``
  (the message's fields, else ``OpportunityStage``). Dedup keys name the record and the outcome
  (``opportunity:006…:won``), so a notification retried by Salesforce and the periodic pull of
  the same change give the same event.
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import logging
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, ClassVar, cast
from urllib.parse import parse_qs, urlsplit

import httpx

from leadscore_api.crm import salesforce_outbound as outbound
from leadscore_api.crm.base import (
    Acknowledgement,
    Connector,
    ConnectorConfig,
    CrmError,
    CrmPartialFailure,
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
)

log = logging.getLogger("leadscore.crm.salesforce")

DEFAULT_API_VERSION = "v62.0"
#: Salesforce tells nothing about when a rolling-24 h allocation frees up again.
DEFAULT_LIMIT_RETRY_AFTER = 3600.0
#: Over the concurrent long-request cap (25 in production) a short wait is enough.
CONCURRENCY_RETRY_AFTER = 60.0
#: Written where Salesforce requires a value we do not have (Lead.LastName, Lead.Company).
PLACEHOLDER = "[not provided]"
#: The standard Lead Status picklist's values that are outcomes; ``options.status_map`` replaces it.
DEFAULT_STATUS_MAP: Mapping[str, OutcomeType] = {
    "Working - Contacted": "lead.contacted",
    "Qualified": "lead.accepted",
    "Closed - Converted": "lead.accepted",
}
#: SOQL in a GET URL: Salesforce caps the URI at 16,384 bytes; keep a margin for the rest.
MAX_QUERY_CHARS = 12_000

_VERSION_RE = re.compile(r"^v?(\d{2,3}\.0)$")
#: Per-record error codes that a later attempt may not meet again (locks, timeouts).
_TRANSIENT_RECORD_ERRORS = frozenset(
    {"UNABLE_TO_LOCK_ROW", "SERVER_UNAVAILABLE", "REQUEST_RUNNING_TOO_LONG", "UNKNOWN_EXCEPTION"}
)

#: The custom fields ``setup`` creates, by our field: Tooling API ``Metadata``.
_FIELD_METADATA: Mapping[str, Mapping[str, Any]] = {
    "letter": {"label": "Leadscore letter", "type": "Text", "length": 5},
    "score": {"label": "Leadscore score", "type": "Number", "precision": 18, "scale": 0},
    "tier": {"label": "Leadscore tier", "type": "Text", "length": 40},
    "stage": {"label": "Leadscore stage", "type": "Text", "length": 40},
    "owner": {"label": "Leadscore owner", "type": "Text", "length": 80},
    "next_action": {"label": "Leadscore next action", "type": "Text", "length": 255},
    "next_action_due": {"label": "Leadscore next action due", "type": "DateTime"},
    "lead_id": {
        "label": "Leadscore lead id",
        "type": "Text",
        "length": 64,
        "externalId": True,
        "unique": False,
    },
}


class SalesforceConnector(Connector):
    kind = "salesforce"
    max_batch = 200
    default_field_map: ClassVar[Mapping[str, str]] = {
        "letter": "Leadscore_Letter__c",
        "score": "Leadscore_Score__c",
        "tier": "Leadscore_Tier__c",
        "stage": "Leadscore_Stage__c",
        "owner": "Leadscore_Owner__c",
        "next_action": "Leadscore_Next_Action__c",
        "next_action_due": "Leadscore_Next_Action_Due__c",
        "lead_id": "Leadscore_Lead_Id__c",
    }

    def __init__(self, config: ConnectorConfig, http: httpx.AsyncClient, tokens: TokenCache):
        """Reads and checks ``options``; a bad one is a ValueError naming it (as the other
        connectors do), so that configuring the connector can refuse it before any call."""
        super().__init__(config, http, tokens)
        options = config.options
        version = _VERSION_RE.match(str(options.get("api_version", DEFAULT_API_VERSION)))
        if version is None:
            raise ValueError("options.api_version: must look like v62.0")
        self.api = f"/services/data/v{version.group(1)}"
        self.object = str(options.get("object", "Lead"))
        if self.object not in ("Lead", "Contact"):
            raise ValueError('options.object: must be "Lead" or "Contact"')
        status_map = options.get("status_map", DEFAULT_STATUS_MAP)
        if not isinstance(status_map, Mapping) or any(
            value not in ("lead.accepted", "lead.contacted") for value in status_map.values()
        ):
            raise ValueError(
                "options.status_map: must map Lead Status values to lead.accepted or lead.contacted"
            )
        self.status_map: Mapping[str, OutcomeType] = status_map
        self.limit_retry_after = _seconds(options, "limit_retry_after", DEFAULT_LIMIT_RETRY_AFTER)
        self.pull_overlap = timedelta(seconds=_seconds(options, "pull_overlap_seconds", 300))
        self.task_status = str(options.get("task_status", "Not Started"))
        self.task_priority = str(options.get("task_priority", "High"))
        self._refresh_lock = asyncio.Lock()

    # -- OAuth and the one place every call goes through --------------------------------------

    async def _session(self, stale: str | None = None) -> tuple[str, str]:
        """The access token and instance URL: the cached ones unless ``stale`` is the token a
        call was just refused with (then one refresh, shared by concurrent callers)."""
        cached = self.tokens.get()
        token, instance = cached.get("access_token"), cached.get("instance_url")
        if token and instance and token != stale:
            return str(token), str(instance)
        async with self._refresh_lock:
            cached = self.tokens.get()
            token, instance = cached.get("access_token"), cached.get("instance_url")
            if token and instance and token != stale:
                return str(token), str(instance)
            return await self._fetch_token(cached)

    async def _fetch_token(self, cached: Mapping[str, Any]) -> tuple[str, str]:
        credentials = self.config.credentials
        for key in ("client_id", "client_secret"):
            if not credentials.get(key):
                raise CrmError(
                    f"credentials.{key} is missing (the External Client App's consumer key and "
                    "secret)",
                    permanent=True,
                )
        form = {
            "client_id": credentials["client_id"],
            "client_secret": credentials["client_secret"],
        }
        # With refresh-token rotation the answer carries a new refresh token and the old one
        # stops working, so the newest one is kept in the cache and wins over the config's.
        refresh_token = cached.get("refresh_token") or credentials.get("refresh_token")
        if refresh_token:
            form |= {"grant_type": "refresh_token", "refresh_token": str(refresh_token)}
        else:
            form["grant_type"] = "client_credentials"
        url = self.config.base_url.rstrip("/") + "/services/oauth2/token"
        try:
            response = await self.http.post(url, data=form, headers={"Accept": "application/json"})
        except httpx.HTTPError as exc:
            raise CrmError(f"Salesforce token endpoint unreachable: {exc}") from exc
        if response.status_code >= 500:
            raise CrmError(
                f"Salesforce token endpoint answered {response.status_code}",
                status=response.status_code,
            )
        body = _json(response)
        if response.status_code != 200 or not isinstance(body, dict):
            error = body.get("error") if isinstance(body, dict) else None
            description = body.get("error_description") if isinstance(body, dict) else None
            # invalid_client / invalid_grant: wrong or revoked credentials; retrying cannot help.
            raise CrmError(
                f"Salesforce refused the {form['grant_type']} grant: {error}: {description}",
                status=response.status_code,
                permanent=True,
            )
        token, instance = body.get("access_token"), body.get("instance_url")
        if not isinstance(token, str) or not isinstance(instance, str):
            raise CrmError("Salesforce token answer without access_token or instance_url")
        values: dict[str, Any] = {"access_token": token, "instance_url": instance.rstrip("/")}
        if isinstance(body.get("refresh_token"), str):
            values["refresh_token"] = body["refresh_token"]
        self.tokens.put(values)
        return token, values["instance_url"]

    async def _call(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        ok_errors: frozenset[str] = frozenset(),
    ) -> httpx.Response:
        """One REST call on the instance. Refreshes the session once on 401 and maps errors:
        the limit to CrmRateLimited, 5xx and network trouble to a retryable CrmError, other 4xx
        to a permanent one (unless its errorCode is in ``ok_errors``: then the answer is returned)."""
        token, instance = await self._session()
        for attempt in (1, 2):
            try:
                response = await self.http.request(
                    method,
                    instance + path,
                    json=json,
                    params=params,
                    headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
                )
            except httpx.HTTPError as exc:
                raise CrmError(f"Salesforce unreachable: {method} {path}: {exc}") from exc
            self._note_usage(response)
            if response.status_code < 400:
                return response
            code, message = _error(response)
            if response.status_code == 401 and attempt == 1:
                token, instance = await self._session(stale=token)
                continue
            if code in ok_errors:
                return response
            raise self._failure(response.status_code, code, message, method, path)
        raise AssertionError("unreachable")  # pragma: no cover

    def _failure(self, status: int, code: str, message: str, method: str, path: str) -> CrmError:
        what = f"Salesforce {method} {path}: {status} {code}: {message}"
        if code != "REQUEST_LIMIT_EXCEEDED" and status != 429:
            return answer_error(what, status)
        if "concurrent" in message.lower():
            return answer_error(
                f"{what} (too many long-running requests at once; retrying in a minute)",
                status,
                rate_limit_wait=CONCURRENCY_RETRY_AFTER,
            )
        usage = self.tokens.get().get("api_usage")
        return answer_error(
            f"{what} (the org's rolling 24 h API allocation is used up, last reading "
            f"api-usage={usage}; Salesforce sends no Retry-After, so waiting "
            f"{self.limit_retry_after:.0f} s before trying again)",
            status,
            rate_limit_wait=self.limit_retry_after,
        )

    def _note_usage(self, response: httpx.Response) -> None:
        """Keep the last ``Sforce-Limit-Info: api-usage=N/M`` reading (shared with replicas)."""
        info = response.headers.get("sforce-limit-info", "")
        match = re.search(r"api-usage=(\d+)/(\d+)", info)
        if match:
            self.tokens.put(
                {
                    "api_usage": f"{match.group(1)}/{match.group(2)}",
                    "api_usage_at": datetime.now(UTC).isoformat(),
                }
            )

    async def _query(self, soql: str) -> list[dict[str, Any]]:
        """All records of a SOQL query, following ``nextRecordsUrl`` to the last page."""
        response = await self._call("GET", f"{self.api}/query", params={"q": soql})
        records: list[dict[str, Any]] = []
        while True:
            body = _json(response)
            if not isinstance(body, dict) or not isinstance(body.get("records"), list):
                raise CrmError("Salesforce query answer without records")
            records.extend(body["records"])
            next_url = body.get("nextRecordsUrl")
            if body.get("done", True) or not isinstance(next_url, str):
                return records
            response = await self._call("GET", next_url)

    # -- scores out ---------------------------------------------------------------------------

    async def push(
        self, leads: Sequence[LeadSnapshot], known: Mapping[str, RecordRef]
    ) -> dict[str, RecordRef]:
        if len(leads) > self.max_batch:
            raise CrmError(f"at most {self.max_batch} leads per push", permanent=True)
        self.last_push_errors = {}
        found: dict[str, RecordRef] = {
            lead.lead_id: known[lead.lead_id] for lead in leads if lead.lead_id in known
        }
        emails = sorted(
            {lead.email.lower() for lead in leads if lead.lead_id not in found and lead.email}
        )
        by_email = await self._find_by_email(emails)
        for lead in leads:
            if lead.lead_id not in found and lead.email and lead.email.lower() in by_email:
                found[lead.lead_id] = by_email[lead.email.lower()]

        updates = [lead for lead in leads if lead.lead_id in found]
        creates = [lead for lead in leads if lead.lead_id not in found]
        if not self.config.create_missing:
            creates = []
        written: dict[str, RecordRef] = {}
        failed: dict[str, tuple[str, bool]] = {}
        if updates:
            records = [
                {
                    "attributes": {"type": found[lead.lead_id].object_type},
                    "id": found[lead.lead_id].record_id,
                    **self._fields(lead),
                }
                for lead in updates
            ]
            results = await self._collection("PATCH", records)
            converted: list[LeadSnapshot] = []
            for lead, result in zip(updates, results, strict=True):
                if _codes(result) == ["CANNOT_UPDATE_CONVERTED_LEAD"]:
                    converted.append(lead)
                else:
                    self._take(lead, result, found[lead.lead_id].object_type, written, failed)
            if converted:
                # A stored Lead id whose lead was converted: write to its contact from now on.
                contacts = await self._converted_contacts(
                    [found[lead.lead_id].record_id for lead in converted]
                )
                followed = [lead for lead in converted if found[lead.lead_id].record_id in contacts]
                for lead in converted:
                    if lead not in followed:
                        failed[lead.lead_id] = ("CANNOT_UPDATE_CONVERTED_LEAD", False)
                if followed:
                    refs = [contacts[found[lead.lead_id].record_id] for lead in followed]
                    records = [
                        {
                            "attributes": {"type": "Contact"},
                            "id": ref.record_id,
                            **self._fields(lead),
                        }
                        for lead, ref in zip(followed, refs, strict=True)
                    ]
                    results = await self._collection("PATCH", records)
                    for lead, result in zip(followed, results, strict=True):
                        self._take(lead, result, "Contact", written, failed)
        if creates:
            records = [
                {"attributes": {"type": self.object}, **self._identity(lead), **self._fields(lead)}
                for lead in creates
            ]
            results = await self._collection("POST", records)
            for lead, result in zip(creates, results, strict=True):
                self._take(lead, result, self.object, written, failed)

        for lead_id, (message, _transient) in failed.items():
            log.warning(
                "salesforce %s: lead %s not written: %s", self.config.name, lead_id, message
            )
        retryable = {
            lead_id: message for lead_id, (message, transient) in failed.items() if transient
        }
        self.last_push_errors = {
            lead_id: message for lead_id, (message, transient) in failed.items() if not transient
        }
        if retryable:
            raise CrmPartialFailure(
                f"{len(retryable)} of {len(leads)} records failed for now: "
                + "; ".join(f"{k}: {v}" for k, v in retryable.items()),
                written=written,
                failed=retryable,
            )
        return written

    async def _find_by_email(self, emails: Sequence[str]) -> dict[str, RecordRef]:
        """Records by lowercased email; the oldest wins where several share one (SOQL string
        comparison is case-insensitive, so the match is too). A converted lead is read-only
        and its person lives on as the contact it became: that contact is the match."""
        found: dict[str, RecordRef] = {}
        if self.object == "Lead":
            select = "SELECT Id, Email, IsConverted, ConvertedContactId FROM Lead"
            order = "ORDER BY IsConverted ASC, CreatedDate ASC"
        else:
            select, order = "SELECT Id, Email FROM Contact", "ORDER BY CreatedDate ASC"
        for chunk in _chunks_by_length(emails, MAX_QUERY_CHARS):
            quoted = ", ".join(soql_string(email) for email in chunk)
            for record in await self._query(f"{select} WHERE Email IN ({quoted}) {order}"):
                email = str(record.get("Email") or "").lower()
                if not email or email in found:
                    continue
                if record.get("IsConverted") and record.get("ConvertedContactId"):
                    found[email] = RecordRef("Contact", str(record["ConvertedContactId"]))
                elif not record.get("IsConverted"):
                    found[email] = RecordRef(self.object, str(record["Id"]))
        return found

    async def _converted_contacts(self, lead_ids: Sequence[str]) -> dict[str, RecordRef]:
        """Stored Lead ids that were converted since -> the contacts they became."""
        quoted = ", ".join(soql_string(value) for value in lead_ids)
        rows = await self._query(
            f"SELECT Id, ConvertedContactId FROM Lead WHERE Id IN ({quoted}) AND IsConverted = true"
        )
        return {
            str(row["Id"]): RecordRef("Contact", str(row["ConvertedContactId"]))
            for row in rows
            if row.get("ConvertedContactId")
        }

    async def _collection(self, method: str, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        response = await self._call(
            method, f"{self.api}/composite/sobjects", json={"allOrNone": False, "records": records}
        )
        results = _json(response)
        if not isinstance(results, list) or len(results) != len(records):
            raise CrmError("Salesforce sObject Collections answer does not match the records sent")
        return cast(list[dict[str, Any]], results)

    @staticmethod
    def _take(
        lead: LeadSnapshot,
        result: Mapping[str, Any],
        object_type: str,
        written: dict[str, RecordRef],
        failed: dict[str, tuple[str, bool]],
    ) -> None:
        if result.get("success"):
            written[lead.lead_id] = RecordRef(object_type, str(result["id"]))
            return
        errors = result.get("errors") or [{}]
        codes = _codes(result)
        message = "; ".join(
            f"{error.get('statusCode')}: {error.get('message')}"
            + (f" ({', '.join(error['fields'])})" if error.get("fields") else "")
            for error in errors
        )
        failed[lead.lead_id] = (message, any(code in _TRANSIENT_RECORD_ERRORS for code in codes))

    def _fields(self, lead: LeadSnapshot) -> dict[str, Any]:
        values: dict[str, Any] = {
            "letter": lead.letter,
            "score": lead.score,
            "tier": lead.tier,
            "stage": lead.stage,
            "owner": lead.owner,
            "next_action": lead.next_action,
            "next_action_due": sf_datetime(lead.next_action_due) if lead.next_action_due else None,
            "lead_id": lead.lead_id,
        }
        fields = {crm: values[ours] for ours, crm in self.field_map.items() if ours in values}
        owner_id = self.config.owner_map.get(lead.owner) if lead.owner else None
        if owner_id:
            fields["OwnerId"] = owner_id
        return fields

    def _identity(self, lead: LeadSnapshot) -> dict[str, Any]:
        """Fields only a new record gets. Lead requires LastName and Company, Contact LastName:
        a lead that has not told us gets a visible placeholder rather than no record."""
        attributes = lead.attributes
        fields: dict[str, Any] = {
            "LastName": str(attributes.get("last_name") or PLACEHOLDER)[:80],
        }
        if lead.email:
            fields["Email"] = lead.email
        if attributes.get("first_name"):
            fields["FirstName"] = str(attributes["first_name"])[:40]
        if attributes.get("phone"):
            fields["Phone"] = str(attributes["phone"])[:40]
        if self.object == "Lead":
            fields["Company"] = str(attributes.get("company") or PLACEHOLDER)[:255]
        return fields

    async def create_task(self, task: HandoverTask, record: RecordRef) -> str:
        # ActivityDate is a date without time; the due time itself goes into the reminder,
        # which pops up for the owner at that moment.
        body: dict[str, Any] = {
            "Subject": task.subject[:255],
            "Description": task.body,
            "ActivityDate": task.due_at.astimezone(UTC).date().isoformat(),
            "IsReminderSet": True,
            "ReminderDateTime": sf_datetime(task.due_at),
            "WhoId": record.record_id,
            "Status": self.task_status,
            "Priority": self.task_priority,
        }
        owner_id = self.config.owner_map.get(task.owner) if task.owner else None
        if owner_id:
            body["OwnerId"] = owner_id
        response = await self._call("POST", f"{self.api}/sobjects/Task", json=body)
        answer = _json(response)
        if not isinstance(answer, dict) or not answer.get("id"):
            raise CrmError("Salesforce created a task without telling its id")
        return str(answer["id"])

    async def erase(self, record: RecordRef) -> None:
        await self._call(
            "DELETE",
            f"{self.api}/sobjects/{record.object_type}/{record.record_id}",
            ok_errors=frozenset({"NOT_FOUND", "ENTITY_IS_DELETED"}),
        )

    async def merge(self, survivor: RecordRef, merged: RecordRef) -> RecordRef:
        """The REST API has no merge for leads and contacts (only SOAP ``merge()``), and merging
        records is a sales decision besides; so the merged record keeps its data minus ours,
        and the survivor's record gets the merged lead's scores on the next push."""
        if merged != survivor:
            cleared = dict.fromkeys(self.field_map.values())
            await self._call(
                "PATCH",
                f"{self.api}/sobjects/{merged.object_type}/{merged.record_id}",
                json=cleared,
                ok_errors=frozenset({"NOT_FOUND", "ENTITY_IS_DELETED"}),
            )
        return survivor

    # -- outcomes in --------------------------------------------------------------------------

    def verify_notification(self, request: InboundRequest, now: datetime) -> None:
        """Outbound messages carry no signature and no timestamp: the org id must be ours and,
        when ``credentials.notification_token`` is set, the endpoint URL's ``token``."""
        expected_org = self.config.credentials.get("organization_id", "")
        if not expected_org:
            raise NotificationRejected("credentials.organization_id is not configured")
        expected_token = self.config.credentials.get("notification_token")
        if expected_token:
            given = parse_qs(urlsplit(request.url).query).get("token", [""])[0]
            if not hmac.compare_digest(given.encode(), expected_token.encode()):
                raise NotificationRejected("the endpoint URL's token does not match")
        try:
            message = outbound.parse(request.body)
        except outbound.MalformedMessage as exc:
            raise NotificationRejected(f"not a Salesforce outbound message: {exc}") from exc
        # Org ids come as 15 (case-sensitive) or 18 characters; the first 15 are the id.
        if message.organization_id[:15] != expected_org[:15]:
            raise NotificationRejected("the message's OrganizationId is not this org's")

    def acknowledgement(self, request: InboundRequest) -> Acknowledgement:
        return Acknowledgement(status=200, media_type="text/xml", body=outbound.ACK)

    async def parse_notification(self, request: InboundRequest) -> list[Outcome]:
        """A message holds up to 100 notifications: their stages and people are read with one
        query each (not one per notification), so a busy message costs a handful of calls."""
        message = outbound.parse(request.body)
        opportunities = [
            dict(item.fields)
            for item in message.notifications
            if item.object_type == "Opportunity" and item.fields.get("Id")
        ]
        await self._complete_closed_state(opportunities)
        people = await self._people([str(fields["Id"]) for fields in opportunities])
        outcomes: list[Outcome] = []
        for item in message.notifications:
            if item.object_type == "Lead":
                outcomes += self._lead_outcomes(item.fields, item.id)
            elif item.object_type == "Opportunity" and item.fields.get("Id"):
                fields = opportunities.pop(0)
                person = people.get(str(fields["Id"]))
                if person is None:
                    log.info(
                        "salesforce %s: opportunity %s has no person yet",
                        self.config.name,
                        fields["Id"],
                    )
                    continue
                outcomes += self._opportunity_outcomes_for(fields, person, item.id)
        return outcomes

    async def _complete_closed_state(self, opportunities: list[dict[str, Any]]) -> None:
        """Fill in ``IsClosed`` / ``IsWon`` where the message's fields leave them out: from the
        stage (``OpportunityStage``, as stage names are the org's own), else the opportunity."""
        missing = [f for f in opportunities if f.get("IsClosed") is None or f.get("IsWon") is None]
        stages = sorted({str(f["StageName"]) for f in missing if f.get("StageName")})
        by_stage: dict[str, dict[str, Any]] = {}
        for chunk in _chunks_by_length(stages, MAX_QUERY_CHARS):
            quoted = ", ".join(soql_string(value) for value in chunk)
            for row in await self._query(
                f"SELECT ApiName, IsClosed, IsWon FROM OpportunityStage WHERE ApiName IN ({quoted})"
            ):
                by_stage[str(row["ApiName"])] = row
        ids = [str(f["Id"]) for f in missing if not f.get("StageName")]
        by_id: dict[str, dict[str, Any]] = {}
        for chunk in _chunks_by_length(ids, MAX_QUERY_CHARS):
            quoted = ", ".join(soql_string(value) for value in chunk)
            for row in await self._query(
                "SELECT Id, StageName, IsClosed, IsWon, CreatedDate, LastModifiedDate "
                f"FROM Opportunity WHERE Id IN ({quoted})"
            ):
                by_id[str(row["Id"])] = row
        for fields in missing:
            found = by_stage.get(str(fields.get("StageName"))) or by_id.get(str(fields["Id"])) or {}
            for key in ("StageName", "IsClosed", "IsWon", "CreatedDate", "LastModifiedDate"):
                if fields.get(key) is None and key in found:
                    fields[key] = found[key]

    async def _people(
        self, opportunity_ids: Sequence[str]
    ) -> dict[str, tuple[RecordRef, str | None]]:
        """The person each deal belongs to: the lead converted into it (the record we wrote,
        when we write leads), else its primary contact role, else its oldest contact role."""
        people: dict[str, tuple[RecordRef, str | None]] = {}
        if self.object == "Lead":
            for chunk in _chunks_by_length(opportunity_ids, MAX_QUERY_CHARS):
                quoted = ", ".join(soql_string(value) for value in chunk)
                for row in await self._query(
                    "SELECT Id, Email, ConvertedOpportunityId FROM Lead "
                    f"WHERE ConvertedOpportunityId IN ({quoted}) ORDER BY CreatedDate ASC"
                ):
                    people.setdefault(
                        str(row["ConvertedOpportunityId"]),
                        (RecordRef("Lead", str(row["Id"])), row.get("Email")),
                    )
        rest = [value for value in opportunity_ids if value not in people]
        for chunk in _chunks_by_length(rest, MAX_QUERY_CHARS):
            quoted = ", ".join(soql_string(value) for value in chunk)
            for row in await self._query(
                "SELECT OpportunityId, ContactId, Contact.Email FROM OpportunityContactRole "
                f"WHERE OpportunityId IN ({quoted}) ORDER BY IsPrimary DESC, CreatedDate ASC"
            ):
                contact = row.get("Contact") or {}
                people.setdefault(
                    str(row["OpportunityId"]),
                    (RecordRef("Contact", str(row["ContactId"])), contact.get("Email")),
                )
        return people

    def _lead_outcomes(
        self, fields: Mapping[str, Any], notification_id: str | None
    ) -> list[Outcome]:
        lead_id, status = fields.get("Id"), fields.get("Status")
        outcome = self.status_map.get(str(status)) if status else None
        if not lead_id or outcome is None:
            return []
        properties: dict[str, Any] = {"status": status}
        if notification_id:
            properties["notification_id"] = notification_id
        return [
            Outcome(
                type=outcome,
                occurred_at=_parse_time(fields.get("LastModifiedDate")) or datetime.now(UTC),
                dedup_key=f"lead:{lead_id}:{outcome}",
                record=RecordRef("Lead", str(lead_id)),
                email=fields.get("Email") or None,
                properties=properties,
            )
        ]

    async def pull_changes(self, since: datetime) -> tuple[list[Outcome], datetime]:
        """Opportunities (and, when we write leads, lead statuses) changed since ``since``.

        The query starts ``pull_overlap_seconds`` before the cursor: a record saved by a
        transaction that committed late, or between this pull's two queries, is still read;
        the outcomes' dedup keys make the overlap harmless."""
        start = soql_datetime(since - self.pull_overlap)
        cursor = since
        outcomes: list[Outcome] = []
        opportunities = await self._query(
            "SELECT Id, StageName, IsClosed, IsWon, Amount, CreatedDate, LastModifiedDate, "
            f"SystemModstamp FROM Opportunity WHERE SystemModstamp > {start} "
            "ORDER BY SystemModstamp ASC"
        )
        people = await self._people([str(row["Id"]) for row in opportunities])
        for row in opportunities:
            cursor = max(cursor, _parse_time(row.get("SystemModstamp")) or cursor)
            person = people.get(str(row["Id"]))
            if person is not None:
                outcomes += self._opportunity_outcomes_for(row, person)
        if self.object == "Lead" and self.status_map:
            statuses = ", ".join(soql_string(value) for value in sorted(self.status_map))
            for row in await self._query(
                "SELECT Id, Email, Status, LastModifiedDate, SystemModstamp FROM Lead "
                f"WHERE SystemModstamp > {start} AND Status IN ({statuses}) "
                "ORDER BY SystemModstamp ASC"
            ):
                cursor = max(cursor, _parse_time(row.get("SystemModstamp")) or cursor)
                outcomes += self._lead_outcomes(row, None)
        return outcomes, cursor

    def _opportunity_outcomes_for(
        self,
        row: Mapping[str, Any],
        person: tuple[RecordRef, str | None],
        notification_id: str | None = None,
    ) -> list[Outcome]:
        """Every opportunity is an ``opportunity.created`` (its key makes repeats one event, and
        a lost creation notification is made up by any later one), a closed one also won / lost."""
        record, email = person
        opportunity_id = str(row["Id"])
        properties: dict[str, Any] = {
            "opportunity_id": opportunity_id,
            "stage": row.get("StageName"),
        }
        if row.get("Amount") not in (None, ""):
            properties["amount"] = float(row["Amount"])
        if notification_id:
            properties["notification_id"] = notification_id
        now = datetime.now(UTC)
        outcomes = [
            Outcome(
                type="opportunity.created",
                occurred_at=_parse_time(row.get("CreatedDate")) or now,
                dedup_key=f"opportunity:{opportunity_id}:created",
                record=record,
                email=email,
                properties=properties,
            )
        ]
        if _true(row.get("IsClosed")):
            won = _true(row.get("IsWon"))
            outcomes.append(
                Outcome(
                    type="deal.won" if won else "deal.lost",
                    occurred_at=_parse_time(row.get("LastModifiedDate")) or now,
                    dedup_key=f"opportunity:{opportunity_id}:{'won' if won else 'lost'}",
                    record=record,
                    email=email,
                    properties=properties,
                )
            )
        return outcomes

    # -- setup --------------------------------------------------------------------------------

    async def setup(self) -> SetupReport:
        report = SetupReport()
        created_or_there: list[str] = []
        # Lead mode writes converted leads' contacts too, so both objects need the fields.
        objects = ["Lead", "Contact"] if self.object == "Lead" else ["Contact"]
        for obj, (ours, name) in itertools.product(objects, self.field_map.items()):
            full_name = f"{obj}.{name}"
            metadata = _FIELD_METADATA.get(ours)
            if not name.endswith("__c") or metadata is None:
                # A standard field (Rating, Description...): nothing to create.
                report.existing.append(full_name)
                continue
            response = await self._call(
                "POST",
                f"{self.api}/tooling/sobjects/CustomField",
                json={
                    "FullName": full_name,
                    "Metadata": {
                        **metadata,
                        "description": "Written by leadscore; changes made here are overwritten.",
                    },
                },
                ok_errors=frozenset({"DUPLICATE_DEVELOPER_NAME", "DUPLICATE_VALUE"}),
            )
            (report.created if response.status_code < 400 else report.existing).append(full_name)
            created_or_there.append(full_name)
        fields = ", ".join(created_or_there) or "(none)"
        report.manual_steps += [
            "Setup > Permission Sets > New (e.g. 'Leadscore integration') > Object Settings > "
            f"{' and '.join(objects)}: grant Read and Edit on {fields}, then assign the permission set to "
            "the integration user. New fields stay invisible to the API until this is done.",
            "Setup > External Client App Manager: the app must have 'Enable Client Credentials "
            "Flow' with that user as 'Run As' (or a refresh token with the scopes 'api' and "
            "'refresh_token'), and OAuth scope 'api'.",
            "Setup > Outbound Messages > New: object Opportunity, endpoint URL "
            f"https://<host>/v1/crm/{self.config.name}/notifications"
            + (
                "?token=<notification_token>"
                if self.config.credentials.get("notification_token")
                else ""
            )
            + ", fields Id, StageName, IsClosed, IsWon, Amount, CreatedDate, LastModifiedDate; "
            "then Setup > Flows > New Record-Triggered Flow on Opportunity (created or updated) "
            "with the action 'Outbound Message' choosing it.",
        ]
        if self.object == "Lead":
            report.manual_steps.append(
                "Setup > Outbound Messages > New: object Lead, same endpoint URL, fields Id, "
                "Email, Status, LastModifiedDate; and a Record-Triggered Flow on Lead "
                "(when Status changes) sending it: first contact and acceptance come from Status."
            )
        return report


# -- wire helpers -----------------------------------------------------------------------------


def _seconds(options: Mapping[str, Any], key: str, default: float) -> float:
    value = options.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"options.{key}: must be a number of seconds, 0 or more")
    return float(value)


def soql_string(value: str) -> str:
    """A SOQL string literal: backslash and single quote escaped (SOQL's own escapes), so that
    an email like o'brien@example.com neither breaks nor changes the query."""
    escaped = (
        value.replace("\\", "\\\\")
        .replace("'", "\\'")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f"'{escaped}'"


def sf_datetime(moment: datetime) -> str:
    """A Salesforce dateTime field value: UTC, milliseconds, ``Z``."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def soql_datetime(moment: datetime) -> str:
    """A SOQL dateTime literal in the documented form (no fraction: rounded down, which only
    widens a ``>`` filter)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: Any) -> datetime | None:
    if not value:
        return None
    text = str(value)
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
        return datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
    # Salesforce writes "+0000" offsets in REST answers and "Z" in SOAP.
    text = re.sub(r"([+-]\d{2})(\d{2})$", r"\1:\2", text.replace("Z", "+00:00"))
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _true(value: Any) -> bool:
    return value is True or str(value).lower() == "true"


def _chunks_by_length(values: Sequence[str], limit: int) -> list[list[str]]:
    """Split values so that each chunk's quoted, comma-joined, URL-encoded text stays short."""
    chunks: list[list[str]] = []
    current: list[str] = []
    length = 0
    for value in values:
        size = 3 * len(value) + 8  # worst case of percent-encoding, quotes and separator
        if current and length + size > limit:
            chunks.append(current)
            current, length = [], 0
        current.append(value)
        length += size
    if current:
        chunks.append(current)
    return chunks


def _codes(result: Mapping[str, Any]) -> list[str]:
    """A failed collection record's error codes (``statusCode`` of each of its errors)."""
    if result.get("success"):
        return []
    return [str(error.get("statusCode", "")) for error in result.get("errors") or [{}]]


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _error(response: httpx.Response) -> tuple[str, str]:
    """Salesforce's error body: a list of ``{"errorCode", "message"}`` (one usually)."""
    body = _json(response)
    if isinstance(body, list) and body and isinstance(body[0], dict):
        return str(body[0].get("errorCode", "")), str(body[0].get("message", ""))
    if isinstance(body, dict):
        return str(body.get("errorCode", body.get("error", ""))), str(
            body.get("message", body.get("error_description", ""))
        )
    return "", response.text[:200]
