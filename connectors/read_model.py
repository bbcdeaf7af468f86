"""The read model the Postgres sink writes and the shim reads: tables and queries.

Three tables, all derived from topics (so all of them can be rebuilt by replaying):

- `notifications`: the latest state per notification. "Latest" is the highest-ranked status
  (streams.lifecycle.rank), ties broken by occurred_at then event id, so the row does not
  depend on the order events arrive in.
- `notification_events`: every status event once (keyed by its deterministic event id),
  with the topic position it was read from.
- `inbox`: in-app messages; `read_at` is derived from `read` status events.

The pipeline never reads these tables; only the shim does, always scoped to one tenant.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    event,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import StaticPool

metadata = MetaData()

Timestamp = DateTime(timezone=True)

notifications = Table(
    "notifications",
    metadata,
    Column("notification_id", String, primary_key=True),
    Column("tenant_id", String, nullable=False),
    Column("request_id", String, nullable=False),
    Column("batch_id", String),
    Column("channel", String),
    Column("recipient_id", String),
    Column("status", String, nullable=False),
    Column("status_rank", Integer, nullable=False),
    Column("reason", Text),
    Column("retriable", Boolean, nullable=False, default=False),
    Column("provider", String),
    Column("provider_message_id", String),
    # The event that set the current state: the last tie-breaker between equal ranks.
    Column("status_event_id", String, nullable=False),
    Column("request_occurred_at", Timestamp, nullable=False),
    # The earliest transition seen, and the transition that set the current state.
    Column("created_at", Timestamp, nullable=False),
    Column("updated_at", Timestamp, nullable=False),
    Index("ix_notifications_tenant_request", "tenant_id", "request_id"),
    Index("ix_notifications_tenant_batch", "tenant_id", "batch_id"),
)

notification_events = Table(
    "notification_events",
    metadata,
    Column("event_id", String, primary_key=True),
    Column("notification_id", String, nullable=False),
    Column("request_id", String, nullable=False),
    Column("tenant_id", String, nullable=False),
    Column("batch_id", String),
    Column("channel", String),
    Column("recipient_id", String),
    Column("status", String, nullable=False),
    Column("reason", Text),
    Column("retriable", Boolean, nullable=False, default=False),
    Column("provider", String),
    Column("provider_message_id", String),
    Column("stage", String, nullable=False),
    Column("attempt", Integer, nullable=False, default=0),
    Column("deferred_until", Timestamp),
    Column("request_occurred_at", Timestamp, nullable=False),
    Column("occurred_at", Timestamp, nullable=False),
    Column("source_topic", String, nullable=False),
    Column("source_partition", Integer, nullable=False),
    Column("source_offset", BigInteger, nullable=False),
    Index("ix_notification_events_notification", "notification_id", "occurred_at"),
)

inbox = Table(
    "inbox",
    metadata,
    Column("notification_id", String, primary_key=True),
    Column("tenant_id", String, nullable=False),
    Column("user_id", String, nullable=False),
    Column("title", Text),
    Column("body", Text, nullable=False),
    Column("html", Text),
    Column("data_json", Text, nullable=False, default="{}"),
    Column("created_at", Timestamp, nullable=False),
    Column("read_at", Timestamp),
    Index("ix_inbox_tenant_user_created", "tenant_id", "user_id", "created_at"),
)


def from_epoch_ms(value: int | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value / 1000, tz=UTC)


def _aware(value: datetime | None) -> datetime | None:
    # SQLite stores no zone; every timestamp written here is UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def make_engine(database_url: str, **kwargs: Any) -> Engine:
    """An engine for DATABASE_URL; for a SQLite file, its directory is created and WAL is on
    so the shim can read while the sink writes."""
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql":
        kwargs.setdefault("connect_args", {"connect_timeout": 5})
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, **kwargs)
    connect_args: dict[str, Any] = {"timeout": 30, "check_same_thread": False}
    if url.database and url.database != ":memory:":
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    else:  # in memory: one connection shared by every thread, or each would see its own DB
        kwargs.setdefault("poolclass", StaticPool)
    engine = create_engine(url, connect_args=connect_args, **kwargs)

    @event.listens_for(engine, "connect")
    def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.close()

    return engine


def create_tables(engine: Engine) -> None:
    """Create missing tables. The sink and the shim both call this at start; when they race
    on Postgres the loser's CREATE fails on the catalogue, and a second pass finds the tables."""
    try:
        metadata.create_all(engine)
    except DBAPIError:
        metadata.create_all(engine)


def ping(engine: Engine) -> None:
    """Raises if the database cannot be reached."""
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


_EVENT_FIELDS = (
    "event_id",
    "status",
    "reason",
    "retriable",
    "provider",
    "provider_message_id",
    "stage",
    "attempt",
    "deferred_until",
    "occurred_at",
)


def get_notification(engine: Engine, tenant_id: str, notification_id: str) -> dict[str, Any] | None:
    """The latest state of one of `tenant_id`'s notifications with its history (oldest first),
    or None when it does not exist or belongs to another tenant."""
    with engine.connect() as conn:
        row = (
            conn.execute(
                select(notifications).where(
                    notifications.c.notification_id == notification_id,
                    notifications.c.tenant_id == tenant_id,
                )
            )
            .mappings()
            .first()
        )
        if row is None:
            return None
        events = (
            conn.execute(
                select(*(notification_events.c[name] for name in _EVENT_FIELDS))
                .where(
                    notification_events.c.notification_id == notification_id,
                    notification_events.c.tenant_id == tenant_id,
                )
                .order_by(notification_events.c.occurred_at, notification_events.c.event_id)
            )
            .mappings()
            .all()
        )
    result = _with_aware_times(dict(row))
    result.pop("status_event_id", None)
    result["events"] = [_with_aware_times(dict(event)) for event in events]
    return result


def _with_aware_times(row: dict[str, Any]) -> dict[str, Any]:
    return {
        key: _aware(value) if isinstance(value, datetime) else value for key, value in row.items()
    }
