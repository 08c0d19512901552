"""Service settings, read from the environment (prefix ``LEADSCORE_``) or a ``.env`` file.

One object holds every knob so that a replica's behaviour is fully described by its environment:
nothing is kept in the process that another replica would need.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

BUNDLED_RULES_DIR = Path(__file__).resolve().parent / "bundled_rules"

#: Standard-Webhooks-like schedule: now, 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h, 24 h.
DEFAULT_RETRY_DELAYS = (0, 5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="LEADSCORE_", env_file=".env", extra="ignore", populate_by_name=True
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
    webhook_allow_private_targets: bool = False
    delivery_retry_delays: str = ",".join(str(d) for d in DEFAULT_RETRY_DELAYS)
    delivery_timeout_seconds: float = 15.0
    delivery_disable_after_days: float = 5.0
    timer_interval_seconds: float = 60.0
    run_worker: bool = True
    worker_poll_seconds: float = 0.5
    webhook_timestamp_tolerance_seconds: int = 300

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

    @field_validator("max_body_bytes", "max_batch_size")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value <= 0:
            raise ValueError("must be a positive number")
        return value

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
        try:
            delays = tuple(float(part) for part in self.delivery_retry_delays.split(",") if part)
        except ValueError as exc:
            raise ValueError(
                "LEADSCORE_DELIVERY_RETRY_DELAYS must be comma-separated seconds"
            ) from exc
        if not delays or any(d < 0 for d in delays):
            raise ValueError("LEADSCORE_DELIVERY_RETRY_DELAYS must list non-negative seconds")
        return delays


@lru_cache
def get_settings() -> Settings:
    return Settings()
