"""SQL of ``subscriptions``: the receivers of outbound webhooks."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from leadscore_api.storage.delivery_models import Subscription
from leadscore_api.storage.fast_sql import FastStatement

#: Asked by every ingest that produces a transition, hence on the DBAPI cursor.
_ANY_ENABLED = FastStatement(select(Subscription.id).where(Subscription.enabled.is_(True)).limit(1))


def get(session: Session, subscription_id: str) -> Subscription | None:
    return session.get(Subscription, subscription_id)


def by_ids(session: Session, ids: set[str]) -> dict[str, Subscription]:
    found = session.scalars(select(Subscription).where(Subscription.id.in_(ids)))
    return {sub.id: sub for sub in found}


def list_all(session: Session, enabled: bool | None = None) -> list[Subscription]:
    """Webhook subscriptions; a CRM connector's own target (``crm://name``) is listed with
    the connector (``/v1/crm/connectors``), not here."""
    query = (
        select(Subscription)
        .where(Subscription.url.not_like("crm://%"))
        .order_by(Subscription.created_at, Subscription.id)
    )
    if enabled is not None:
        query = query.where(Subscription.enabled.is_(enabled))
    return list(session.scalars(query))


def enabled(session: Session) -> list[Subscription]:
    return list(session.scalars(select(Subscription).where(Subscription.enabled.is_(True))))


def any_enabled(session: Session) -> bool:
    """One indexed probe: most requests have no transition to queue for anybody."""
    return bool(_ANY_ENABLED.execute(session, {}))


def add(session: Session, subscription: Subscription) -> None:
    session.add(subscription)
    session.flush()


def delete(session: Session, subscription: Subscription) -> None:
    """Delete with its messages and their attempts (the foreign keys cascade)."""
    session.delete(subscription)
    session.flush()
