"""The contract between the CRM connectors and the rest of the service.

A connector speaks one CRM's API on the wire and nothing else: it does not open database
sessions, read settings or know the outbox. The framework (``crm/`` framework modules, the
outbox worker and ``service/crm.py``) hands it plain values, persists what it returns (the
CRM record ids, refreshed tokens) and turns its outcomes into canonical events. That keeps each
connector testable against a local stand-in of its CRM with nothing but ``httpx``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Any, ClassVar, Literal, Protocol

import httpx

CrmKind = Literal["hubspot", "salesforce", "zoho", "pipedrive"]
CRM_KINDS: tuple[CrmKind, ...] = ("hubspot", "salesforce", "zoho", "pipedrive")

OutcomeType = Literal[
    "lead.accepted", "lead.contacted", "opportunity.created", "deal.won", "deal.lost"
]
OUTCOME_TYPES: tuple[OutcomeType, ...] = (
    "lead.accepted",
    "lead.contacted",
    "opportunity.created",
    "deal.won",
    "deal.lost",
)

#: Our fields a connector can write; ``ConnectorConfig.field_map`` maps them to CRM field names.
SYNCED_FIELDS = (
    "letter",
    "score",
    "tier",
    "stage",
    "owner",
    "next_action",
    "next_action_due",
    "lead_id",
)


@dataclass(frozen=True)
class ConnectorConfig:
    """One configured CRM account (an instance: two HubSpot portals are two connectors)."""

    #: Instance name, unique, used in URLs (``/v1/crm/{name}/...``) and event ids.
    name: str
    kind: CrmKind
    #: The API base URL (HubSpot ``https://api.hubapi.com``; Salesforce the login or My Domain
    #: URL, the token answer's ``instance_url`` then wins; Zoho the accounts server, the token
    #: answer's ``api_domain`` then wins; Pipedrive ``https://{company}.pipedrive.com``).
    #: Tests point it at a loopback stand-in.
    base_url: str
    #: As the CRM issues them, kind-specific keys (documented per connector in docs/crm.md):
    #: hubspot ``token`` (private app / service key) and ``client_secret`` (webhook signature v3);
    #: salesforce ``client_id``, ``client_secret``, optional ``refresh_token`` (else the client
    #: credentials flow), ``organization_id`` (checked on outbound messages); zoho ``client_id``,
    #: ``client_secret``, ``refresh_token``, ``notification_token``; pipedrive ``api_token``,
    #: ``webhook_user``, ``webhook_password``.
    credentials: Mapping[str, str]
    #: Our field (one of ``SYNCED_FIELDS``) -> the CRM's field API name. Fields left out are not
    #: written. Each connector has a default map (its ``default_field_map``).
    field_map: Mapping[str, str] = field(default_factory=dict)
    #: Our rep id (``leads.owner``) -> the CRM's user / owner id, for tasks and record owners.
    owner_map: Mapping[str, str] = field(default_factory=dict)
    #: Create the CRM record when none matches the lead's email or stored id.
    create_missing: bool = True
    #: Kind-specific options (e.g. salesforce ``object``: "Lead" | "Contact"; zoho ``module``).
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LeadSnapshot:
    """What we write about one lead: its visible state after a change."""

    lead_id: str
    email: str | None
    letter: str | None
    score: int
    tier: str | None
    stage: str | None
    #: Our rep id; the connector maps it with ``owner_map`` (unmapped: left unset in the CRM).
    owner: str | None
    next_action: str | None
    next_action_due: datetime | None
    updated_at: datetime
    #: For creating a record: first_name, last_name, company, phone when the lead has them.
    attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RecordRef:
    """A CRM record that stands for a lead: its object type as the CRM names it, and its id."""

    object_type: str
    record_id: str


@dataclass(frozen=True)
class HandoverTask:
    """The owner's task created when a lead is handed over to sales ("call within 24 h")."""

    lead_id: str
    #: Our rep id (mapped with ``owner_map``), or None: the CRM's default owner.
    owner: str | None
    subject: str
    body: str
    due_at: datetime


@dataclass(frozen=True)
class Outcome:
    """A CRM change that becomes one canonical event on one lead."""

    type: OutcomeType
    occurred_at: datetime
    #: Stable across retries of the same CRM change: the event id becomes
    #: ``crm:{connector}:{dedup_key}``, so a repeated notification or pull is applied once.
    dedup_key: str
    #: The CRM person record (contact / lead / person) the change concerns, when known.
    record: RecordRef | None = None
    #: The person's email, when the CRM gave it (used when no stored record id matches).
    email: str | None = None
    #: Extra data kept on the event (deal id, amount, stage, reason...).
    properties: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class InboundRequest:
    """A CRM's change notification as received, for signature checks on the raw bytes."""

    method: str
    #: The full URL the CRM called (scheme, host, path and query), as signatures cover it.
    url: str
    #: Header names in lower case.
    headers: Mapping[str, str]
    body: bytes


@dataclass(frozen=True)
class Acknowledgement:
    """What to answer a notification with (Salesforce outbound messages want a SOAP ``Ack``)."""

    status: int = 200
    media_type: str = "application/json"
    body: bytes = b'{"ok":true}'


@dataclass
class SetupReport:
    """What ``leadscore crm setup NAME`` did: fields created, fields already there, and the
    steps a person has to click where the CRM's API cannot do it."""

    created: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    manual_steps: list[str] = field(default_factory=list)


class CrmError(Exception):
    """A CRM call that failed. The outbox retries it unless ``permanent``."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
        permanent: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.permanent = permanent


class CrmRateLimited(CrmError):
    """The CRM said "not now" (HTTP 429, Salesforce ``REQUEST_LIMIT_EXCEEDED``, Zoho
    ``TOO_MANY_REQUESTS``, a daily quota): every message of this connector waits
    ``retry_after`` seconds (until the quota's reset for daily quotas)."""


class CrmPartialFailure(CrmError):
    """Some records of a batch failed for a reason that may pass (a locked row, a timeout):
    the push is worth retrying for them. ``written`` holds the records that did get written
    (lead id -> record), so that their ids are kept and their messages count as delivered;
    ``failed`` maps the lead ids to retry to the CRM's message. Records refused for good in
    the same batch are in the connector's ``last_push_errors``, as for a push that returns."""

    def __init__(
        self, message: str, *, written: dict[str, RecordRef], failed: dict[str, str]
    ) -> None:
        super().__init__(message)
        self.written = written
        self.failed = failed


def answer_error(
    message: str,
    status: int,
    *,
    rate_limit_wait: float | None = None,
    retry_after: float | None = None,
    transient: Container[int] = (),
) -> CrmError:
    """What a CRM's error answer means for the outbox; the same rule for every connector.

    Over a limit, a ``CrmRateLimited`` holds every message of the connector back for
    ``rate_limit_wait`` seconds: the connector passes it when its CRM says so, since each CRM
    says it its own way (a status, an error code, a quota header). A server error (5xx, and the
    CRM's other ``transient`` statuses) may pass, so it is retried, after ``retry_after`` when
    the CRM named a time. Any other refusal (validation, a bad or revoked credential, a missing
    scope) would fail again the same way, so it is permanent.
    """
    if rate_limit_wait is not None:
        return CrmRateLimited(message, status=status, retry_after=rate_limit_wait)
    if status >= 500 or status in transient:
        return CrmError(message, status=status, retry_after=retry_after)
    return CrmError(message, status=status, permanent=True)


def seconds_until_midnight(now: datetime, zone: tzinfo) -> float:
    """Until the next midnight in ``zone``, at least a second: when a daily API quota resets
    (HubSpot's in the account's time zone, Pipedrive's in UTC)."""
    local = now.astimezone(zone)
    next_day = local.date() + timedelta(days=1)
    midnight = datetime(next_day.year, next_day.month, next_day.day, tzinfo=zone)
    return max(1.0, (midnight.astimezone(UTC) - now.astimezone(UTC)).total_seconds())


class NotificationRejected(Exception):
    """A notification whose signature, token or credentials do not check out (answered 401)."""


class TokenCache(Protocol):
    """Where a connector keeps what it obtained and every replica should reuse: OAuth access
    tokens with their expiry, Salesforce's ``instance_url``, Zoho's ``api_domain``, Pipedrive's
    field keys. Backed by the database so that replicas do not each refresh (Zoho allows 10
    refreshes per 10 minutes)."""

    def get(self) -> Mapping[str, Any]: ...

    def put(self, values: Mapping[str, Any]) -> None: ...


class MemoryTokenCache:
    """A TokenCache in a dict, for tests and one-off commands."""

    def __init__(self) -> None:
        self._values: dict[str, Any] = {}

    def get(self) -> Mapping[str, Any]:
        return dict(self._values)

    def put(self, values: Mapping[str, Any]) -> None:
        self._values.update(values)


class Connector(ABC):
    """One CRM's API. Methods that call the CRM are async and raise ``CrmError``."""

    kind: ClassVar[CrmKind]
    #: Records per upsert call (HubSpot 100, Salesforce 200, Zoho 100, Pipedrive 1).
    max_batch: ClassVar[int] = 1
    #: Our field -> CRM field name used when the config gives no map.
    default_field_map: ClassVar[Mapping[str, str]] = {}

    def __init__(self, config: ConnectorConfig, http: httpx.AsyncClient, tokens: TokenCache):
        self.config = config
        self.http = http
        self.tokens = tokens
        #: Leads of the last ``push`` that the CRM refused for good (an invalid email, a value
        #: too long): lead id -> the CRM's message. A connector that can tell one record's
        #: refusal from another's resets it at each push and leaves those leads out of the
        #: result; the framework sends their messages to the dead letter with that message
        #: rather than retrying a batch that can never succeed.
        self.last_push_errors: dict[str, str] = {}

    @property
    def field_map(self) -> Mapping[str, str]:
        return self.config.field_map or self.default_field_map

    def check_config(self) -> None:
        """Raise ValueError naming ``options.<key>`` for a configuration that would be refused
        when saved but that a running connector tolerates (HubSpot's unknown time zone: the
        tz database may lose a name a stored connector uses). ``__init__`` raises for the
        rest. Called once when the configuration is saved, never by the worker."""
        return None

    @abstractmethod
    async def push(
        self, leads: Sequence[LeadSnapshot], known: Mapping[str, RecordRef]
    ) -> dict[str, RecordRef]:
        """Write these leads' fields into their records (at most ``max_batch`` leads).

        ``known`` holds the record stored for a lead earlier (by lead id); others are found by
        email, and created when missing if ``create_missing``. Returns the record of every lead
        written (a lead neither found nor created is left out; so is a lead the CRM refused,
        listed in ``last_push_errors``). Raises ``CrmPartialFailure`` when some records failed
        for a passing reason while others were written.
        """

    @abstractmethod
    async def create_task(self, task: HandoverTask, record: RecordRef) -> str:
        """Create the owner's task / activity on the record; returns the CRM's task id."""

    @abstractmethod
    async def erase(self, record: RecordRef) -> None:
        """The person was erased here: delete the record from the CRM (GDPR erasure is passed
        on). A record that is already gone is not an error."""

    @abstractmethod
    async def merge(self, survivor: RecordRef, merged: RecordRef) -> RecordRef:
        """Two leads were merged here: merge their CRM records where the CRM can (else clear
        our fields on ``merged``); returns the record that now stands for the survivor."""

    @abstractmethod
    def verify_notification(self, request: InboundRequest, now: datetime) -> None:
        """Raise NotificationRejected unless the CRM's signature / token / credentials hold."""

    @abstractmethod
    async def parse_notification(self, request: InboundRequest) -> list[Outcome]:
        """The outcomes in a verified notification (may call the CRM to read a deal's stage or
        the person it belongs to). Changes that are no outcome give nothing."""

    def acknowledgement(self, request: InboundRequest) -> Acknowledgement:
        """What the CRM expects back on success."""
        return Acknowledgement()

    @abstractmethod
    async def pull_changes(self, since: datetime) -> tuple[list[Outcome], datetime]:
        """Outcomes changed since ``since`` (for CRMs or plans without notifications, and lost
        ones); returns them with the cursor to pass next time."""

    @abstractmethod
    async def setup(self) -> SetupReport:
        """Create the custom fields of ``field_map`` where the CRM's API allows it."""
