"""Which connector class speaks each CRM, and how a connector's configuration is read and checked.

One configuration shape serves the API (``POST /v1/crm/connectors``), the file
(``LEADSCORE_CRM_FILE``, ``leadscore crm apply``) and the command line (``leadscore crm connect``):
:class:`ConnectorSpec`. A bad one is refused with every problem named by its field
(``connectors[1].field_map.colour: ...``), before anything is stored or sent.

Secrets do not belong in a file under version control, so the file form substitutes
``${ENV_VAR}`` from the environment; a variable that is not set is an error naming it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from leadscore_api.crm.base import (
    SYNCED_FIELDS,
    Connector,
    ConnectorConfig,
    CrmKind,
    MemoryTokenCache,
)
from leadscore_api.crm.hubspot import HubSpotConnector
from leadscore_api.crm.pipedrive import PipedriveConnector
from leadscore_api.crm.salesforce import SalesforceConnector
from leadscore_api.crm.zoho import ZohoConnector
from leadscore_api.errors import FieldProblem, InvalidInput, describe_validation

#: The connector class of each CRM. Adding a CRM is one import and one line here.
CONNECTORS: dict[CrmKind, type[Connector]] = {
    "hubspot": HubSpotConnector,
    "salesforce": SalesforceConnector,
    "zoho": ZohoConnector,
    "pipedrive": PipedriveConnector,
}

NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class ConnectorUnavailable(InvalidInput):
    problem_type = "crm-kind-unavailable"
    title = "CRM kind not available"


def connector_class(kind: str) -> type[Connector]:
    """The class for ``kind``; a kind this build has no connector for is a 422 naming ``kind``."""
    found: type[Connector] | None = CONNECTORS.get(kind)  # type: ignore[call-overload]
    if found is None:
        message = (
            f"no connector for {kind!r} in this build; available: "
            f"{', '.join(sorted(CONNECTORS)) or 'none'}"
        )
        raise ConnectorUnavailable.field("kind", message)
    return found


def check_base_url(value: str) -> str:
    """http(s), a host, nothing after the path: the connector appends its own paths to it."""
    value = value.strip()
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise ValueError(f"is not a URL: {exc}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise ValueError("must be an http or https URL, e.g. https://api.hubapi.com")
    if not parts.hostname:
        raise ValueError("must name a host, e.g. https://api.hubapi.com")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or a fragment")
    if parts.username is not None:
        raise ValueError("must not carry credentials; put them in credentials")
    return value.rstrip("/")


class ConnectorSpec(BaseModel):
    """A connector as configured: the API body, an entry of the file, the command's options."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, examples=["hubspot"])
    kind: CrmKind
    base_url: str = Field(max_length=2048, examples=["https://api.hubapi.com"])
    credentials: dict[str, str] = Field(default_factory=dict)
    field_map: dict[str, str] = Field(default_factory=dict)
    owner_map: dict[str, str] = Field(default_factory=dict)
    create_missing: bool = True
    options: dict[str, Any] = Field(default_factory=dict)
    enabled: bool = True

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return check_base_url(value)

    @field_validator("credentials")
    @classmethod
    def _credentials(cls, value: dict[str, str]) -> dict[str, str]:
        for key, secret in value.items():
            if not key.strip() or len(key) > 100:
                raise ValueError(f"{key!r}: a credential name is 1-100 characters")
            if not secret.strip():
                raise ValueError(f"{key}: must not be blank")
        return value

    @field_validator("field_map")
    @classmethod
    def _field_map(cls, value: dict[str, str]) -> dict[str, str]:
        for ours, theirs in value.items():
            if ours not in SYNCED_FIELDS:
                raise ValueError(
                    f"{ours!r} is not a field we write; known: {', '.join(SYNCED_FIELDS)}"
                )
            if not theirs.strip() or len(theirs) > 200:
                raise ValueError(f"{ours}: the CRM field name must be 1-200 characters")
        return value

    @field_validator("owner_map")
    @classmethod
    def _owner_map(cls, value: dict[str, str]) -> dict[str, str]:
        for ours, theirs in value.items():
            if not ours.strip() or not theirs.strip():
                raise ValueError(f"{ours!r}: rep ids and CRM user ids must not be blank")
        return value

    def to_config(self) -> ConnectorConfig:
        return ConnectorConfig(
            name=self.name,
            kind=self.kind,
            base_url=self.base_url,
            credentials=dict(self.credentials),
            field_map=dict(self.field_map),
            owner_map=dict(self.owner_map),
            create_missing=self.create_missing,
            options=dict(self.options),
        )


def parse_spec(data: Any, *, prefix: str = "") -> ConnectorSpec:
    """Validate one connector's configuration; every problem is named by its field."""
    try:
        return ConnectorSpec.model_validate(data)
    except ValidationError as exc:
        problems = describe_validation(exc.errors(), default=prefix or "body", from_request=False)
        if prefix:
            problems = [
                {
                    "field": f"{prefix}.{p['field']}" if p["field"] else prefix,
                    "message": p["message"],
                }
                for p in problems
            ]
        raise InvalidInput.fields(problems) from None


#: Where a connector's complaint about its configuration names the field (``options.object``).
_NAMED_FIELD = re.compile(r"\b((?:options|credentials|field_map|owner_map)\.[A-Za-z0-9_]+)")


def _no_calls(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("a connector must not call its CRM while it is being checked")


def check_connector(spec: ConnectorSpec, *, prefix: str = "") -> None:
    """Build the connector once, as the worker will, so that an option it refuses (Salesforce
    ``options.object: "Foo"``) is a 422 naming ``options.<key>`` when the configuration is
    saved, not a failure of every message later. Nothing is called: the client it gets can
    reach no host and the token cache is a throwaway."""
    cls = connector_class(spec.kind)
    http = httpx.AsyncClient(transport=httpx.MockTransport(_no_calls), trust_env=False)
    try:
        cls(spec.to_config(), http, MemoryTokenCache()).check_config()
    except Exception as exc:
        message = str(exc) or type(exc).__name__
        named = _NAMED_FIELD.search(message)
        field = named.group(1) if named else "options"
        if named and named.start() == 0:
            message = message[named.end() :].lstrip(" :") or message
        if prefix:
            field = f"{prefix}.{field}"
        raise InvalidInput.field(field, message) from None


def substitute_env(text: str, environ: Mapping[str, str], *, where: str = "") -> str:
    """``${NAME}`` replaced by the variable's value; an unset variable is an error naming it."""
    missing: list[str] = []

    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in environ:
            missing.append(name)
            return ""
        return environ[name]

    out = _ENV_REFERENCE.sub(one, text)
    if missing:
        names = ", ".join(sorted(set(missing)))
        raise InvalidInput.field(where or "file", f"environment variable(s) not set: {names}")
    return out


def _substitute(value: Any, environ: Mapping[str, str], where: str) -> Any:
    if isinstance(value, str):
        return substitute_env(value, environ, where=where)
    if isinstance(value, dict):
        return {k: _substitute(v, environ, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, environ, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def parse_file_text(text: str, environ: Mapping[str, str] | None = None) -> list[ConnectorSpec]:
    """The connectors of a YAML file: a list, or ``{connectors: [...]}``; names unique."""
    environ = os.environ if environ is None else environ
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InvalidInput.field("file", f"is not YAML: {exc}") from None
    if isinstance(data, dict) and set(data) == {"connectors"}:
        data = data["connectors"]
    if data is None:
        data = []
    if not isinstance(data, list):
        raise InvalidInput.field("connectors", "must be a list of connectors")
    specs: list[ConnectorSpec] = []
    problems: list[FieldProblem] = []
    for index, entry in enumerate(data):
        where = f"connectors[{index}]"
        try:
            spec = parse_spec(_substitute(entry, environ, where), prefix=where)
            check_connector(spec, prefix=where)
            specs.append(spec)
        except InvalidInput as exc:
            problems.extend(exc.errors or [{"field": where, "message": exc.detail}])
    seen: set[str] = set()
    for index, entry in enumerate(data):
        name = entry.get("name") if isinstance(entry, dict) else None
        if isinstance(name, str) and name in seen:
            problems.append(
                {"field": f"connectors[{index}].name", "message": f"{name!r} is listed twice"}
            )
        if isinstance(name, str):
            seen.add(name)
    if problems:
        raise InvalidInput.fields(problems)
    return specs


def load_file(path: str | Path, environ: Mapping[str, str] | None = None) -> list[ConnectorSpec]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInput.field("file", f"cannot be read: {exc}") from None
    return parse_file_text(text, environ)


def mask(credentials: Mapping[str, str]) -> dict[str, str]:
    """Credentials as the API shows them: enough to tell two apart, never enough to use."""
    return {
        key: "****" + value[-4:] if len(value) >= 16 else "****"
        for key, value in credentials.items()
    }
