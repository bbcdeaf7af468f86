"""api_shim.keyed_locks: one lock per key in use, none kept for keys no longer used."""

from __future__ import annotations

import asyncio

from api_shim.keyed_locks import KeyedLocks


async def test_idle_locks_are_dropped() -> None:
    locks = KeyedLocks()
    for i in range(1000):
        async with locks.hold(f"key-{i}"):
            assert len(locks) == 1
    assert len(locks) == 0


async def test_holders_of_one_key_are_serialised_and_other_keys_are_not() -> None:
    locks = KeyedLocks()
    inside: list[str] = []
    overlap: list[bool] = []

    async def work(key: str, name: str) -> None:
        async with locks.hold(key):
            overlap.append(any(other.startswith(key) for other in inside))
            inside.append(f"{key}/{name}")
            await asyncio.sleep(0.01)
            inside.remove(f"{key}/{name}")

    await asyncio.gather(*(work("a", str(i)) for i in range(5)), work("b", "0"))
    assert overlap.count(True) == 0
    assert len(locks) == 0
