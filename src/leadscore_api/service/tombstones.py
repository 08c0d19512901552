"""The erasure tombstone: an erased person stays erased until they act again.

An erasure (``DELETE /v1/leads/{id}``) deletes the person, but platforms retry webhooks for
days and a spreadsheet may be imported again; without a memory of the erasure either would
bring the person straight back. So the erasure keeps, for each of the person's identities
(email, external id, any other identity kind) and for each event id seen for them, a keyed hash
and the time of the erasure. Ingestion screens every fresh event against it:

* an event whose id is in the tombstone is a retry of something already erased: it is answered
  ``duplicate`` and not applied;
* an event for an erased identity that is not a new action is answered ``ignored``: an event
  that happened at or before the erasure (the person's erased past, arriving late), or any
  spreadsheet import row (an import is someone's old record of the person, not the person);
* anything else (a new event id that happened after the erasure) is the person acting again:
  it is applied and, if needed, creates the lead anew. The tombstone stays, so late copies of
  the old events are still refused.

The hash is HMAC-SHA256 keyed with a random 256-bit key made at the first erasure and stored in
the database (``install_secrets``), not in a setting: every replica and worker shares it without
configuration, and it cannot be lost or rotated apart from the tombstone it keys. A stolen
tombstone alone reveals nothing; with the key too, it can only confirm a guessed address
(docs/privacy.md discusses this).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from leadscore_api.ingest.events import CanonicalEvent
from leadscore_api.storage.models import IDENTITY_EMAIL, IDENTITY_EXTERNAL_ID
from leadscore_api.storage.repositories import tombstones as tombstones_repo

#: The ``install_secrets`` row holding the tombstone's HMAC key (hex).
KEY_NAME = "tombstone_hmac_key"
#: Where a process keeps the key once read: on the DBAPI connection, which outlives sessions
#: (a key never changes once committed, and each database has its own).
_CACHE = "leadscore.tombstone_key"
#: The kind an event id is hashed under (identities use their own kind).
EVENT_KIND = "event"
#: Event types that are never a new action of the person (a spreadsheet row).
NOT_ACTIONS = frozenset({"lead.imported"})


def _digest(key: bytes, kind: str, value: str) -> str:
    return hmac.new(key, f"{kind}:{value}".encode(), hashlib.sha256).hexdigest()


def _key(session: Session, *, create_at: datetime | None = None) -> bytes | None:
    """The install's key; ``None`` when no erasure ever happened (unless ``create_at`` is set)."""
    info = session.connection().info
    cached = info.get(_CACHE)
    if isinstance(cached, bytes):
        return cached
    stored = tombstones_repo.get_secret(session, KEY_NAME)
    if stored is not None:
        key = bytes.fromhex(stored)
        # Only a key read back is cached: one made here is not committed yet.
        info[_CACHE] = key
        return key
    if create_at is None:
        return None
    key = secrets.token_bytes(32)
    tombstones_repo.add_secret(session, KEY_NAME, key.hex(), create_at)
    return key


def bury(session: Session, lead_id: str, erased_at: datetime) -> int:
    """Record the lead's identities and event ids in the tombstone; call before deleting them.

    Returns how many keys were recorded.
    """
    key = _key(session, create_at=erased_at)
    assert key is not None
    identities, event_ids = tombstones_repo.lead_keys(session, lead_id)
    digests = [_digest(key, kind, value) for kind, value in identities]
    digests += [_digest(key, EVENT_KIND, event_id) for event_id in event_ids]
    tombstones_repo.record(session, digests, erased_at)
    return len(digests)


@dataclass(frozen=True)
class Verdict:
    """What the tombstone says about one event: ``duplicate`` or ``ignored`` and why."""

    status: str
    reason: str


def _identities(event: CanonicalEvent) -> Iterable[tuple[str, str]]:
    if event.lead.email:
        yield IDENTITY_EMAIL, event.lead.email
    if event.lead.external_id:
        yield IDENTITY_EXTERNAL_ID, event.lead.external_id


def screen(session: Session, events: Sequence[CanonicalEvent]) -> dict[str, Verdict]:
    """The verdict for each event (by id) that the tombstone stops; the others are absent."""
    if not events:
        return {}
    key = _key(session)
    if key is None:
        return {}
    wanted: dict[str, list[str]] = {}
    for event in events:
        digests = [_digest(key, EVENT_KIND, event.id)]
        digests += [_digest(key, kind, value) for kind, value in _identities(event)]
        wanted[event.id] = digests
    found = tombstones_repo.erased_at(session, [d for ds in wanted.values() for d in ds])
    if not found:
        return {}
    verdicts: dict[str, Verdict] = {}
    for event in events:
        event_digest, *identity_digests = wanted[event.id]
        if event_digest in found:
            verdicts[event.id] = Verdict(
                "duplicate", "this event was applied before and then erased with its person"
            )
            continue
        times = [found[d] for d in identity_digests if d in found]
        if not times:
            continue
        erased = max(times)
        if event.type in NOT_ACTIONS:
            verdicts[event.id] = Verdict(
                "ignored", "the person was erased; an import does not bring them back"
            )
        elif event.occurred_at <= erased:
            verdicts[event.id] = Verdict(
                "ignored",
                "the person was erased after this event happened; only a new action after"
                " the erasure brings them back",
            )
    return verdicts
