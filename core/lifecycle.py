"""The order of status transitions, shared by the status stage and the Postgres sink.

The latest state of a notification is the highest-ranked status seen, not the last one to
arrive. That makes the derived state idempotent and order-insensitive: a replayed or late
`rendered` never overwrites `sent`. Final states rank above every in-flight state.
"""

from __future__ import annotations

_IN_FLIGHT = {
    "accepted": 10,
    "deferred": 20,
    "rendered": 30,
    "queued": 40,
    "sent": 50,
    "delivered": 60,
    "read": 70,
    # A user's inbox actions. `unread` never becomes the headline state (it ranks below
    # `delivered`); the inbox's read flag follows the latest read/unread event instead.
    "unread": 55,
    "deleted": 75,
}
_FINAL = {
    "duplicate": 90,
    "suppressed": 90,
    "cancelled": 90,
    "digested": 90,
    "bounced": 95,
    "failed": 95,
}
_RETRIABLE_FAILURE = 45  # a retriable failure is overtaken by a later successful attempt

FINAL_STATUSES = frozenset({*_FINAL, "sent", "delivered", "read", "unread", "deleted"})


def rank(status: str, retriable: bool = False) -> int:
    if status == "failed" and retriable:
        return _RETRIABLE_FAILURE
    if status in _IN_FLIGHT:
        return _IN_FLIGHT[status]
    if status in _FINAL:
        return _FINAL[status]
    raise ValueError(f"unknown status {status!r}")


def supersedes(new_status: str, new_retriable: bool, old_status: str, old_retriable: bool) -> bool:
    return rank(new_status, new_retriable) > rank(old_status, old_retriable)
