"""Service settings, read from the environment (prefix ``LEADSCORE_``) or a ``.env`` file.

One object holds every knob so that a replica's behaviour is fully described by its environment:
nothing is kept in the process that another replica would need.

Every value is checked when the object is built: a typo in a deployment should stop the service
as it starts, naming the variable, rather than surface as a failed delivery or a 500 hours later.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from limits import parse_many
from pydantic import Field, PrivateAttr, ValidationError, ValidationInfo, field_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url

from leadscore_api.ingest.attributes import parse_field_map
from leadscore_api.ingest.sources.sendgrid import load_public_key

BUNDLED_RULES_DIR = Path(__file__).resolve().parent / "bundled_rules"

#: Standard-Webhooks-like schedule: now, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h.
DEFAULT_RETRY_DELAYS = (0, 5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)

_ENV_PREFIX = "LEADSCORE_"

_WEBHOOK_SECRETS = (
    "webhook_sendgrid_secret",
    "webhook_mailgun_secret",
    "webhook_mailchimp_secret",
    "webhook_mandrill_secret",
    "webhook_postmark_secret",
    "webhook_brevo_secret",
    "webhook_typeform_secret",
    "webhook_form_secret",
)


def _env_name(field: str) -> str:
    """The variable an operator sets, which is what an error message must point them to."""
    return f"{_ENV_PREFIX}{field.upper()}"


def _parse_retry_delays(text: str) -> tuple[float, ...]:
    """The schedule as seconds; messages leave out the variable name so each caller can add it."""
    try:
        delays = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ValueError(
            "must be comma-separated seconds, e.g. 0,5,300 (a part is not a number)"
        ) from None
    if not delays:
        raise ValueError("must list at least one delay in seconds, e.g. 0,5,300")
    if not all(math.isfinite(d) and d >= 0 for d in delays):
        raise ValueError("must list non-negative, finite seconds")
    return delays


def _without_name(message: str, name: str) -> str:
    """Drop a leading variable name that a reused parser put in, so it is not said twice."""
    if message.startswith(name):
        return message[len(name) :].lstrip(" :") or message
    return message


class SettingsError(Exception):
    """Settings that cannot run the service, with one line per bad variable.

    A separate type from pydantic's ``ValidationError`` so that callers at start-up can print
    the message as it is: it names the environment variables and never carries their values,
    which may be secrets.
    """

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("invalid settings:\n" + "\n".join(self.problems))


class Settings(BaseSettings):
    # hide_input_in_errors: callers that build Settings() directly get pydantic's error, and
    # its text would otherwise repeat the bad value, which may be a secret or a database password.
    model_config = SettingsConfigDict(
        env_prefix=_ENV_PREFIX,
        env_file=".env",
        extra="ignore",
        populate_by_name=True,
        hide_input_in_errors=True,
    )

    database_url: str = "sqlite:///./leadscore.db"
    rules_dir: Path | None = Field(
        default=None,
        description="Folder of ruleset files; default ./rules when it exists, else the bundled rules.",
    )
    primary_ruleset: str = "pmi-letter-score"
    admin_api_key: str | None = None
    max_body_bytes: int = 1024 * 1024
    max_batch_size: int = 1000
    #: Bodies of ``POST /v1/leads/import`` (a spreadsheet, spooled to a temporary file).
    max_import_bytes: int = 50 * 1024 * 1024
    webhook_allow_private_targets: bool = False
    delivery_retry_delays: str = ",".join(str(d) for d in DEFAULT_RETRY_DELAYS)
    delivery_timeout_seconds: float = 15.0
    delivery_disable_after_days: float = 5.0
    timer_interval_seconds: float = 60.0
    run_worker: bool = True
    #: Sync ``directory/reps.yaml`` of the rules folder in force into the rep directory at
    #: start-up (the bundled folder's file included, so routing reaches a person out of the box).
    sync_rep_directory: bool = True
    worker_poll_seconds: float = 0.5
    #: How old the dashboard's figures may be: each view's report is computed at most once in
    #: this many seconds per process and kept warm while in use (0: computed on every load).
    dashboard_cache_seconds: float = 60.0
    #: The access log, one line per request with its id, route, status and time (off:
    #: /metrics still counts every request). Never the query string: emails and tokens go there.
    access_log: bool = True
    #: ``json`` (one object a line, for a log pipeline) or ``console`` (readable text).
    log_format: Literal["json", "console"] = "json"
    #: The lowest level written: DEBUG, INFO, WARNING, ERROR or CRITICAL.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    #: Writer threads that run ingest requests together (group commit). Unset: one on SQLite
    #: (it has a single writer anyway), two on PostgreSQL, where the second takes a group only
    #: while a batch's worth of events waits (``service/group_commit.py``).
    ingest_writers: int | None = None
    #: Events one shared ingest transaction takes at most.
    ingest_group_events: int = 1000
    #: How long a verified API key is trusted without asking the database again. A key revoked
    #: on another replica stops working there within this time (at once on this one).
    api_key_cache_seconds: float = 5.0
    #: How often a replica asks the database whether another ruleset version was activated.
    ruleset_refresh_seconds: float = 2.0
    #: How long a dashboard sign-in lasts before the browser must sign in again.
    dashboard_session_hours: float = 8.0
    #: How often ``serve`` and ``worker`` look for background jobs (re-scores) to run.
    job_poll_seconds: float = 2.0
    webhook_timestamp_tolerance_seconds: int = 300
    #: How often each enabled CRM connector's recent changes are pulled (0: never; the CRM's
    #: notifications then bring every outcome).
    crm_pull_seconds: float = 300.0
    #: A YAML list of CRM connectors applied (upserted by name) at start-up.
    crm_file: Path | None = None
    #: Requests one API key may make, e.g. ``600/minute`` (several: ``10/second;600/minute``);
    #: empty: no limit. Counted per key across every replica when ``redis_url`` is set.
    rate_limit_api: str = ""
    #: Requests one inbound webhook source may make (``1200/minute``); empty: no limit.
    rate_limit_webhooks: str = ""
    #: Redis shared by the replicas for the rate-limit counters (``redis://host:6379/0``); unset:
    #: each process counts for itself.
    redis_url: str | None = None
    #: Prefix of every key written to Redis, so deployments can share one server.
    redis_key_prefix: str = "leadscore"

    webhook_sendgrid_secret: str | None = None
    webhook_mailgun_secret: str | None = None
    webhook_mailchimp_secret: str | None = None
    webhook_mandrill_secret: str | None = None
    webhook_mandrill_url: str | None = None
    webhook_postmark_secret: str | None = None
    webhook_brevo_secret: str | None = None
    webhook_typeform_secret: str | None = None
    webhook_form_secret: str | None = None
    webhook_form_field_map: str | None = None
    webhook_typeform_field_map: str | None = None

    # The parsed schedule with the text it came from: the worker asks for it on every delivery,
    # and a ``model_copy(update=...)`` (not validated) must not be answered with a stale one.
    _retry_schedule: tuple[str, tuple[float, ...]] | None = PrivateAttr(default=None)

    @field_validator(
        "max_body_bytes",
        "max_import_bytes",
        "max_batch_size",
        "delivery_timeout_seconds",
        "delivery_disable_after_days",
        "timer_interval_seconds",
        "worker_poll_seconds",
        "webhook_timestamp_tolerance_seconds",
        "ingest_group_events",
        "ruleset_refresh_seconds",
        "job_poll_seconds",
    )
    @classmethod
    def _positive(cls, value: float) -> float:
        # NaN compares false both ways and infinity would park a timer forever: refuse both.
        if not value > 0 or (isinstance(value, float) and not math.isfinite(value)):
            raise ValueError("must be a positive number")
        return value

    @field_validator("rate_limit_api", "rate_limit_webhooks")
    @classmethod
    def _rates_parse(cls, value: str) -> str:
        if value.strip():
            try:
                parse_many(value)
            except ValueError:
                raise ValueError(
                    "must be rates such as 600/minute (several: 10/second;600/minute), or empty"
                ) from None
        return value.strip()

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            return None
        if value is not None and not value.startswith(("redis://", "rediss://", "redis+unix://")):
            raise ValueError("must be a redis:// or rediss:// URL, e.g. redis://127.0.0.1:6379/0")
        return value

    @field_validator("ingest_writers")
    @classmethod
    def _writers_in_range(cls, value: int | None) -> int | None:
        if value is not None and not 1 <= value <= 32:
            raise ValueError("must be a whole number from 1 to 32")
        return value

    @field_validator("dashboard_session_hours")
    @classmethod
    def _session_hours(cls, value: float) -> float:
        if not (math.isfinite(value) and 0 < value <= 720):
            raise ValueError("must be hours, more than 0 and at most 720 (30 days)")
        return value

    @field_validator("api_key_cache_seconds", "dashboard_cache_seconds")
    @classmethod
    def _cache_seconds(cls, value: float) -> float:
        if not (math.isfinite(value) and 0 <= value <= 3600):
            raise ValueError("must be seconds from 0 (no cache) to 3600")
        return value

    @field_validator("delivery_retry_delays")
    @classmethod
    def _retry_delays_parse(cls, value: str) -> str:
        _parse_retry_delays(value)
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url_parses(cls, value: str) -> str:
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            make_url(value)
        except (ArgumentError, ValueError, TypeError):
            # The URL may hold a password: say what is wrong, never what was given.
            raise ValueError(
                "is not a database URL SQLAlchemy can read, e.g. sqlite:///./leadscore.db "
                "or postgresql+psycopg://user:password@host/dbname"
            ) from None
        return value

    @field_validator("primary_ruleset")
    @classmethod
    def _ruleset_named(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must name a ruleset")
        return value

    @field_validator("rules_dir", mode="before")
    @classmethod
    def _rules_dir_not_blank(cls, value: Any) -> Any:
        # Path("") is ".", which exists: without this an empty variable would quietly mean cwd.
        if isinstance(value, str) and not value.strip():
            raise ValueError(
                "must name an existing folder (unset it to use ./rules or the bundled rules)"
            )
        return value

    @field_validator("rules_dir")
    @classmethod
    def _rules_dir_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(
                "must name an existing folder (unset it to use ./rules or the bundled rules)"
            )
        return value

    @field_validator("crm_pull_seconds")
    @classmethod
    def _pull_seconds(cls, value: float) -> float:
        if not (math.isfinite(value) and value >= 0):
            raise ValueError("must be 0 (no pull) or a positive number of seconds")
        return value

    @field_validator("crm_file")
    @classmethod
    def _crm_file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError("must name an existing YAML file of CRM connectors")
        return value

    @field_validator("webhook_form_field_map", "webhook_typeform_field_map")
    @classmethod
    def _field_map_parses(cls, value: str | None, info: ValidationInfo) -> str | None:
        name = _env_name(str(info.field_name))
        try:
            parse_field_map(value, name)
        except ValueError as exc:
            raise ValueError(_without_name(str(exc), name)) from None
        return value

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _log_case(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, str):
            return value
        return value.strip().upper() if info.field_name == "log_level" else value.strip().lower()

    @field_validator(*_WEBHOOK_SECRETS)
    @classmethod
    def _secret_not_blank(cls, value: str | None) -> str | None:
        # Unset means "source not configured"; set but blank is a deployment mistake.
        if value is not None and not value.strip():
            raise ValueError("is set but blank (unset it to leave the source unconfigured)")
        return value

    @field_validator("webhook_sendgrid_secret")
    @classmethod
    def _sendgrid_key_loads(cls, value: str | None) -> str | None:
        if value is None:
            return value
        name = _env_name("webhook_sendgrid_secret")
        try:
            load_public_key(value)
        except Exception as exc:
            # Any failure means no request could ever be verified. The loader's own sentences
            # name the variable; anything else (a raw cryptography error) gets a plain one.
            message = str(exc)
            if not message.startswith(name):
                message = "is not a base64 DER ECDSA P-256 public key"
            raise ValueError(_without_name(message, name)) from None
        return value

    def model_post_init(self, context: Any, /) -> None:
        super().model_post_init(context)
        text = self.delivery_retry_delays
        try:
            self._retry_schedule = (text, _parse_retry_delays(text))
        except ValueError:
            # Only reachable through model_construct(), which skips validation: parse on demand.
            self._retry_schedule = None

    def writer_threads(self) -> int:
        """Group-commit writers in force (see ``ingest_writers``)."""
        if self.ingest_writers is not None:
            return self.ingest_writers
        return 1 if make_url(self.database_url).get_backend_name() == "sqlite" else 2

    def resolved_rules_dir(self) -> Path:
        """The rules folder in force: explicit setting, else ./rules, else the bundled rules."""
        if self.rules_dir is not None:
            return self.rules_dir
        local = Path("rules")
        if local.is_dir():
            return local
        return BUNDLED_RULES_DIR

    def retry_delays(self) -> tuple[float, ...]:
        """The delivery schedule in seconds after the first attempt is due."""
        text = self.delivery_retry_delays
        if self._retry_schedule is None or self._retry_schedule[0] != text:
            try:
                delays = _parse_retry_delays(text)
            except ValueError as exc:
                raise ValueError(f"{_env_name('delivery_retry_delays')} {exc}") from exc
            self._retry_schedule = (text, delays)
        return self._retry_schedule[1]


def _describe(error: ErrorDetails) -> str:
    """One line for one pydantic error, in the operator's terms and without the input value."""
    loc = error["loc"]
    name = _env_name(str(loc[0])) if loc else "settings"
    ctx = error.get("ctx") or {}
    if error["type"] == "value_error" and "error" in ctx:
        message = str(ctx["error"])
    else:
        message = error["msg"].removeprefix("Value error, ")
    return f"{name}: {message}"


def load_settings(**overrides: Any) -> Settings:
    """The settings, or a ``SettingsError`` fit to print at start-up.

    pydantic's own message speaks of field names and repeats each bad value; an operator needs
    the variable to fix, and a secret must not end up in a log. The ``ValidationError`` is not
    chained for the same reason: a traceback would print it.
    """
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = [
            _describe(error) for error in exc.errors(include_url=False, include_input=False)
        ]
        raise SettingsError(problems) from None


@lru_cache
def get_settings() -> Settings:
    return load_settings()
