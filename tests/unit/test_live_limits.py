"""Live streams: the per-tenant and per-caller shares of a process's streams, and where a
resume starts (tests/integration/test_shim_live.py runs both against the real broker)."""

from __future__ import annotations

from typing import Literal

import pytest

from api_shim.auth import Principal
from api_shim.errors import TooManyRequests, Unavailable
from api_shim.live import replay_start
from api_shim.live_slots import StreamSlots
from core.settings import Settings

SETTINGS = Settings(
    shim_sse_max_streams=4,
    shim_sse_max_streams_per_tenant=3,
    shim_sse_max_streams_per_principal=2,
)


def caller(tenant: str, subject: str, kind: Literal["api_key", "user"] = "api_key") -> Principal:
    return Principal(tenant_id=tenant, kind=kind, subject=subject, scopes=frozenset())


def test_a_caller_and_a_tenant_get_their_share_and_no_more() -> None:
    slots = StreamSlots(SETTINGS)
    key = caller("acme", "k1")
    release = [slots.take(key), slots.take(key)]
    with pytest.raises(TooManyRequests, match="these credentials") as info:
        slots.take(key)
    assert info.value.retry_after >= 1
    slots.take(caller("acme", "k1", kind="user"))  # a user named like the key is another caller
    with pytest.raises(TooManyRequests, match="this tenant"):
        slots.take(caller("acme", "k2"))
    slots.take(caller("globex", "k1"))  # the process's last stream
    with pytest.raises(Unavailable):
        slots.take(caller("initech", "k1"))

    release[0]()
    release[0]()  # given back once, however often it is called
    assert slots.tenants["acme"] == 2 and slots.open == 3
    slots.take(key)


def test_released_slots_leave_no_counters_behind() -> None:
    slots = StreamSlots(SETTINGS)
    slots.take(caller("acme", "k1"))()
    assert (slots.open, dict(slots.tenants), dict(slots.callers)) == (0, {}, {})


@pytest.mark.parametrize(
    ("wanted", "low", "high", "oldest", "start"),
    [
        (50, 0, 100, 40, 50),  # within the bound: exactly where asked
        (10, 0, 100, 40, 40),  # too far back: the bound
        (10, 20, 100, -60, 20),  # removed by retention: the oldest left
        (500, 0, 100, 40, 100),  # past the end (a made-up id): the end
    ],
)
def test_a_resume_starts_within_retention_and_the_replay_bound(
    wanted: int, low: int, high: int, oldest: int, start: int
) -> None:
    assert replay_start(wanted, low, high, oldest) == start
