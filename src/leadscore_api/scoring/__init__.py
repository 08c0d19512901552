"""The pure scoring core: rule models, loader, engine, explanations.

Nothing here imports FastAPI, SQLAlchemy, a network library or the settings (an import-linter
contract checks it): the core runs with Python, pydantic and PyYAML alone, so rule authors,
tests and backtests use exactly the code the service runs.
"""

from leadscore_api.scoring.engine import (
    LeadState,
    OutOfOrderEvent,
    Scorer,
    ScoreResult,
    ScoringEvent,
    Transition,
    transitions_between,
)
from leadscore_api.scoring.loader import (
    LoadedRuleset,
    Problem,
    RuleFileError,
    load_rules_dir,
    load_ruleset_file,
    load_ruleset_paths,
    load_ruleset_text,
)
from leadscore_api.scoring.model import Ruleset

__all__ = [
    "LeadState",
    "LoadedRuleset",
    "OutOfOrderEvent",
    "Problem",
    "RuleFileError",
    "Ruleset",
    "ScoreResult",
    "Scorer",
    "ScoringEvent",
    "Transition",
    "load_rules_dir",
    "load_ruleset_file",
    "load_ruleset_paths",
    "load_ruleset_text",
    "transitions_between",
]
