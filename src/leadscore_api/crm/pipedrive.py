"""Pipedrive: scores into person custom fields, hand-overs as "call" activities, deals back.

Pipedrive has no batch or upsert for persons, so each lead costs a search by email (an
expensive call with its own limit of 10 per 2 s) unless we stored its person id, then a PATCH or
a POST. Custom-field keys are 40-character hashes that differ per account: the names of the
field map are resolved to keys through ``personFields`` and the answer is kept in the token
cache, because listing fields spends tokens from the company's daily budget too. Notifications
are webhooks v2, authenticated only by the HTTP Basic credentials we gave Pipedrive when the
webhook was created.
"""

from __future__ import annotations

import base64
import hmac
import json
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, ClassVar

import httpx

from leadscore_api.crm.base import (
    SYNCED_FIELDS,
    Connector,
    CrmError,
    CrmRateLimited,
    HandoverTask,
    InboundRequest,
    LeadSnapshot,
    NotificationRejected,
    Outcome,
    RecordRef,
    SetupReport,
    seconds_until_midnight,
)
from leadscore_api.retry_after import retry_after_seconds

PERSON = "person"
OAUTH_TOKEN_URL = "https://oauth.pipedrive.com/oauth/token"
#: How long resolved field keys are trusted before ``personFields`` is listed again.
FIELD_CACHE_TTL = 3600.0
#: Without any reset header, a 429 waits this long (the burst window is 2 s).
DEFAULT_RETRY_AFTER = 2.0
#: Field types ``setup`` creates; plain types avoid per-account option ids of enum fields.
FIELD_TYPES: Mapping[str, str] = {"score": "double"}
#: Webhooks ``setup`` creates: deals for created / won / lost, activities for "contacted".
WEBHOOKS: tuple[tuple[str, str], ...] = (("deal", "*"), ("activity", "*"))


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: Any) -> datetime | None:
    """Pipedrive v2 answers RFC 3339; v1 and some webhook fields use "YYYY-MM-DD HH:MM:SS" UTC."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace(" ", "T"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _int_id(value: str) -> int | str:
    """Pipedrive ids are integers; a stored id that is not one is passed on as given."""
    return int(value) if value.isdigit() else value


class PipedriveConnector(Connector):
    kind = "pipedrive"
    max_batch = 1
    default_field_map: ClassVar[Mapping[str, str]] = {
        "letter": "Leadscore letter",
        "score": "Leadscore score",
        "tier": "Leadscore tier",
        "stage": "Leadscore stage",
        "owner": "Leadscore owner",
        "next_action": "Leadscore next action",
        "next_action_due": "Leadscore next action due",
        "lead_id": "Leadscore lead id",
    }

    # -- wire ------------------------------------------------------------------------------

    @property
    def _oauth(self) -> bool:
        return "api_token" not in self.config.credentials and (
            "refresh_token" in self.config.credentials
        )

    def _base(self) -> str:
        if self._oauth:
            domain = self.tokens.get().get("api_domain")
            if isinstance(domain, str) and domain:
                return domain.rstrip("/")
        return self.config.base_url.rstrip("/")

    async def _refresh(self) -> str:
        """Trade the refresh token for an access token (Pipedrive wants the client id and
        secret as HTTP Basic auth) and keep it, its expiry and ``api_domain`` for every replica."""
        creds = self.config.credentials
        refresh_token = str(self.tokens.get().get("refresh_token") or creds["refresh_token"])
        url = str(self.config.options.get("oauth_token_url", OAUTH_TOKEN_URL))
        try:
            response = await self.http.post(
                url,
                data={"grant_type": "refresh_token", "refresh_token": refresh_token},
                auth=(creds.get("client_id", ""), creds.get("client_secret", "")),
            )
        except httpx.HTTPError as exc:
            raise CrmError(f"Pipedrive OAuth token endpoint unreachable: {exc}") from exc
        if response.status_code >= 500:
            raise CrmError("Pipedrive OAuth token endpoint failed", status=response.status_code)
        if response.status_code == 429:
            raise CrmRateLimited(
                "Pipedrive OAuth token endpoint rate-limited",
                status=429,
                retry_after=self._retry_after(response),
            )
        if response.status_code != 200:
            raise CrmError(
                f"Pipedrive refused the refresh token ({response.status_code}): "
                f"{response.text[:200]}",
                status=response.status_code,
                permanent=True,
            )
        answer = response.json()
        values: dict[str, Any] = {
            "access_token": answer["access_token"],
            "expires_at": time.time() + float(answer.get("expires_in", 3599)),
        }
        if answer.get("api_domain"):
            values["api_domain"] = answer["api_domain"]
        if answer.get("refresh_token"):
            values["refresh_token"] = answer["refresh_token"]
        self.tokens.put(values)
        return str(answer["access_token"])

    async def _auth_headers(self, *, force_refresh: bool = False) -> dict[str, str]:
        if not self._oauth:
            return {"x-api-token": self.config.credentials.get("api_token", "")}
        cached = self.tokens.get()
        token = cached.get("access_token")
        # Refresh a minute early so a token does not expire between check and use.
        if force_refresh or not token or float(cached.get("expires_at", 0)) < time.time() + 60:
            token = await self._refresh()
        return {"authorization": f"Bearer {token}"}

    def _retry_after(self, response: httpx.Response) -> float:
        waited = retry_after_seconds(response.headers.get("retry-after"), datetime.now(UTC))
        if waited is not None:
            return waited
        reset = response.headers.get("x-ratelimit-reset")
        if reset:
            try:
                return max(0.0, float(reset))
            except ValueError:
                pass
        return DEFAULT_RETRY_AFTER

    def _note_limits(self, response: httpx.Response) -> None:
        """Keep the last rate-limit readings: operators see them, and a spent daily budget
        stops further calls until the next day instead of spending 429s."""
        headers = response.headers
        readings = {
            key: headers[f"x-ratelimit-{key}"]
            for key in ("limit", "remaining", "reset")
            if f"x-ratelimit-{key}" in headers
        }
        values: dict[str, Any] = {}
        if readings:
            values["rate_limit"] = readings
        daily = headers.get("x-daily-requests-left")
        if daily is not None:
            values["daily_requests_left"] = daily
            now = datetime.now(UTC)
            if daily.strip() in ("0", "-0") or daily.strip().startswith("-"):
                values["daily_exhausted_until"] = now.timestamp() + seconds_until_midnight(now, UTC)
            else:
                values["daily_exhausted_until"] = 0.0
        cached = self.tokens.get()
        if any(cached.get(key) != value for key, value in values.items()):
            self.tokens.put(values)  # the cache may be a database row: write only on change

    async def _call(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
    ) -> dict[str, Any]:
        exhausted_until = float(self.tokens.get().get("daily_exhausted_until", 0) or 0)
        if exhausted_until > time.time():
            raise CrmRateLimited(
                "Pipedrive daily API budget spent",
                status=429,
                retry_after=exhausted_until - time.time(),
            )
        response = await self._send(method, path, params=params, body=body, force_refresh=False)
        if response.status_code == 401 and self._oauth:
            # An access token can be revoked before its expiry: refresh once, then give up.
            response = await self._send(method, path, params=params, body=body, force_refresh=True)
        self._note_limits(response)
        status = response.status_code
        if status == 429:
            daily = response.headers.get("x-daily-requests-left", "").strip()
            if daily == "0" or daily.startswith("-"):
                retry = seconds_until_midnight(datetime.now(UTC), UTC)
                raise CrmRateLimited(
                    "Pipedrive daily API budget spent", status=429, retry_after=retry
                )
            raise CrmRateLimited(
                "Pipedrive rate limit", status=429, retry_after=self._retry_after(response)
            )
        if status >= 500:
            raise CrmError(f"Pipedrive {method} {path} failed with {status}", status=status)
        if status >= 400:
            raise CrmError(
                f"Pipedrive {method} {path} refused ({status}): {self._error_text(response)}",
                status=status,
                permanent=True,
            )
        if not response.content:
            return {}
        try:
            answer = response.json()
        except ValueError as exc:
            raise CrmError(f"Pipedrive {method} {path} answered no JSON", status=status) from exc
        return answer if isinstance(answer, dict) else {"data": answer}

    async def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None,
        body: Any,
        force_refresh: bool,
    ) -> httpx.Response:
        headers = await self._auth_headers(force_refresh=force_refresh)
        try:
            return await self.http.request(
                method, self._base() + path, params=params, json=body, headers=headers
            )
        except httpx.HTTPError as exc:
            raise CrmError(f"Pipedrive {method} {path} unreachable: {exc}") from exc

    @staticmethod
    def _error_text(response: httpx.Response) -> str:
        try:
            answer = response.json()
        except ValueError:
            return response.text[:200]
        if isinstance(answer, dict):
            return str(answer.get("error") or answer.get("error_info") or answer)[:200]
        return str(answer)[:200]

    # -- custom fields -----------------------------------------------------------------------

    async def _list_person_fields(self) -> list[dict[str, Any]]:
        fields: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {"limit": int(self.config.options.get("page_size", 100))}
            if cursor:
                params["cursor"] = cursor
            answer = await self._call("GET", "/api/v2/personFields", params=params)
            for item in answer.get("data") or []:
                fields.append(
                    {
                        "name": item.get("field_name"),
                        "code": item.get("field_code"),
                        "type": item.get("field_type"),
                    }
                )
            cursor = (answer.get("additional_data") or {}).get("next_cursor")
            if not cursor:
                break
        self.tokens.put({"person_fields": fields, "person_fields_at": time.time()})
        return fields

    async def _person_fields(self, *, max_age: float | None = None) -> list[dict[str, Any]]:
        cached = self.tokens.get()
        ttl = float(self.config.options.get("field_cache_ttl", FIELD_CACHE_TTL))
        if max_age is not None:
            ttl = min(ttl, max_age)
        fields = cached.get("person_fields")
        if (
            isinstance(fields, list)
            and time.time() - float(cached.get("person_fields_at", 0)) < ttl
        ):
            return fields
        return await self._list_person_fields()

    @staticmethod
    def _match(fields: list[dict[str, Any]], wanted: str) -> dict[str, Any] | None:
        """A field map entry may name the field ("Leadscore letter") or give its key."""
        for item in fields:
            if item.get("code") == wanted:
                return item
        folded = wanted.strip().casefold()
        for item in fields:
            if str(item.get("name") or "").strip().casefold() == folded:
                return item
        return None

    async def _resolved_fields(self) -> dict[str, dict[str, Any]]:
        unknown = sorted(set(self.field_map) - set(SYNCED_FIELDS))
        if unknown:
            raise CrmError(
                f"field_map names no field of ours: {', '.join(unknown)}", permanent=True
            )
        fields = await self._person_fields()
        resolved = {ours: self._match(fields, theirs) for ours, theirs in self.field_map.items()}
        if any(item is None for item in resolved.values()):
            # Someone may have just created the field (or run setup on another replica).
            fields = await self._person_fields(max_age=60)
            resolved = {
                ours: self._match(fields, theirs) for ours, theirs in self.field_map.items()
            }
        missing = [self.field_map[ours] for ours, item in resolved.items() if item is None]
        if missing:
            raise CrmError(
                "Pipedrive has no person field named "
                + ", ".join(repr(name) for name in missing)
                + f": run `leadscore crm setup {self.config.name}`",
                permanent=True,
            )
        return {ours: item for ours, item in resolved.items() if item is not None}

    @staticmethod
    def _value(lead: LeadSnapshot, ours: str, field_type: str | None) -> Any:
        raw: Any = getattr(lead, ours)
        if raw is None:
            return None  # null clears the value in Pipedrive
        if isinstance(raw, datetime):
            moment = raw.astimezone(UTC)
            return moment.strftime("%Y-%m-%d") if field_type == "date" else _rfc3339(moment)
        if field_type in ("double", "monetary"):
            return raw
        return str(raw)

    # -- scores out --------------------------------------------------------------------------

    def _owner_id(self, owner: str | None) -> int | str | None:
        mapped = self.config.owner_map.get(owner) if owner else None
        return _int_id(mapped) if mapped else None

    async def push(
        self, leads: Sequence[LeadSnapshot], known: Mapping[str, RecordRef]
    ) -> dict[str, RecordRef]:
        fields = await self._resolved_fields()
        written: dict[str, RecordRef] = {}
        for lead in leads:
            record = await self._push_one(lead, known.get(lead.lead_id), fields)
            if record is not None:
                written[lead.lead_id] = record
        return written

    async def _push_one(
        self, lead: LeadSnapshot, record: RecordRef | None, fields: Mapping[str, dict[str, Any]]
    ) -> RecordRef | None:
        body: dict[str, Any] = {
            "custom_fields": {
                str(item["code"]): self._value(lead, ours, item.get("type"))
                for ours, item in fields.items()
            }
        }
        owner_id = self._owner_id(lead.owner)
        if owner_id is not None:
            body["owner_id"] = owner_id
        if record is not None:
            try:
                await self._call("PATCH", f"/api/v2/persons/{record.record_id}", body=body)
                return RecordRef(PERSON, record.record_id)
            except CrmError as exc:
                if exc.status != 404:
                    raise
                # Deleted in Pipedrive since we stored it: find it again by email below.
        if not lead.email:
            return None
        found = await self._search_person(lead.email)
        if found is not None:
            await self._call("PATCH", f"/api/v2/persons/{found}", body=body)
            return RecordRef(PERSON, found)
        if not self.config.create_missing:
            return None
        body["name"] = self._person_name(lead)
        body["emails"] = [{"value": lead.email, "primary": True, "label": "work"}]
        answer = await self._call("POST", "/api/v2/persons", body=body)
        return RecordRef(PERSON, str(answer["data"]["id"]))

    @staticmethod
    def _person_name(lead: LeadSnapshot) -> str:
        first = str(lead.attributes.get("first_name") or "").strip()
        last = str(lead.attributes.get("last_name") or "").strip()
        name = f"{first} {last}".strip()
        return name or str(lead.email)

    async def _search_person(self, email: str) -> str | None:
        answer = await self._call(
            "GET",
            "/api/v2/persons/search",
            params={"term": email, "fields": "email", "exact_match": "true", "limit": 1},
        )
        items = (answer.get("data") or {}).get("items") or []
        for entry in items:
            item = entry.get("item") or {}
            if item.get("id") is not None:
                return str(item["id"])
        return None

    async def create_task(self, task: HandoverTask, record: RecordRef) -> str:
        due = task.due_at.astimezone(UTC)
        body: dict[str, Any] = {
            "subject": task.subject,
            "type": str(self.config.options.get("activity_type", "call")),
            "participants": [{"person_id": _int_id(record.record_id), "primary": True}],
            # Pipedrive keeps due_time in UTC.
            "due_date": due.strftime("%Y-%m-%d"),
            "due_time": due.strftime("%H:%M"),
            "note": task.body,
            "done": False,
        }
        owner_id = self._owner_id(task.owner)
        if owner_id is not None:
            body["owner_id"] = owner_id
        if "activity_priority" in self.config.options:
            body["priority"] = int(self.config.options["activity_priority"])
        answer = await self._call("POST", "/api/v2/activities", body=body)
        return str(answer["data"]["id"])

    async def erase(self, record: RecordRef) -> None:
        try:
            await self._call("DELETE", f"/api/v2/persons/{record.record_id}")
        except CrmError as exc:
            if exc.status not in (404, 410):
                raise

    async def merge(self, survivor: RecordRef, merged: RecordRef) -> RecordRef:
        if survivor.record_id == merged.record_id:
            return survivor
        # Pipedrive merges the person in the path into ``merge_with_id``, which survives.
        try:
            answer = await self._call(
                "PUT",
                f"/api/v1/persons/{merged.record_id}/merge",
                body={"merge_with_id": _int_id(survivor.record_id)},
            )
        except CrmError as exc:
            if exc.status == 404:
                return survivor  # one of them is already gone: nothing left to merge
            raise
        data = answer.get("data") or {}
        return RecordRef(PERSON, str(data.get("id", survivor.record_id)))

    # -- outcomes in -------------------------------------------------------------------------

    def verify_notification(self, request: InboundRequest, now: datetime) -> None:
        """Webhooks carry no signature; the HTTP Basic credentials set on the webhook are the
        only proof it came from Pipedrive, compared in constant time."""
        user = self.config.credentials.get("webhook_user", "")
        password = self.config.credentials.get("webhook_password", "")
        if not user or not password:
            raise NotificationRejected("no webhook_user / webhook_password configured")
        header = request.headers.get("authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic":
            raise NotificationRejected("missing HTTP Basic credentials")
        try:
            given = base64.b64decode(encoded.strip(), validate=True)
        except ValueError as exc:
            raise NotificationRejected("malformed HTTP Basic credentials") from exc
        expected = f"{user}:{password}".encode()
        if not hmac.compare_digest(given, expected):
            raise NotificationRejected("wrong HTTP Basic credentials")

    async def parse_notification(self, request: InboundRequest) -> list[Outcome]:
        try:
            payload = json.loads(request.body)
        except ValueError as exc:
            raise CrmError("Pipedrive notification is not JSON", permanent=True) from exc
        if not isinstance(payload, dict):
            return []
        meta = payload.get("meta") or {}
        data = payload.get("data") or {}
        previous = payload.get("previous") or {}
        if not isinstance(meta, dict) or not isinstance(data, dict):
            return []
        entity, action = meta.get("entity"), meta.get("action")
        sent_at = _parse_time(meta.get("timestamp")) or datetime.now(UTC)
        emails: dict[str, str | None] = {}
        if entity == "deal":
            if action == "create":
                return await self._deal_outcomes(data, None, sent_at, emails, created=True)
            if action == "change" and isinstance(previous, dict):
                return await self._deal_outcomes(data, previous, sent_at, emails, created=False)
        if entity == "activity" and data.get("done"):
            before = previous if isinstance(previous, dict) else {}
            just_done = action == "change" and "done" in before and not before["done"]
            if action == "create" or just_done:
                outcome = self._contacted(data, sent_at)
                return [outcome] if outcome else []
        if entity == "person" and action == "change" and isinstance(previous, dict):
            return self._accepted(data, previous, sent_at)
        return []

    async def _person_email(self, person_id: str, cache: dict[str, str | None]) -> str | None:
        if person_id not in cache:
            try:
                answer = await self._call("GET", f"/api/v2/persons/{person_id}")
            except CrmError as exc:
                if exc.status != 404:
                    raise
                answer = {}
            person = answer.get("data") or {}
            email = None
            for entry in person.get("emails") or []:
                usable = isinstance(entry, dict) and entry.get("value")
                if usable and (entry.get("primary") or email is None):
                    email = str(entry["value"])
            cache[person_id] = email
        return cache[person_id]

    async def _deal_outcomes(
        self,
        deal: Mapping[str, Any],
        previous: Mapping[str, Any] | None,
        sent_at: datetime,
        emails: dict[str, str | None],
        *,
        created: bool,
        since: datetime | None = None,
    ) -> list[Outcome]:
        """A deal's outcomes: created, and won / lost when its status just became so (from a
        notification: ``previous`` shows the change; from a pull: the status time is recent).
        Dedup keys name the change, not the delivery, so a notification and a pull of the same
        change become one event."""
        if deal.get("id") is None or deal.get("person_id") is None:
            return []
        deal_id, person_id = str(deal["id"]), str(deal["person_id"])
        status = deal.get("status")
        wanted: list[tuple[str, datetime, str]] = []
        if created:
            at = _parse_time(deal.get("add_time")) or sent_at
            wanted.append(("opportunity.created", at, f"deal:{deal_id}:created"))
        if status in ("won", "lost"):
            time_key = "won_time" if status == "won" else "lost_time"
            at = _parse_time(deal.get(time_key)) or sent_at
            if previous is not None:
                changed = "status" in previous and previous.get("status") != status
            else:
                changed = since is not None and at >= since
            if changed:
                wanted.append(
                    (f"deal.{status}", at, f"deal:{deal_id}:{status}:{deal.get(time_key) or ''}")
                )
        if not wanted:
            return []
        email = await self._person_email(person_id, emails)
        properties: dict[str, Any] = {
            key: deal[key]
            for key in ("value", "currency", "stage_id", "pipeline_id", "lost_reason", "title")
            if deal.get(key) is not None
        }
        properties["deal_id"] = deal_id
        return [
            Outcome(
                type=kind,  # type: ignore[arg-type]
                occurred_at=at,
                dedup_key=key,
                record=RecordRef(PERSON, person_id),
                email=email,
                properties=properties,
            )
            for kind, at, key in wanted
        ]

    def _contacted(self, activity: Mapping[str, Any], sent_at: datetime) -> Outcome | None:
        """A done activity on a person: the owner reached them. The framework matches the person
        id to a lead we synced; activities on persons we never wrote match nothing."""
        person_id = activity.get("person_id")
        if person_id is None:
            for participant in activity.get("participants") or []:
                if isinstance(participant, dict) and participant.get("primary"):
                    person_id = participant.get("person_id")
        if person_id is None or activity.get("id") is None:
            return None
        at = (
            _parse_time(activity.get("marked_as_done_time"))
            or _parse_time(activity.get("update_time"))
            or sent_at
        )
        return Outcome(
            type="lead.contacted",
            occurred_at=at,
            dedup_key=f"activity:{activity['id']}:done",
            record=RecordRef(PERSON, str(person_id)),
            properties={
                "activity_id": str(activity["id"]),
                "activity_type": activity.get("type"),
            },
        )

    def _accepted(
        self, person: Mapping[str, Any], previous: Mapping[str, Any], sent_at: datetime
    ) -> list[Outcome]:
        """A person given one of ``options.accepted_label_ids``: sales accepted the lead."""
        accepted = {str(label) for label in self.config.options.get("accepted_label_ids", [])}
        if not accepted or "label_ids" not in previous or person.get("id") is None:
            return []
        now_labels = {str(label) for label in person.get("label_ids") or []}
        before = {str(label) for label in previous.get("label_ids") or []}
        added = sorted((now_labels - before) & accepted)
        if not added:
            return []
        emails = [e for e in person.get("emails") or [] if isinstance(e, dict) and e.get("value")]
        return [
            Outcome(
                type="lead.accepted",
                occurred_at=_parse_time(person.get("update_time")) or sent_at,
                dedup_key=f"person:{person['id']}:label:{added[0]}",
                record=RecordRef(PERSON, str(person["id"])),
                email=str(emails[0]["value"]) if emails else None,
                properties={"label_id": added[0]},
            )
        ]

    async def pull_changes(self, since: datetime) -> tuple[list[Outcome], datetime]:
        outcomes: list[Outcome] = []
        cursor_time = since
        emails: dict[str, str | None] = {}
        async for deal in self._pages("/api/v2/deals", since):
            created = (_parse_time(deal.get("add_time")) or since) >= since
            outcomes += await self._deal_outcomes(
                deal, None, since, emails, created=created, since=since
            )
            cursor_time = max(cursor_time, _parse_time(deal.get("update_time")) or since)
        if self.config.options.get("pull_activities", True):
            async for activity in self._pages("/api/v2/activities", since, {"done": "true"}):
                done_at = _parse_time(activity.get("marked_as_done_time"))
                if activity.get("done") and (done_at is None or done_at >= since):
                    outcome = self._contacted(activity, since)
                    if outcome:
                        outcomes.append(outcome)
                cursor_time = max(cursor_time, _parse_time(activity.get("update_time")) or since)
        return outcomes, cursor_time

    async def _pages(
        self, path: str, since: datetime, extra: Mapping[str, str] | None = None
    ) -> AsyncIterator[dict[str, Any]]:
        cursor: str | None = None
        while True:
            params: dict[str, Any] = {
                "updated_since": _rfc3339(since),
                "sort_by": "update_time",
                "sort_direction": "asc",
                "limit": int(self.config.options.get("page_size", 100)),
                **(extra or {}),
            }
            if cursor:
                params["cursor"] = cursor
            answer = await self._call("GET", path, params=params)
            for item in answer.get("data") or []:
                yield item
            cursor = (answer.get("additional_data") or {}).get("next_cursor")
            if not cursor:
                return

    # -- setup -------------------------------------------------------------------------------

    async def setup(self) -> SetupReport:
        report = SetupReport()
        fields = await self._list_person_fields()
        for ours, theirs in self.field_map.items():
            if self._match(fields, theirs) is not None:
                report.existing.append(theirs)
                continue
            field_type = FIELD_TYPES.get(ours, "varchar")
            await self._call(
                "POST",
                "/api/v2/personFields",
                body={"field_name": theirs, "field_type": field_type},
            )
            report.created.append(theirs)
        if report.created:
            await self._list_person_fields()  # cache the new keys for every replica
        await self._setup_webhooks(report)
        report.manual_steps.append(
            "The API token is the one of the Pipedrive user shown under avatar → Personal "
            "preferences → API; regenerating it there breaks this integration until the new "
            "token is put in the connector's credentials."
        )
        report.manual_steps.append(
            "Each call spends tokens from the company's daily API budget (it grows with seats "
            "and plan; see Company settings → Usage / API usage): searching persons by email "
            "is the dearest call, so keep the stored person ids."
        )
        return report

    async def _setup_webhooks(self, report: SetupReport) -> None:
        url = self.config.options.get("notify_url")
        user = self.config.credentials.get("webhook_user")
        password = self.config.credentials.get("webhook_password")
        if not url or not user or not password:
            report.manual_steps.append(
                "No webhooks created: set options.notify_url to "
                f"https://<host>/v1/crm/{self.config.name}/notifications and credentials "
                "webhook_user / webhook_password, then run setup again (or create them under "
                "Tools and apps → Webhooks: version 2.0, deal *, activity *, with that HTTP "
                "Basic user and password)."
            )
            return
        wanted = list(WEBHOOKS)
        if self.config.options.get("accepted_label_ids"):
            wanted.append(("person", "change"))
        answer = await self._call("GET", "/api/v1/webhooks")
        present = {
            (str(hook.get("event_object")), str(hook.get("event_action")))
            for hook in answer.get("data") or []
            if hook.get("subscription_url") == url
        }
        for event_object, event_action in wanted:
            label = f"webhook {event_object} {event_action} → {url}"
            if (event_object, event_action) in present:
                report.existing.append(label)
                continue
            await self._call(
                "POST",
                "/api/v1/webhooks",
                body={
                    "subscription_url": url,
                    "event_action": event_action,
                    "event_object": event_object,
                    "http_auth_user": user,
                    "http_auth_password": password,
                    "version": "2.0",
                },
            )
            report.created.append(label)
