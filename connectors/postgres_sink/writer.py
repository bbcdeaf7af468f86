"""Write one batch of decoded events in one transaction, idempotently.

Every statement is an upsert that a replay turns into a no-op:

- events are inserted once per event id (ON CONFLICT DO NOTHING);
- the latest-state row only moves to an event that outranks the stored one (see
  `_outranks`), and `created_at` only moves earlier, so any order of arrival and any number
  of replays give the same row;
- inbox messages are inserted once; `read_at` and `deleted_at` are recomputed from all of the
  message's read/unread/deleted events (see `inbox_state`), whichever arrived first;
- webhook delivery attempts are inserted once per attempt id (`delivery_id:attempt`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, and_, bindparam, case, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.sql.elements import ColumnElement

from connectors.read_model import (
    from_epoch_ms,
    inbox,
    notification_events,
    notifications,
    webhook_deliveries,
)
from core.lifecycle import rank


@dataclass(frozen=True)
class Record:
    """A decoded event and the topic position it was read from."""

    value: dict[str, Any]
    topic: str
    partition: int
    offset: int

    def position(self) -> str:
        return f"{self.topic}[{self.partition}]@{self.offset}"


@dataclass
class Batch:
    statuses: list[Record]  # StatusEvent
    inbox_messages: list[Record]  # InAppMessage
    webhook_attempts: list[Record] = field(default_factory=list)  # WebhookDeliveryAttempt

    def records(self) -> list[Record]:
        return [*self.statuses, *self.inbox_messages, *self.webhook_attempts]

    def __len__(self) -> int:
        return len(self.statuses) + len(self.inbox_messages) + len(self.webhook_attempts)


def _insert(conn: Connection) -> Any:
    dialect = conn.dialect.name
    if dialect == "postgresql":
        return postgresql.insert
    if dialect == "sqlite":
        return sqlite.insert
    raise RuntimeError(f"the sink supports postgresql and sqlite, not {dialect!r}")


def event_row(record: Record) -> dict[str, Any]:
    e = record.value
    return {
        "event_id": e["event_id"],
        "notification_id": e["notification_id"],
        "request_id": e["request_id"],
        "tenant_id": e["tenant_id"],
        "batch_id": e.get("batch_id"),
        "channel": e.get("channel"),
        "recipient_id": e.get("recipient_id"),
        "status": e["status"],
        "reason": e.get("reason"),
        "retriable": bool(e.get("retriable", False)),
        "provider": e.get("provider"),
        "provider_message_id": e.get("provider_message_id"),
        "stage": e["stage"],
        "attempt": e.get("attempt", 0),
        "deferred_until": from_epoch_ms(e.get("deferred_until")),
        "request_occurred_at": from_epoch_ms(e["request_occurred_at"]),
        "occurred_at": from_epoch_ms(e["occurred_at"]),
        "source_topic": record.topic,
        "source_partition": record.partition,
        "source_offset": record.offset,
    }


def _order_key(row: dict[str, Any]) -> tuple[int, Any, str]:
    return (row["status_rank"], row["updated_at"], row["status_event_id"])


def state_rows(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One latest-state row per notification in the batch (Postgres refuses to upsert one
    row twice in a statement), folded with the same rule the database applies."""
    by_id: dict[str, dict[str, Any]] = {}
    for e in events:
        row = {
            "notification_id": e["notification_id"],
            "tenant_id": e["tenant_id"],
            "request_id": e["request_id"],
            "batch_id": e["batch_id"],
            "channel": e["channel"],
            "recipient_id": e["recipient_id"],
            "status": e["status"],
            "status_rank": rank(e["status"], e["retriable"]),
            "reason": e["reason"],
            "retriable": e["retriable"],
            "provider": e["provider"],
            "provider_message_id": e["provider_message_id"],
            "status_event_id": e["event_id"],
            "request_occurred_at": e["request_occurred_at"],
            "created_at": e["occurred_at"],
            "updated_at": e["occurred_at"],
        }
        old = by_id.get(row["notification_id"])
        if old is None:
            by_id[row["notification_id"]] = row
            continue
        earliest = min(old["created_at"], row["created_at"])
        winner = row if _order_key(row) > _order_key(old) else old
        by_id[row["notification_id"]] = {**winner, "created_at": earliest}
    return list(by_id.values())


# Columns that follow the winning event; identity columns only fill gaps.
_STATE_COLUMNS = (
    "status",
    "status_rank",
    "reason",
    "retriable",
    "provider",
    "provider_message_id",
    "status_event_id",
    "updated_at",
)
_IDENTITY_COLUMNS = ("batch_id", "channel", "recipient_id")


def _outranks(new: Any, old: Any) -> ColumnElement[bool]:
    """(rank, occurred_at, event id) of `new` > that of `old`, lexicographically."""
    return or_(
        new.status_rank > old.status_rank,
        and_(
            new.status_rank == old.status_rank,
            or_(
                new.updated_at > old.updated_at,
                and_(
                    new.updated_at == old.updated_at,
                    new.status_event_id > old.status_event_id,
                ),
            ),
        ),
    )


def _upsert_states(conn: Connection, rows: list[dict[str, Any]]) -> None:
    stmt = _insert(conn)(notifications)
    new, old = stmt.excluded, notifications.c
    wins = _outranks(new, old)
    earlier = new.created_at < old.created_at
    set_: dict[str, Any] = {
        name: case((wins, new[name]), else_=old[name]) for name in _STATE_COLUMNS
    }
    set_.update({name: func.coalesce(old[name], new[name]) for name in _IDENTITY_COLUMNS})
    set_["created_at"] = case((earlier, new.created_at), else_=old.created_at)
    stmt = stmt.on_conflict_do_update(
        index_elements=[notifications.c.notification_id], set_=set_, where=or_(wins, earlier)
    )
    conn.execute(stmt, rows)


# A user's inbox actions (the shim's /api/v1/me endpoints), and provider read receipts.
INBOX_ACTIONS = ("read", "unread", "deleted")


def inbox_state(actions: Iterable[tuple[str, Any, str]]) -> tuple[Any, Any]:
    """(read_at, deleted_at) of one message from its (status, occurred_at, event_id) actions.

    The latest read/unread action (by occurred_at, then event id) decides whether the message
    is read; read_at is then the first `read` after the last `unread`, so clicking "read"
    twice keeps the first time. deleted_at is the first `deleted`. A function of the set of
    events only: any order of arrival and any replay give the same answer."""
    read_at = deleted_at = None
    for status, occurred_at, _event_id in sorted(actions, key=lambda a: (a[1], a[2])):
        if status == "read" and read_at is None:
            read_at = occurred_at
        elif status == "unread":
            read_at = None
        elif status == "deleted" and deleted_at is None:
            deleted_at = occurred_at
    return read_at, deleted_at


def _apply_inbox_actions(conn: Connection, notification_ids: set[str]) -> None:
    e = notification_events.c
    rows = conn.execute(
        select(e.notification_id, e.tenant_id, e.status, e.occurred_at, e.event_id).where(
            e.notification_id.in_(sorted(notification_ids)), e.status.in_(INBOX_ACTIONS)
        )
    ).all()
    actions: dict[tuple[str, str], list[tuple[str, Any, str]]] = defaultdict(list)
    for nid, tenant_id, status, occurred_at, event_id in rows:
        actions[(nid, tenant_id)].append((status, occurred_at, event_id))
    if not actions:
        return
    params = []
    for (nid, tenant_id), found in actions.items():
        read_at, deleted_at = inbox_state(found)
        params.append({"nid": nid, "tid": tenant_id, "new_read": read_at, "new_del": deleted_at})
    conn.execute(
        update(inbox)
        .where(inbox.c.notification_id == bindparam("nid"), inbox.c.tenant_id == bindparam("tid"))
        .values(read_at=bindparam("new_read"), deleted_at=bindparam("new_del")),
        params,
    )


def inbox_row(message: dict[str, Any]) -> dict[str, Any]:
    return {
        "notification_id": message["notification_id"],
        "tenant_id": message["tenant_id"],
        "user_id": message["user_id"],
        "title": message.get("title"),
        "body": message["body"],
        "html": message.get("html"),
        "data_json": message.get("data_json", "{}"),
        "created_at": from_epoch_ms(message["created_at"]),
        "read_at": None,
        "deleted_at": None,
    }


def write_batch(engine: Engine, batch: Batch) -> None:
    """Write `batch` in one transaction; safe to call again with the same batch."""
    events = list({row["event_id"]: row for row in map(event_row, batch.statuses)}.values())
    messages = list(
        {m.value["notification_id"]: inbox_row(m.value) for m in batch.inbox_messages}.values()
    )
    with engine.begin() as conn:
        insert = _insert(conn)
        if events:
            conn.execute(
                insert(notification_events).on_conflict_do_nothing(
                    index_elements=[notification_events.c.event_id]
                ),
                events,
            )
            _upsert_states(conn, state_rows(events))
        if messages:
            conn.execute(
                insert(inbox).on_conflict_do_nothing(index_elements=[inbox.c.notification_id]),
                messages,
            )
        touched = {m["notification_id"] for m in messages}
        touched |= {e["notification_id"] for e in events if e["status"] in INBOX_ACTIONS}
        if touched:
            _apply_inbox_actions(conn, touched)
        if batch.webhook_attempts:
            attempts = {
                r.value["attempt_id"]: webhook_attempt_row(r.value) for r in batch.webhook_attempts
            }
            conn.execute(
                insert(webhook_deliveries).on_conflict_do_nothing(
                    index_elements=[webhook_deliveries.c.attempt_id]
                ),
                list(attempts.values()),
            )


def webhook_attempt_row(attempt: dict[str, Any]) -> dict[str, Any]:
    """A delivery-log row: inserted once per attempt id (a replayed attempt is a no-op)."""
    row = {column.name: attempt.get(column.name) for column in webhook_deliveries.columns}
    row["duration_ms"] = attempt.get("duration_ms") or 0
    row["next_attempt_at"] = from_epoch_ms(attempt.get("next_attempt_at"))
    row["occurred_at"] = from_epoch_ms(attempt["occurred_at"])
    return row
