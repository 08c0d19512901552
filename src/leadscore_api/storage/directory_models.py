"""Tables of the rep directory: the sales reps leads are routed to, and each team's strategy.

Routing rules in the ruleset files pick a *team* for a lead (``result.owner``); the directory
says who is in each team and which one of them gets the lead (``service.reps``). A rep comes
from the directory file (``source = "file"``, kept in step with it at start-up) or from the API
(``source = "api"``, never touched by a file sync).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from leadscore_api.storage.base import Base, JSONType, utcnow

SOURCE_FILE = "file"
SOURCE_API = "api"

STRATEGY_ROUND_ROBIN = "round_robin"
STRATEGY_LEAST_OPEN = "least_open"
STRATEGIES = (STRATEGY_ROUND_ROBIN, STRATEGY_LEAST_OPEN)

#: The ``rep_teams`` row that holds the directory-wide strategy (team names never contain ``*``).
DIRECTORY_WIDE = "*"


class Rep(Base):
    """A sales rep: the team they are in, what leads they take, and how many at once."""

    __tablename__ = "reps"

    #: Chosen by the directory file (``giulia.bianchi``) or generated (``rep_01J...``).
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(320), default=None)
    #: A routing rule's ``owner`` (``north-team``).
    team: Mapped[str] = mapped_column(String(200))
    #: Expertise: the industries the rep takes (empty = any), as written; compared casefolded.
    industries: Mapped[list[str]] = mapped_column(JSONType, default=list)
    #: The regions the rep covers (empty = any), as written; compared casefolded.
    regions: Mapped[list[str]] = mapped_column(JSONType, default=list)
    min_employees: Mapped[int] = mapped_column(Integer, default=0)
    #: None: no upper bound.
    max_employees: Mapped[int | None] = mapped_column(Integer, default=None)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    #: Open leads the rep may own at once; None: unlimited.
    capacity: Mapped[int | None] = mapped_column(Integer, default=None)
    #: When the rep last got a lead: round-robin serves the oldest first.
    last_assigned_at: Mapped[datetime | None] = mapped_column(default=None)
    #: ``file`` or ``api``: a file sync only deactivates reps it once created or adopted.
    source: Mapped[str] = mapped_column(String(10), default=SOURCE_API)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    __table_args__ = (Index("ix_reps_team_active", "team", "active"),)


class RepTeam(Base):
    """How a team hands out its leads: ``round_robin`` or ``least_open``.

    The row of team ``*`` is the directory-wide default; a team without a row uses it, and
    without that row too, round-robin.
    """

    __tablename__ = "rep_teams"

    team: Mapped[str] = mapped_column(String(200), primary_key=True)
    strategy: Mapped[str] = mapped_column(String(20))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
