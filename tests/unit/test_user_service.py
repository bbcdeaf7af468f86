"""The user service client against a real local HTTP server: cache, misses, timeouts, breaker."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from streams.state.user_service import UserServiceClient
from tests.support.user_service import UserServicePeer


@pytest.fixture
def service() -> Iterator[UserServicePeer]:
    peer = UserServicePeer().start()
    yield peer
    peer.stop()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def client(service: UserServicePeer, clock: Clock, **overrides: Any) -> UserServiceClient:
    options: dict[str, Any] = {
        "timeout": 0.2,
        "cache_ttl": 60.0,
        "miss_ttl": 10.0,
        "breaker_failures": 3,
        "breaker_reset": 30.0,
        "clock": clock,
        **overrides,
    }
    return UserServiceClient(service.url, **options)


async def test_found_profile_is_cached_until_its_ttl(service: UserServicePeer) -> None:
    service.users["/users/acme/ada"] = {"email": "ada@svc.test", "locale": "de", "extra": 1}
    clock = Clock()
    users = client(service, clock)
    try:
        assert await users.get("acme", "ada") == {"email": "ada@svc.test", "locale": "de"}
        service.users["/users/acme/ada"] = {"email": "new@svc.test"}
        clock.now += 59
        assert (await users.get("acme", "ada") or {})["email"] == "ada@svc.test"
        assert users.calls == 1
        clock.now += 2  # past the TTL
        assert await users.get("acme", "ada") == {"email": "new@svc.test"}
        assert users.calls == 2
    finally:
        await users.aclose()


async def test_unknown_user_is_a_cached_miss_with_a_shorter_ttl(service: UserServicePeer) -> None:
    clock = Clock()
    users = client(service, clock)
    try:
        assert await users.get("acme", "who") is None
        assert await users.get("acme", "who") is None
        assert users.calls == 1
        clock.now += 11
        assert await users.get("acme", "who") is None
        assert users.calls == 2
        assert users.breaker.state == "closed"  # a 404 is an answer, not a failure
    finally:
        await users.aclose()


async def test_ids_are_escaped_in_the_url(service: UserServicePeer) -> None:
    users = client(service, Clock())
    try:
        await users.get("acme", "a/b c")
        assert service.requests == ["/users/acme/a%2Fb%20c"]
    finally:
        await users.aclose()


async def test_timeout_returns_none_and_counts_as_a_failure(service: UserServicePeer) -> None:
    service.mode = "slow"
    users = client(service, Clock())
    try:
        started = time.monotonic()
        assert await users.get("acme", "ada") is None
        assert time.monotonic() - started < 0.45
        assert users.breaker.consecutive_failures == 1
    finally:
        await users.aclose()


async def test_breaker_opens_after_n_failures_skips_calls_and_half_opens_after_reset(
    service: UserServicePeer,
) -> None:
    service.mode = "error"
    service.users["/users/acme/ada"] = {"email": "ada@svc.test"}
    clock = Clock()
    users = client(service, clock)
    try:
        for _ in range(3):
            assert await users.get("acme", "ada") is None
        assert users.breaker.state == "open"
        assert users.calls == 3
        # Open: no calls at all, even once the service is back.
        service.mode = "ok"
        assert await users.get("acme", "ada") is None
        assert users.calls == 3 and len(service.requests) == 3
        # Half-open after the reset time: a failing trial opens it again for a full period.
        clock.now += 30
        assert users.breaker.state == "half-open"
        service.mode = "error"
        assert await users.get("acme", "ada") is None
        assert users.calls == 4 and users.breaker.state == "open"
        clock.now += 29
        assert await users.get("acme", "ada") is None
        assert users.calls == 4
        # A successful trial closes it.
        clock.now += 1
        service.mode = "ok"
        assert await users.get("acme", "ada") == {"email": "ada@svc.test"}
        assert users.breaker.state == "closed" and users.breaker.consecutive_failures == 0
    finally:
        await users.aclose()


async def test_success_resets_the_consecutive_count(service: UserServicePeer) -> None:
    service.users["/users/acme/ok"] = {"email": "ok@svc.test"}
    clock = Clock()
    users = client(service, clock, cache_ttl=0.0)
    try:
        for _ in range(5):
            service.mode = "error"
            assert await users.get("acme", "ok") is None
            assert await users.get("acme", "ok") is None
            service.mode = "ok"
            assert await users.get("acme", "ok") is not None
        assert users.breaker.state == "closed"
    finally:
        await users.aclose()


async def test_connection_refused_is_a_failure(service: UserServicePeer) -> None:
    url = service.url
    service.stop()
    users = UserServiceClient(url, timeout=0.5, cache_ttl=60, breaker_failures=1, breaker_reset=30)
    try:
        assert await users.get("acme", "ada") is None
        assert users.breaker.state == "open"
    finally:
        await users.aclose()
