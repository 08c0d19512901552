"""Settings are checked as they load: a bad variable stops the service at start, by name."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import ValidationError

from leadscore_api.config import (
    DEFAULT_RETRY_DELAYS,
    Settings,
    SettingsError,
    get_settings,
    load_settings,
)

SECRETS = (
    "SENDGRID",
    "MAILGUN",
    "MAILCHIMP",
    "MANDRILL",
    "POSTMARK",
    "BREVO",
    "TYPEFORM",
    "FORM",
)
POSITIVE = (
    "MAX_BODY_BYTES",
    "MAX_BATCH_SIZE",
    "DELIVERY_TIMEOUT_SECONDS",
    "TIMER_INTERVAL_SECONDS",
    "WORKER_POLL_SECONDS",
    "WEBHOOK_TIMESTAMP_TOLERANCE_SECONDS",
    "DELIVERY_DISABLE_AFTER_DAYS",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No ``.env`` in the working folder and no LEADSCORE_* variable from the shell."""
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.upper().startswith("LEADSCORE_"):
            monkeypatch.delenv(name)


def failure(monkeypatch: pytest.MonkeyPatch, **env: str) -> SettingsError:
    """The error ``load_settings`` raises with ``env`` set (names without the prefix)."""
    for name, value in env.items():
        monkeypatch.setenv(f"LEADSCORE_{name}", value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    return info.value


def public_key_b64(curve: ec.EllipticCurve) -> str:
    key = ec.generate_private_key(curve).public_key()
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return base64.b64encode(der).decode()


# --- what loads --------------------------------------------------------------------------------


def test_defaults_load() -> None:
    settings = load_settings()
    assert isinstance(settings, Settings)
    assert settings.retry_delays() == tuple(float(d) for d in DEFAULT_RETRY_DELAYS)
    assert settings.database_url == "sqlite:///./leadscore.db"
    assert settings.primary_ruleset == "pmi-letter-score"
    assert settings.rules_dir is None
    assert settings.webhook_sendgrid_secret is None
    assert settings.max_body_bytes == 1024 * 1024


def test_a_good_retry_schedule_gives_its_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADSCORE_DELIVERY_RETRY_DELAYS", "0, 2.5,60,")
    settings = load_settings()
    assert settings.retry_delays() == (0.0, 2.5, 60.0)
    assert settings.retry_delays() is settings.retry_delays()


def test_a_copied_schedule_is_not_answered_from_the_original() -> None:
    settings = load_settings(delivery_retry_delays="1,2")
    copy = settings.model_copy(update={"delivery_retry_delays": "7"})
    assert copy.retry_delays() == (7.0,)
    assert settings.retry_delays() == (1.0, 2.0)
    broken = settings.model_copy(update={"delivery_retry_delays": "x"})
    with pytest.raises(ValueError, match="LEADSCORE_DELIVERY_RETRY_DELAYS"):
        broken.retry_delays()


def test_good_values_load(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    rules = tmp_path / "my-rules"
    rules.mkdir()
    sendgrid_key = public_key_b64(ec.SECP256R1())
    env = {
        "DATABASE_URL": "postgresql+psycopg://user:pw@db.example:5432/leads",
        "RULES_DIR": str(rules),
        "PRIMARY_RULESET": "bant",
        "DELIVERY_TIMEOUT_SECONDS": "0.5",
        "WEBHOOK_SENDGRID_SECRET": sendgrid_key,
        "WEBHOOK_FORM_SECRET": "token",
        "WEBHOOK_FORM_FIELD_MAP": "ruolo=role, n_dip=employees",
        "WEBHOOK_TYPEFORM_FIELD_MAP": '{"job": "role"}',
    }
    for name, value in env.items():
        monkeypatch.setenv(f"LEADSCORE_{name}", value)
    settings = load_settings()
    assert settings.rules_dir == rules
    assert settings.webhook_sendgrid_secret == sendgrid_key
    assert settings.delivery_timeout_seconds == 0.5
    assert settings.webhook_form_field_map == "ruolo=role, n_dip=employees"


def test_a_pem_sendgrid_key_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    monkeypatch.setenv("LEADSCORE_WEBHOOK_SENDGRID_SECRET", pem)
    assert load_settings().webhook_sendgrid_secret == pem


def test_overrides_are_checked_too() -> None:
    with pytest.raises(SettingsError) as info:
        load_settings(max_batch_size=0)
    assert info.value.problems == ("LEADSCORE_MAX_BATCH_SIZE: must be a positive number",)


# --- what stops the service --------------------------------------------------------------------


@pytest.mark.parametrize("value", ["", " , ", "abc", "0;5", "5,-1", "1,nan", "0,inf"])
def test_a_bad_retry_schedule_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    error = failure(monkeypatch, DELIVERY_RETRY_DELAYS=value)
    assert len(error.problems) == 1
    assert error.problems[0].startswith("LEADSCORE_DELIVERY_RETRY_DELAYS: must ")


@pytest.mark.parametrize("name", POSITIVE)
@pytest.mark.parametrize("value", ["0", "-1"])
def test_non_positive_numbers_are_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    error = failure(monkeypatch, **{name: value})
    assert error.problems == (f"LEADSCORE_{name}: must be a positive number",)


@pytest.mark.parametrize(
    "name",
    ["DELIVERY_TIMEOUT_SECONDS", "TIMER_INTERVAL_SECONDS", "WORKER_POLL_SECONDS"],
)
@pytest.mark.parametrize("value", ["nan", "inf"])
def test_endless_or_undefined_seconds_are_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    error = failure(monkeypatch, **{name: value})
    assert error.problems == (f"LEADSCORE_{name}: must be a positive number",)


def test_a_number_that_is_not_a_number_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    error = failure(monkeypatch, MAX_BODY_BYTES="lots")
    assert len(error.problems) == 1
    assert error.problems[0].startswith("LEADSCORE_MAX_BODY_BYTES: ")


@pytest.mark.parametrize(
    "value", ["", "not a url", "postgresql+psycopg://user:hunter2@db:notaport/leads"]
)
def test_an_unreadable_database_url_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    error = failure(monkeypatch, DATABASE_URL=value)
    assert len(error.problems) == 1
    assert error.problems[0].startswith("LEADSCORE_DATABASE_URL: is not a database URL")
    assert "hunter2" not in str(error)


@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_primary_ruleset_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    error = failure(monkeypatch, PRIMARY_RULESET=value)
    assert error.problems == ("LEADSCORE_PRIMARY_RULESET: must name a ruleset",)


def test_a_missing_rules_dir_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    error = failure(monkeypatch, RULES_DIR=str(tmp_path / "missing"))
    assert len(error.problems) == 1
    assert error.problems[0].startswith("LEADSCORE_RULES_DIR: must name an existing folder")


def test_a_rules_dir_that_is_a_file_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    a_file = tmp_path / "rules.yaml"
    a_file.write_text("rules: []\n")
    error = failure(monkeypatch, RULES_DIR=str(a_file))
    assert error.problems[0].startswith("LEADSCORE_RULES_DIR: must name an existing folder")


def test_an_empty_rules_dir_is_not_the_working_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    error = failure(monkeypatch, RULES_DIR="")
    assert error.problems[0].startswith("LEADSCORE_RULES_DIR: must name an existing folder")


@pytest.mark.parametrize("name", ["WEBHOOK_FORM_FIELD_MAP", "WEBHOOK_TYPEFORM_FIELD_MAP"])
@pytest.mark.parametrize("value", ["{oops", '{"job": 1}', "ruolo", "=role"])
def test_an_unreadable_field_map_is_refused(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    error = failure(monkeypatch, **{name: value})
    assert len(error.problems) == 1
    line = error.problems[0]
    assert line.startswith(f"LEADSCORE_{name}: ")
    assert line.count(f"LEADSCORE_{name}") == 1


@pytest.mark.parametrize("source", SECRETS)
@pytest.mark.parametrize("value", ["", "   ", "\t"])
def test_a_blank_webhook_secret_is_refused(
    monkeypatch: pytest.MonkeyPatch, source: str, value: str
) -> None:
    error = failure(monkeypatch, **{f"WEBHOOK_{source}_SECRET": value})
    assert len(error.problems) == 1
    assert error.problems[0].startswith(f"LEADSCORE_WEBHOOK_{source}_SECRET: is set but blank")


@pytest.mark.parametrize(
    "value",
    [
        "not base64!",
        base64.b64encode(b"sixteen byte key").decode(),
        public_key_b64(ec.SECP384R1()),
    ],
)
def test_a_sendgrid_secret_that_is_not_its_public_key_is_refused(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    error = failure(monkeypatch, WEBHOOK_SENDGRID_SECRET=value)
    assert len(error.problems) == 1
    line = error.problems[0]
    assert line.startswith("LEADSCORE_WEBHOOK_SENDGRID_SECRET: is not ")
    assert line.count("LEADSCORE_WEBHOOK_SENDGRID_SECRET") == 1


# --- how it is said ----------------------------------------------------------------------------


def test_a_secret_value_is_not_in_the_message(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = base64.b64encode(b"s3cret-value-do-not-log").decode()
    error = failure(monkeypatch, WEBHOOK_SENDGRID_SECRET=secret)
    assert "LEADSCORE_WEBHOOK_SENDGRID_SECRET" in str(error)
    assert secret not in str(error)
    assert secret not in repr(error)
    # pydantic's error repeats the input: it must not travel along to be printed in a traceback.
    assert error.__cause__ is None
    assert error.__suppress_context__


def test_each_problem_gets_its_own_line(monkeypatch: pytest.MonkeyPatch) -> None:
    error = failure(
        monkeypatch,
        DELIVERY_RETRY_DELAYS="soon",
        MAX_BATCH_SIZE="0",
        WEBHOOK_MAILGUN_SECRET=" ",
    )
    lines = str(error).splitlines()
    assert lines[0] == "invalid settings:"
    assert len(lines[1:]) == 3
    assert {line.split(":")[0] for line in lines[1:]} == {
        "LEADSCORE_DELIVERY_RETRY_DELAYS",
        "LEADSCORE_MAX_BATCH_SIZE",
        "LEADSCORE_WEBHOOK_MAILGUN_SECRET",
    }
    assert "Value error" not in str(error)
    assert list(error.problems) == lines[1:]


def test_a_dotenv_file_is_checked(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("LEADSCORE_WORKER_POLL_SECONDS=0\n")
    with pytest.raises(SettingsError, match="LEADSCORE_WORKER_POLL_SECONDS: must be a positive"):
        load_settings()


def test_get_settings_stops_with_the_variable_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADSCORE_MAX_BODY_BYTES", "0")
    get_settings.cache_clear()
    try:
        with pytest.raises(SettingsError, match="LEADSCORE_MAX_BODY_BYTES"):
            get_settings()
    finally:
        get_settings.cache_clear()


def test_pydantic_errors_from_settings_do_not_repeat_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Callers that still build ``Settings()`` directly must not print a secret either."""
    monkeypatch.setenv("LEADSCORE_DATABASE_URL", "postgresql://user:hunter2@db:notaport/leads")
    with pytest.raises(ValidationError) as info:
        Settings()
    assert "database_url" in str(info.value)
    assert "hunter2" not in str(info.value)
