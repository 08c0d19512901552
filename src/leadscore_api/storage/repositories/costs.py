"""SQL of the acquisition costs (``acquisition_costs``): one amount per source and month."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from decimal import Decimal

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from leadscore_api.storage.report_models import AcquisitionCost


def put_costs(
    session: Session, entries: Iterable[tuple[str, str, Decimal]], now: datetime
) -> list[AcquisitionCost]:
    """Set each (source, month) to its amount, replacing what was there (a PUT, not a sum)."""
    stored = []
    for source, month, amount in entries:
        row = session.get(AcquisitionCost, (source, month))
        if row is None:
            row = AcquisitionCost(source=source, month=month, amount=amount, updated_at=now)
            session.add(row)
        else:
            row.amount = amount
            row.updated_at = now
        stored.append(row)
    session.flush()
    return stored


def delete_cost(session: Session, source: str, month: str) -> bool:
    result = session.execute(
        delete(AcquisitionCost).where(
            AcquisitionCost.source == source, AcquisitionCost.month == month
        )
    )
    return bool(getattr(result, "rowcount", 0))


def list_costs(
    session: Session,
    *,
    months: Sequence[str] | None = None,
    first_month: str | None = None,
    last_month: str | None = None,
    source: str | None = None,
) -> list[AcquisitionCost]:
    statement = select(AcquisitionCost)
    if months is not None:
        statement = statement.where(AcquisitionCost.month.in_(list(months)))
    if first_month is not None:
        statement = statement.where(AcquisitionCost.month >= first_month)
    if last_month is not None:
        statement = statement.where(AcquisitionCost.month <= last_month)
    if source is not None:
        statement = statement.where(AcquisitionCost.source == source)
    statement = statement.order_by(AcquisitionCost.month, AcquisitionCost.source)
    return list(session.scalars(statement))
