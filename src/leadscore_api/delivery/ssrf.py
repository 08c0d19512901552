"""SSRF guard for outbound webhooks.

A subscriber chooses the URL we POST to, so without a guard anyone with ``webhooks:admin`` could
make the service call its own admin ports, the database, or a cloud metadata endpoint. Targets
must be ``http``/``https`` and every address their host resolves to must be public; otherwise
they are refused unless ``LEADSCORE_WEBHOOK_ALLOW_PRIVATE_TARGETS=true``.

The check runs when a subscription is created or updated (a clear answer for the caller) and
again before each send against freshly resolved addresses; the request then goes to the address
that was checked (``pin``), with the original ``Host`` and TLS server name, so a DNS answer that
changes between check and connect (DNS rebinding) cannot point it elsewhere. Redirects are never
followed (the worker's client has ``follow_redirects=False``).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, unquote, urlsplit, urlunsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

ALLOWED_SCHEMES = ("http", "https")
MAX_URL_LENGTH = 2048


class UnsafeTargetError(ValueError):
    """The URL is not one we will send to; the message says why, for the API caller."""


@dataclass(frozen=True)
class Target:
    """A checked URL, split, with its host and port."""

    url: str
    parts: SplitResult
    host: str
    port: int


@dataclass(frozen=True)
class PinnedTarget:
    """Where to connect: the URL rewritten to a checked address, plus ``Host`` and TLS name."""

    url: str
    host_header: str
    sni_hostname: str | None
    #: ``user:password@`` of the subscription URL, sent as HTTP basic auth.
    auth: tuple[str, str] | None = None


def parse_target(url: str) -> Target:
    """Check the URL's form: http(s), a host, no fragment games; raise ``UnsafeTargetError``."""
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeTargetError(f"url is longer than {MAX_URL_LENGTH} characters")
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise UnsafeTargetError(f"url is not valid: {exc}") from exc
    if parts.scheme.lower() not in ALLOWED_SCHEMES:
        raise UnsafeTargetError("url must use http or https")
    host = parts.hostname
    if not host:
        raise UnsafeTargetError("url must name a host")
    if port is None:
        port = 443 if parts.scheme.lower() == "https" else 80
    return Target(url=url.strip(), parts=parts, host=host, port=port)


def address_problem(address: IPAddress) -> str | None:
    """Why ``address`` is not a public unicast address, or ``None`` when it is."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address_problem(address.ipv4_mapped)
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local (cloud metadata lives there)"
    if address.is_private:
        return "private"
    if address.is_multicast:
        return "multicast"
    if address.is_unspecified or address.is_reserved or not address.is_global:
        return "non-public"
    return None


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def check_addresses(host: str, addresses: list[IPAddress], *, allow_private: bool) -> None:
    """Refuse when any resolved address is not public (a host must not straddle both)."""
    if not addresses:
        raise UnsafeTargetError(f"host {host!r} does not resolve")
    if allow_private:
        return
    for address in addresses:
        problem = address_problem(address)
        if problem is not None:
            raise UnsafeTargetError(
                f"host {host!r} resolves to {address}, a {problem} address; set "
                "LEADSCORE_WEBHOOK_ALLOW_PRIVATE_TARGETS=true to allow it"
            )


def _from_getaddrinfo(
    infos: list[tuple[object, object, object, object, tuple[object, ...]]],
) -> list[IPAddress]:
    seen: list[IPAddress] = []
    for info in infos:
        raw = str(info[4][0]).split("%", 1)[0]
        address = ipaddress.ip_address(raw)
        if address not in seen:
            seen.append(address)
    return seen


def resolve(host: str, port: int) -> list[IPAddress]:
    """The addresses ``host`` resolves to now (blocking)."""
    literal = _literal(host)
    if literal is not None:
        return [literal]
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeTargetError(f"host {host!r} does not resolve: {exc}") from exc
    return _from_getaddrinfo(infos)  # type: ignore[arg-type]


async def resolve_async(host: str, port: int) -> list[IPAddress]:
    """The addresses ``host`` resolves to now, without blocking the event loop."""
    literal = _literal(host)
    if literal is not None:
        return [literal]
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnsafeTargetError(f"host {host!r} does not resolve: {exc}") from exc
    return _from_getaddrinfo(infos)  # type: ignore[arg-type]


def validate_url(url: str, *, allow_private: bool) -> str:
    """The check at subscription create/update: form, then every address the host has now."""
    target = parse_target(url)
    check_addresses(target.host, resolve(target.host, target.port), allow_private=allow_private)
    return target.url


def pin(target: Target, address: IPAddress) -> PinnedTarget:
    """Rewrite ``target`` to connect to ``address`` while keeping its Host and TLS server name."""
    host_text = f"[{address}]" if address.version == 6 else str(address)
    netloc = f"{host_text}:{target.port}"
    url = urlunsplit(
        (target.parts.scheme, netloc, target.parts.path or "/", target.parts.query, "")
    )
    default_port = 443 if target.parts.scheme.lower() == "https" else 80
    host_name = f"[{target.host}]" if ":" in target.host else target.host
    host_header = host_name if target.port == default_port else f"{host_name}:{target.port}"
    is_https = target.parts.scheme.lower() == "https"
    sni = target.host if is_https and _literal(target.host) is None else None
    auth = None
    if target.parts.username is not None:
        auth = (unquote(target.parts.username), unquote(target.parts.password or ""))
    return PinnedTarget(url=url, host_header=host_header, sni_hostname=sni, auth=auth)


async def checked_target(url: str, *, allow_private: bool) -> PinnedTarget:
    """The check at send time: parse, resolve now, refuse unsafe addresses, pin the first one."""
    target = parse_target(url)
    addresses = await resolve_async(target.host, target.port)
    check_addresses(target.host, addresses, allow_private=allow_private)
    return pin(target, addresses[0])
