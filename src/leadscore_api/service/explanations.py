"""History rows' explanations: stored as the values they are built from, rendered when read.

Every visible change of a lead writes a history row, but few rows are ever read. The row
stores :attr:`ScoreResult.explanation_inputs` (marked ``"inputs": 1``), and the read paths
(``GET /v1/leads/{id}/history``, the dashboard's lead page) render the explanation with the
ruleset version that wrote the row, found by its sha256 among the stored versions. Rows
written before this stored the explanation itself; they are served as stored. Either way the
answer is the same text: a rendered explanation is put in the form the row's JSON column
would have given back (see ``storage.base.as_read_back``).
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy.orm import Session

from leadscore_api.scoring import RuleFileError
from leadscore_api.scoring.engine import EXPLANATION_INPUTS
from leadscore_api.service.rulesets import RulesetRegistry
from leadscore_api.storage.base import as_read_back

#: What a row shows when the ruleset version that wrote it is not stored (never the case for
#: rows the service wrote: every version it scores with is stored first).
UNAVAILABLE = "the ruleset version that wrote this change is not stored: no explanation"
NOT_RENDERED = "this release cannot render the explanation stored with this change"
log = logging.getLogger("leadscore.explanations")


def is_inputs(stored: dict[str, Any]) -> bool:
    """Whether a row's ``explanation`` column holds inputs to render (else: the explanation)."""
    return stored.get("inputs") == EXPLANATION_INPUTS


def render(
    session: Session,
    registry: RulesetRegistry,
    ruleset_name: str,
    ruleset_sha256: str,
    stored: dict[str, Any],
) -> dict[str, Any]:
    """The explanation of one history row, as the row would have stored it."""
    if not is_inputs(stored):
        return stored
    try:
        loaded = registry.stored(session, ruleset_name, ruleset_sha256)
        if loaded is None:
            return {"unavailable": UNAVAILABLE}
        explanation = loaded.scorer.render_explanation(stored)
    except (RuleFileError, LookupError, TypeError, ValueError):
        # A stored text this release cannot load, or inputs it cannot read: the history
        # stays readable, the row says why it has no explanation, and the log has the cause.
        log.exception("cannot render the explanation of a history row of %s", ruleset_name)
        return {"unavailable": NOT_RENDERED}
    because = stored.get("because")
    if because is not None:
        explanation["because"] = because
    rendered: dict[str, Any] = as_read_back(explanation, session.get_bind().dialect.name)
    return rendered
