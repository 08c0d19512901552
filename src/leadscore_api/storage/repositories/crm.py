"""SQL of the CRM connectors: ``crm_connectors`` and ``crm_records``."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, or_, select, update
from sqlalchemy.orm import Session

from leadscore_api.storage.crm_models import CrmConnector, CrmRecord
from leadscore_api.storage.delivery_models import STATUS_PENDING, OutboxMessage
from leadscore_api.storage.fast_sql import FastStatement

# -- connectors ------------------------------------------------------------------------------


def get(session: Session, name: str) -> CrmConnector | None:
    return session.get(CrmConnector, name)


def list_all(session: Session) -> list[CrmConnector]:
    return list(session.scalars(select(CrmConnector).order_by(CrmConnector.name)))


#: Asked once per scoring request, so compiled once and run on the DBAPI cursor: through the
#: ORM this one query cost as much as scoring a single event.
_FAST_ENABLED_TARGETS = FastStatement(
    select(CrmConnector.__table__.c.name, CrmConnector.__table__.c.subscription_id)
    .where(CrmConnector.__table__.c.enabled.is_(True))
    .order_by(CrmConnector.__table__.c.name)
)


def enabled_targets(session: Session) -> list[tuple[str, str]]:
    """(name, subscription id) of every enabled connector: asked once per scoring request."""
    return [(name, sub_id) for name, sub_id in _FAST_ENABLED_TARGETS.execute(session, {})]


def by_subscription_ids(session: Session, ids: Iterable[str]) -> dict[str, CrmConnector]:
    found = session.scalars(
        select(CrmConnector).where(CrmConnector.subscription_id.in_(list(set(ids))))
    )
    return {row.subscription_id: row for row in found}


def add(session: Session, connector: CrmConnector) -> None:
    session.add(connector)
    session.flush()


def delete_connector(session: Session, connector: CrmConnector) -> None:
    session.delete(connector)
    session.flush()


def save_token_state(session: Session, name: str, state: dict[str, Any]) -> None:
    session.execute(update(CrmConnector).where(CrmConnector.name == name).values(token_state=state))


def take_pull_lease(
    session: Session, name: str, *, owner: str, now: datetime, until: datetime, due_before: datetime
) -> bool:
    """Lease the pull of one connector to ``owner`` unless another replica holds it or pulled
    it since ``due_before``; a compare-and-set, so two replicas never both win."""
    result = session.execute(
        update(CrmConnector)
        .where(
            CrmConnector.name == name,
            CrmConnector.enabled.is_(True),
            or_(CrmConnector.pull_lease_until.is_(None), CrmConnector.pull_lease_until < now),
            or_(CrmConnector.last_pull_at.is_(None), CrmConnector.last_pull_at <= due_before),
        )
        .values(pull_lease_owner=owner, pull_lease_until=until)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0) == 1


def finish_pull(
    session: Session,
    name: str,
    *,
    owner: str,
    now: datetime,
    cursor: datetime | None,
    error: str | None,
) -> None:
    """Release the lease (only ours), record the time and, on success, the new cursor."""
    values: dict[str, Any] = {
        "pull_lease_owner": None,
        "pull_lease_until": None,
        "last_pull_at": now,
        "last_pull_error": error,
    }
    if cursor is not None:
        values["pull_cursor"] = cursor
    session.execute(
        update(CrmConnector)
        .where(CrmConnector.name == name, CrmConnector.pull_lease_owner == owner)
        .values(**values)
        .execution_options(synchronize_session=False)
    )


def push_back(session: Session, subscription_id: str, until: datetime) -> int:
    """Every pending message of one connector waits until ``until`` (the CRM's rate limit)."""
    result = session.execute(
        update(OutboxMessage)
        .where(
            OutboxMessage.subscription_id == subscription_id,
            OutboxMessage.status == STATUS_PENDING,
            or_(OutboxMessage.next_attempt_at.is_(None), OutboxMessage.next_attempt_at < until),
        )
        .values(next_attempt_at=until)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


# -- records ---------------------------------------------------------------------------------


def records_for_leads(
    session: Session, connector: str, lead_ids: Iterable[str]
) -> dict[str, CrmRecord]:
    found = session.scalars(
        select(CrmRecord).where(
            CrmRecord.connector == connector, CrmRecord.lead_id.in_(list(set(lead_ids)))
        )
    )
    return {row.lead_id: row for row in found}


def records_of_lead(session: Session, lead_id: str) -> list[CrmRecord]:
    query = select(CrmRecord).where(CrmRecord.lead_id == lead_id).order_by(CrmRecord.connector)
    return list(session.scalars(query))


def lead_by_record(session: Session, connector: str, record_id: str) -> str | None:
    query = select(CrmRecord.lead_id).where(
        CrmRecord.connector == connector, CrmRecord.record_id == record_id
    )
    return session.scalars(query.limit(1)).first()


def upsert_record(
    session: Session,
    *,
    connector: str,
    lead_id: str,
    object_type: str,
    record_id: str,
    now: datetime,
) -> None:
    """Remember (or correct) the record standing for a lead in one connector's CRM."""
    row = session.scalars(
        select(CrmRecord).where(CrmRecord.connector == connector, CrmRecord.lead_id == lead_id)
    ).first()
    if row is None:
        session.add(
            CrmRecord(
                connector=connector,
                lead_id=lead_id,
                object_type=object_type,
                record_id=record_id,
                created_at=now,
                updated_at=now,
            )
        )
    elif (row.object_type, row.record_id) != (object_type, record_id):
        row.object_type = object_type
        row.record_id = record_id
        row.updated_at = now
    session.flush()


def delete_records(session: Session, lead_id: str, ids: Sequence[int]) -> None:
    """Some of one lead's records (the key is lead id, id: one node on a distributed database)."""
    if ids:
        session.execute(
            delete(CrmRecord).where(CrmRecord.lead_id == lead_id, CrmRecord.id.in_(list(ids)))
        )


def move_records(
    session: Session, records: Sequence[CrmRecord], lead_id: str, now: datetime
) -> None:
    """The records now stand for another lead: deleted and inserted under it, not updated,
    because a distributed database cannot change the lead a row is kept with."""
    if not records:
        return
    rows = [
        {
            "connector": record.connector,
            "lead_id": lead_id,
            "object_type": record.object_type,
            "record_id": record.record_id,
            "created_at": record.created_at,
            "updated_at": now,
        }
        for record in records
    ]
    for record in records:
        session.delete(record)
    session.flush()
    session.execute(insert(CrmRecord), rows)
