"""The SSRF guard for every outgoing connection a tenant can aim (docs/security.md, HIGH 4/5).

Tenants choose URLs and hosts (webhook targets, provider `base_url`s, FCM's `token_uri`, SMTP
hosts, Apprise URLs), so without a guard a tenant could point our workers at our own network.
The rule: a target host is resolved once, every address it resolves to must be public
(`is_public`), and the connection goes to one of those checked addresses, never to a second
lookup's answer, so a DNS answer that changes between check and connect (rebinding) cannot
redirect it.

- HTTP: `guarded_client` builds an httpx client whose httpcore network backend resolves,
  checks and connects (`GuardedBackend.connect_tcp`). httpcore still passes the URL's host
  as TLS SNI and for certificate verification and httpx still sends it as the Host header,
  because only the socket connect sees the IP.
- Other protocols (SMTP): `open_checked_socket` resolves, checks and connects a socket that
  the protocol library then uses.

`Egress(allow_private=True)` skips the address check (the scheme check stays) for tests and
local development, whose peers listen on 127.0.0.1; the operator sets it
(WEBHOOK_ALLOW_PRIVATE_TARGETS), never a tenant, and it is off by default.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import weakref
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpcore
import httpx
from pydantic import BaseModel, SecretStr

from connectors.errors import PermanentDeliveryError, RetryableDeliveryError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# (host, port) -> the addresses it resolves to, as strings. Injected in tests to script DNS.
Resolver = Callable[[str, int], Awaitable[list[str]]]

# IPv6 ranges that Python 3.11's `is_global` calls global although they are not reachable
# public unicast targets for us.
_REFUSED_V6 = (
    ipaddress.IPv6Network("fec0::/10"),  # site-local (deprecated, still routed internally)
    ipaddress.IPv6Network("64:ff9b:1::/48"),  # local-use NAT64 (RFC 8215)
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # well-known NAT64 prefix (RFC 6052)


class TargetRefused(PermanentDeliveryError):
    """The target is not an allowed destination (scheme, or a non-public address)."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, setting: str | None = None
    ) -> None:
        super().__init__(message, retry_after=retry_after)
        self.setting = setting  # the configuration setting that names the target, if known


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


@dataclass(frozen=True)
class Egress:
    """Where this process may connect: the address rule and the resolver it uses."""

    allow_private: bool = False
    resolver: Resolver = field(default=system_resolver, compare=False)


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, NAT64, IPv4-compatible)."""
    if address.ipv4_mapped is not None:  # ::ffff:a.b.c.d
        return address.ipv4_mapped
    if address.sixtofour is not None:  # 2002:aabb:ccdd::/48
        return address.sixtofour
    if address in _NAT64:  # 64:ff9b::a.b.c.d
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if int(address) >> 32 == 0:  # ::a.b.c.d (deprecated IPv4-compatible; also :: and ::1)
        return ipaddress.IPv4Address(int(address))
    return None


def is_public(address: IPAddress) -> bool:
    """Whether an address is a public unicast one we may connect to on a tenant's behalf.

    An IPv6 address that embeds an IPv4 address is judged as that IPv4 address: a NAT64 or
    6to4 gateway would carry the connection to it (64:ff9b::a9fe:a9fe is 169.254.169.254).
    """
    if isinstance(address, ipaddress.IPv6Address):
        if any(address in network for network in _REFUSED_V6):
            return False
        embedded = embedded_ipv4(address)
        if embedded is not None:
            return is_public(embedded)
    # is_global is false for private, loopback, link-local, reserved, unspecified and the
    # other special-purpose ranges (CGNAT 100.64/10, ...); multicast needs its own check.
    return address.is_global and not address.is_multicast


def parse_address(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        return None


async def checked_addresses(host: str, port: int, egress: Egress) -> list[str]:
    """Resolve `host` once; every address must be public (unless allowed). Raises
    TargetRefused, or RetryableDeliveryError when the name does not resolve."""
    host = host.strip("[]")
    if not host:
        raise TargetRefused("the target has no host")
    try:
        # An address literal is its own answer; only names are resolved.
        addresses = [host] if parse_address(host) else await egress.resolver(host, port)
    except (OSError, UnicodeError) as exc:  # socket.gaierror is an OSError
        # Often a DNS hiccup; a name that never resolves is bounded by the retry path.
        raise RetryableDeliveryError(f"host {host} did not resolve: {exc}") from exc
    if not addresses:
        raise RetryableDeliveryError(f"host {host} did not resolve")
    if egress.allow_private:
        return addresses
    # Every address, not just the first: a connection may go to any of them.
    for text in addresses:
        address = parse_address(text)
        if address is None or not is_public(address):
            raise TargetRefused(f"host {host} resolves to non-public address {text}")
    return addresses


async def check_url(url: str, egress: Egress, *, what: str = "URL") -> None:
    """Refuse a URL that is not http(s) or whose host is not public (see `checked_addresses`).

    For validating configuration; a connection must still go through a guarded client,
    which checks again at connect time and connects to what it checked.
    """
    parsed = http_url(url, what=what)
    if egress.allow_private:
        return  # nothing to check about the address, so no lookup either (offline development)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    await checked_addresses(parsed.host, port, egress)


def http_url(url: str, *, what: str = "URL") -> httpx.URL:
    """`url` parsed, if it is an http(s) URL with a host; TargetRefused otherwise."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, TypeError) as exc:
        raise TargetRefused(f"{what} is not a valid URL") from exc
    if parsed.scheme not in ("http", "https"):
        raise TargetRefused(f"{what} scheme {parsed.scheme!r} is not http(s)")
    if not parsed.host:
        raise TargetRefused(f"{what} has no host")
    return parsed


async def open_checked_socket(
    host: str, port: int, egress: Egress, *, connect_timeout: float
) -> socket.socket:
    """A connected, non-blocking socket to a checked address of `host` (for SMTP)."""
    last: OSError | None = None
    for text in await checked_addresses(host, port, egress):
        address = parse_address(text)
        family = socket.AF_INET6 if isinstance(address, ipaddress.IPv6Address) else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(connect_timeout):
                await asyncio.get_running_loop().sock_connect(sock, (text, port))
        except OSError as exc:  # TimeoutError included
            sock.close()
            last = exc
            continue
        return sock
    raise RetryableDeliveryError(f"connection to {host}:{port} failed: {last}")


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore's network backend with the guard in connect_tcp: resolve once, check, and
    connect to a checked address (the hostname stays the TLS server name)."""

    def __init__(self, egress: Egress) -> None:
        self._egress = egress
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                addresses = await checked_addresses(host, port, self._egress)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host} timed out") from exc
        last: Exception | None = None
        for address in addresses:
            try:
                return await self._inner.connect_tcp(
                    address,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                last = exc
        assert last is not None  # checked_addresses never answers an empty list
        raise last

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise TargetRefused("unix sockets are not an allowed target")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with `GuardedBackend` under its connection pool."""

    def __init__(
        self,
        egress: Egress,
        *,
        limits: httpx.Limits | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        # No proxy from the environment: a proxy would make the connection, not us.
        limits = limits or httpx.Limits()
        super().__init__(limits=limits, trust_env=False)
        # httpx does not expose httpcore's network_backend, so the pool is rebuilt with it;
        # the rebinding test (tests/unit/connectors/test_egress.py) fails if this stops working.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=GuardedBackend(egress),
        )


_guarded: weakref.WeakSet[httpx.AsyncClient] = weakref.WeakSet()


def guarded_client(
    egress: Egress,
    *,
    limits: httpx.Limits | None = None,
    verify: ssl.SSLContext | bool = True,
) -> httpx.AsyncClient:
    """An httpx client every connection of which goes through the guard."""
    transport = GuardedTransport(egress, limits=limits, verify=verify)
    client = httpx.AsyncClient(transport=transport, trust_env=False)
    _guarded.add(client)
    return client


def is_guarded(client: httpx.AsyncClient) -> bool:
    return client in _guarded


def peer_is_public(response: httpx.Response) -> bool:
    """Whether the response came from a public address (False when that is unknown).

    A body from a non-public peer (reachable only with allow_private) must not be echoed
    into anything a tenant can read: that would make an SSRF readable.
    """
    stream = response.extensions.get("network_stream")
    peer = stream.get_extra_info("server_addr") if stream is not None else None
    if not peer:
        return False
    address = parse_address(str(peer[0]))
    return address is not None and is_public(address)


@dataclass(frozen=True)
class Target:
    """A host a configuration makes us connect to, and the setting that names it."""

    setting: str
    host: str
    port: int


def url_target(setting: str, url: str) -> Target:
    try:
        parsed = http_url(url, what=setting)
    except TargetRefused as exc:
        raise TargetRefused(str(exc), setting=setting) from exc
    return Target(setting, parsed.host, parsed.port or (443 if parsed.scheme == "https" else 80))


def url_targets(config: BaseModel) -> list[Target]:
    """Every setting of `config` whose value is a URL (base_url, token_uri, webhook_url, ...),
    as a Target; TargetRefused for a URL that is not http(s)."""
    found = []
    for name in type(config).model_fields:
        value = getattr(config, name)
        text = value.get_secret_value() if isinstance(value, SecretStr) else value
        if isinstance(text, str) and "://" in text:
            found.append(url_target(name, text))
    return found


async def check_targets(targets: Iterable[Target], egress: Egress) -> None:
    """Check each target's host (see `checked_addresses`); the error names its setting."""
    if egress.allow_private:
        return  # nothing to check about the addresses, so no lookup either
    for target in targets:
        try:
            await checked_addresses(target.host, target.port, egress)
        except TargetRefused as exc:
            raise TargetRefused(f"{target.setting}: {exc}", setting=target.setting) from exc
        except RetryableDeliveryError as exc:
            raise RetryableDeliveryError(f"{target.setting}: {exc}") from exc
