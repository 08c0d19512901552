"""Re-scoring every lead under the active rulesets, one chunk of leads per transaction.

After an activation, leads keep the scores the old version gave them until their next event.
A re-score walks all leads in id order and scores each from its stored events under the
active versions (``score_lead`` replays a lead whose stored state came from another ruleset
text, and only evaluates the others as of now). Each chunk is one transaction that also moves
the job's cursor past its last lead, under a lock on the job row: a worker killed mid-chunk
leaves nothing of that chunk behind, and the next one starts right after the last committed
chunk, so no lead is re-scored twice by the same job and none is skipped. Running it again
changes nothing: a lead already scored by the active text shows no change, so gets no history.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from leadscore_api.service.rulesets import RulesetRegistry
from leadscore_api.service.scoring import PendingWrites, score_lead
from leadscore_api.storage.lifecycle_models import JOB_DONE, JOB_OPEN, Job
from leadscore_api.storage.repositories import jobs as jobs_repo
from leadscore_api.storage.repositories import leads as leads_repo

#: How long a worker's hold on a job lasts without progress before another may take it over.
LEASE = timedelta(seconds=60)
#: The history cause of changes a re-score makes.
CAUSE = "rescore"


class LeaseLost(Exception):
    """Another worker took the job over (or it was finished or replaced): stop working on it."""


def rescore_chunk(
    session: Session,
    registry: RulesetRegistry,
    job_id: str,
    owner: str,
    chunk_size: int,
    now: datetime,
) -> Job:
    """Re-score the next ``chunk_size`` leads of the job and advance its cursor past them."""
    job = jobs_repo.lock(session, job_id)
    if job is None or job.status not in JOB_OPEN or job.lease_owner != owner:
        raise LeaseLost(job_id)
    ids = jobs_repo.lead_ids_after(session, job.cursor, chunk_size)
    job.updated_at = now
    if not ids:
        job.status = JOB_DONE
        job.finished_at = now
        job.lease_owner = None
        job.lease_until = None
        job.total = job.done
        return job
    leads = leads_repo.lock_leads(session, ids)
    scores = leads_repo.load_scores(session, leads)
    pending = PendingWrites()
    if not job.params.get("emit_webhooks", False):
        # Nothing goes to the outbox: the caller did not ask for webhooks.
        pending.has_subscriptions = False
    for lead_id, lead in leads.items():
        score_lead(session, registry, lead, scores[lead_id], [], now, pending, cause=CAUSE)
    pending.write(session)
    job.cursor = ids[-1]
    job.done += len(ids)
    job.total = max(job.total or 0, job.done)
    job.lease_until = now + LEASE
    return job
