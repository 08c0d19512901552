"""What the dashboard's pages show: the report, the queue of hot leads, a lead's timeline.

The figures are the reports service's own (:mod:`leadscore_api.service.reports`), so the
dashboard and ``/v1/reports`` never disagree; this module adds the two things only the
dashboard shows: who to call today, and how one lead's score moved.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy.orm import Session

from leadscore_api.service import explanations, reports
from leadscore_api.service.leads import get_lead
from leadscore_api.service.report_cache import ReportCache
from leadscore_api.service.rulesets import RulesetRegistry
from leadscore_api.storage.base import utcnow
from leadscore_api.storage.models import Lead
from leadscore_api.storage.repositories import dashboard as dashboard_repo
from leadscore_api.storage.repositories.dashboard import TimelineRow

#: The longest queue shown: a day's calls, not a lead list (that is what the API is for).
QUEUE_LIMIT = 50
#: The changes a lead page draws; a lead scored more often shows its latest ones.
TIMELINE_LIMIT = 500


@dataclass(frozen=True)
class QueueItem:
    lead: Lead
    #: The next action's due time, else the lead's next open deadline (follow-up, SLA).
    due: datetime | None
    overdue: bool


@dataclass(frozen=True)
class Overview:
    report: reports.Report
    queue: list[QueueItem]
    hot_tier: str | None
    now: datetime
    #: When the report's figures were computed (cached reports are up to a minute old).
    computed_at: datetime


def _hot_tier(registry: RulesetRegistry, model: str) -> str | None:
    """The model's highest tier (``hot`` in the bundled rules)."""
    tiers = registry.rulesets[model].ruleset.tiers
    return max(tiers, key=lambda name: tiers[name]) if tiers else None


def overview(
    session: Session,
    registry: RulesetRegistry,
    query: reports.ReportFilter,
    now: datetime | None = None,
    cache: ReportCache | None = None,
) -> Overview:
    now = now or utcnow()
    if cache is not None:
        cached = cache.report(session, registry, query)
        report, computed_at = cached.report, cached.computed_at
    else:
        report, computed_at = reports.build_report(session, registry, query, now=now), now
    tier = _hot_tier(registry, query.model)
    leads = dashboard_repo.hot_leads(
        session,
        tier=tier or "",
        stage=report.sql_stage or "",
        owner=query.owner,
        limit=QUEUE_LIMIT,
    )
    queue = [
        QueueItem(lead=lead, due=due, overdue=due is not None and due < now) for lead, due in leads
    ]
    return Overview(report=report, queue=queue, hot_tier=tier, now=now, computed_at=computed_at)


@dataclass(frozen=True)
class LeadPage:
    lead: Lead
    model: str
    timeline: list[TimelineRow]


def lead_page(session: Session, registry: RulesetRegistry, lead_id: str) -> LeadPage:
    """The lead (LeadNotFound if none) and its changes under the primary model."""
    lead = get_lead(session, lead_id)
    model = registry.primary_name
    timeline = [
        replace(
            row,
            explanation=explanations.render(
                session, registry, row.ruleset_name, row.ruleset_sha256, row.explanation
            ),
        )
        for row in dashboard_repo.timeline(session, lead.id, model, TIMELINE_LIMIT)
    ]
    return LeadPage(lead=lead, model=model, timeline=timeline)
