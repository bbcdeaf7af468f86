"""The read model the Postgres sink writes and the shim reads: tables and queries.

Three tables, all derived from topics (so all of them can be rebuilt by replaying):

- `notifications`: the latest state per notification. "Latest" is the highest-ranked status
  (core.lifecycle.rank), ties broken by occurred_at then event id, so the row does not
  depend on the order events arrive in.
- `notification_events`: every status event once (keyed by its deterministic event id),
  with the topic position it was read from.
- `inbox`: in-app messages; `read_at` follows the latest `read`/`unread` status event and
  `deleted_at` the first `deleted` one (the user's inbox actions).
- `webhook_deliveries`: the outgoing status webhooks' delivery log, one row per attempt
  (keyed `delivery_id:attempt`), from webhooks.delivery-log.

The pipeline never reads these tables; only the shim does, always scoped to one tenant.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    and_,
    create_engine,
    event,
    exists,
    func,
    inspect,
    or_,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import StaticPool
from sqlalchemy.schema import CreateIndex
from sqlalchemy.sql.elements import ColumnElement

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
    # A user's notifications, newest first (GET /api/v1/me/notifications).
    Index("ix_notifications_tenant_recipient", "tenant_id", "recipient_id", "request_occurred_at"),
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
    # Set by a `deleted` status event (the user's DELETE); the message is then hidden.
    Column("deleted_at", Timestamp),
    Index("ix_inbox_tenant_user_created", "tenant_id", "user_id", "created_at"),
)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    Column("attempt_id", String, primary_key=True),  # delivery_id:attempt
    Column("delivery_id", String, nullable=False),
    Column("subscription_id", String, nullable=False),
    Column("tenant_id", String, nullable=False),
    Column("event_type", String, nullable=False),
    Column("event_id", String, nullable=False),
    Column("notification_id", String, nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("outcome", String, nullable=False),  # delivered, retrying, failed, skipped
    Column("http_status", Integer),
    Column("error", Text),
    Column("response_body", Text),
    Column("duration_ms", Integer, nullable=False, default=0),
    Column("url", Text, nullable=False),
    Column("next_attempt_at", Timestamp),
    Column("occurred_at", Timestamp, nullable=False),
    # A subscription's log, newest first (GET /api/v1/admin/webhooks/{id}/deliveries).
    Index("ix_webhook_deliveries_subscription", "tenant_id", "subscription_id", "occurred_at"),
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
        _add_missing(engine)
    except DBAPIError:
        metadata.create_all(engine)
        _add_missing(engine)


# Added to tables that existed before them: create_all creates tables, never alters them.
_ADDED_COLUMNS = ((inbox, "deleted_at"),)
_ADDED_INDEXES = ("ix_notifications_tenant_recipient",)


def _add_missing(engine: Engine) -> None:
    with engine.begin() as conn:
        for table, name in _ADDED_COLUMNS:
            present = {c["name"] for c in inspect(conn).get_columns(table.name)}
            if name not in present:
                column_type = table.c[name].type.compile(dialect=conn.dialect)
                conn.execute(text(f"ALTER TABLE {table.name} ADD COLUMN {name} {column_type}"))
        for index in (i for t in metadata.tables.values() for i in t.indexes):
            if index.name in _ADDED_INDEXES:
                conn.execute(CreateIndex(index, if_not_exists=True))


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


# -- a user's notifications (the shim's /api/v1/me endpoints) ----------------------------------

# What an inbox action (read, unread, deleted) needs to emit a status event like the pipeline's.
_IDENTITY = (
    "notification_id",
    "tenant_id",
    "request_id",
    "batch_id",
    "channel",
    "recipient_id",
    "request_occurred_at",
)


def _mine(tenant_id: str, user_id: str) -> list[ColumnElement[bool]]:
    """The user's own notifications, without those the user deleted."""
    deleted = exists().where(
        notification_events.c.notification_id == notifications.c.notification_id,
        notification_events.c.tenant_id == notifications.c.tenant_id,
        notification_events.c.status == "deleted",
    )
    return [
        notifications.c.tenant_id == tenant_id,
        notifications.c.recipient_id == user_id,
        ~deleted,
    ]


def _with_inbox() -> Any:
    return notifications.outerjoin(
        inbox,
        and_(
            inbox.c.notification_id == notifications.c.notification_id,
            inbox.c.tenant_id == notifications.c.tenant_id,
        ),
    )


def user_notifications(
    engine: Engine,
    tenant_id: str,
    user_id: str,
    *,
    statuses: Sequence[str] = (),
    channels: Sequence[str] = (),
    since: datetime | None = None,
    until: datetime | None = None,
    unread: bool | None = None,
    after: tuple[datetime, str] | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    """A page of the user's notifications, newest request first, ties by notification id
    (descending). `after` is the (request_occurred_at, notification_id) of the last row of
    the previous page. `since` is inclusive, `until` exclusive. `unread` selects in-app
    messages without (True) or with (False) a read time."""
    n, i = notifications.c, inbox.c
    conditions = _mine(tenant_id, user_id)
    if statuses:
        conditions.append(n.status.in_(list(statuses)))
    if channels:
        conditions.append(n.channel.in_(list(channels)))
    if since is not None:
        conditions.append(n.request_occurred_at >= since)
    if until is not None:
        conditions.append(n.request_occurred_at < until)
    if unread is not None:
        conditions.append(i.notification_id.is_not(None))
        conditions.append(i.read_at.is_(None) if unread else i.read_at.is_not(None))
    if after is not None:
        at, nid = after
        conditions.append(
            or_(
                n.request_occurred_at < at,
                and_(n.request_occurred_at == at, n.notification_id < nid),
            )
        )
    query = (
        select(
            *(n[name] for name in _IDENTITY),
            n.status,
            n.reason,
            n.updated_at,
            i.title,
            i.body,
            i.html,
            i.data_json,
            i.created_at.label("delivered_at"),
            i.read_at,
            i.notification_id.is_not(None).label("in_inbox"),
        )
        .select_from(_with_inbox())
        .where(*conditions)
        .order_by(n.request_occurred_at.desc(), n.notification_id.desc())
        .limit(limit)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    return [_with_aware_times(dict(row)) for row in rows]


def user_unread_count(engine: Engine, tenant_id: str, user_id: str) -> int:
    """In-app messages of the user neither read nor deleted."""
    query = select(func.count()).where(
        inbox.c.tenant_id == tenant_id,
        inbox.c.user_id == user_id,
        inbox.c.read_at.is_(None),
        inbox.c.deleted_at.is_(None),
    )
    with engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def user_notification(
    engine: Engine, tenant_id: str, user_id: str, notification_id: str
) -> dict[str, Any] | None:
    """The identity of one of the user's notifications, or None when it does not exist, is
    someone else's or was deleted."""
    query = select(*(notifications.c[name] for name in _IDENTITY)).where(
        notifications.c.notification_id == notification_id, *_mine(tenant_id, user_id)
    )
    with engine.connect() as conn:
        row = conn.execute(query).mappings().first()
    return None if row is None else _with_aware_times(dict(row))


def user_unread(engine: Engine, tenant_id: str, user_id: str, limit: int) -> list[dict[str, Any]]:
    """The identities of up to `limit` unread, undeleted in-app messages of the user, newest
    first (those whose notification row the sink has written)."""
    query = (
        select(*(notifications.c[name] for name in _IDENTITY))
        .select_from(_with_inbox())
        .where(
            *_mine(tenant_id, user_id),
            inbox.c.user_id == user_id,
            inbox.c.read_at.is_(None),
            inbox.c.deleted_at.is_(None),
        )
        .order_by(
            notifications.c.request_occurred_at.desc(), notifications.c.notification_id.desc()
        )
        .limit(limit)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    return [_with_aware_times(dict(row)) for row in rows]


_DELIVERY_FIELDS = (
    "attempt_id",
    "delivery_id",
    "event_type",
    "event_id",
    "notification_id",
    "attempt",
    "outcome",
    "http_status",
    "error",
    "response_body",
    "duration_ms",
    "url",
    "next_attempt_at",
    "occurred_at",
)


def webhook_delivery_log(
    engine: Engine,
    tenant_id: str,
    subscription_id: str,
    *,
    limit: int,
    before: tuple[datetime, str] | None = None,
    delivery_id: str | None = None,
) -> list[dict[str, Any]]:
    """Up to `limit` attempts of one of the tenant's webhook subscriptions, newest first
    (occurred_at, then attempt id, descending); `before` is the (occurred_at, attempt_id) of
    the last row of the previous page, `delivery_id` keeps one delivery's attempts."""
    w = webhook_deliveries.c
    conditions: list[ColumnElement[bool]] = [
        w.tenant_id == tenant_id,
        w.subscription_id == subscription_id,
    ]
    if delivery_id is not None:
        conditions.append(w.delivery_id == delivery_id)
    if before is not None:
        at, attempt_id = before
        conditions.append(
            or_(w.occurred_at < at, and_(w.occurred_at == at, w.attempt_id < attempt_id))
        )
    query = (
        select(*(w[name] for name in _DELIVERY_FIELDS))
        .where(*conditions)
        .order_by(w.occurred_at.desc(), w.attempt_id.desc())
        .limit(limit)
    )
    with engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    return [_with_aware_times(dict(row)) for row in rows]
