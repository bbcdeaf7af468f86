"""The user endpoints (/api/v1/me/...) against the real broker, a real Postgres and the real sink.

Status events and in-app messages are produced straight onto the topics, the way the pipeline
writes them (that keeps the module fast: no worker process); the sink, running in a thread,
turns them into the read model the shim reads. The shim's own writes (read, unread, deleted,
preferences) are read back from Kafka and, through the sink, from the endpoints.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from confluent_kafka import Consumer, Producer, TopicPartition
from fastapi.testclient import TestClient

from api_shim.app import create_app
from api_shim.me_models import Category, NotificationStatus
from connectors.postgres_sink import SinkRunner
from connectors.read_model import create_tables, inbox, make_engine, notifications
from core.catalog import TopicCatalog
from core.ids import expected_partition, status_event_id
from core.kafka_clients import producer_config
from core.provision import provision
from core.settings import Settings
from schemas import SchemaCatalog, build_codec
from tests.support.jwks import Issuer, new_key

pytestmark = pytest.mark.integration

CODEC = build_codec(None, SchemaCatalog.load())
SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
KEY_A = {"X-API-Key": "key-a"}
T0 = int(datetime(2024, 3, 1, 10, 0, tzinfo=UTC).timestamp() * 1000)
HOUR = 3600 * 1000


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    with Issuer() as issuer:
        yield issuer


@pytest.fixture(scope="module")
def settings(kafka_bootstrap: str, fresh_database: str, issuer: Issuer) -> Settings:
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=f"t-{uuid.uuid4().hex[:12]}.",
        database_url=fresh_database,
        # tenant-b: known (its users' tokens are accepted) without a Tenant record.
        shim_api_keys={"key-a": "tenant-a", "key-b": "tenant-b"},
        sink_flush_seconds=0.1,
        **issuer.settings(),
    )
    provision(settings)
    return settings


@pytest.fixture(scope="module")
def topics(settings: Settings) -> TopicCatalog:
    return TopicCatalog.load(settings)


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def engine(settings: Settings) -> Iterator[sa.Engine]:
    engine = make_engine(settings.database_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def sink(settings: Settings) -> Iterator[None]:
    stop = threading.Event()
    thread = threading.Thread(target=SinkRunner(settings).run, args=(stop,), daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(30)


class Seeder:
    """Writes what the pipeline would for a notification: its status events and, for in-app,
    its inbox message."""

    def __init__(self, settings: Settings, topics: TopicCatalog) -> None:
        self.producer = Producer(producer_config(settings))
        self.topics = topics

    def status(
        self, nid: str, tenant: str, user: str, channel: str, status: str, **kw: Any
    ) -> None:
        requested = kw.pop("requested", T0)
        event = {
            "event_id": kw.pop("event_id", status_event_id(nid, status)),
            "notification_id": nid,
            "request_id": f"req-{nid[:8]}",
            "tenant_id": tenant,
            "batch_id": kw.pop("batch_id", None),
            "channel": channel,
            "recipient_id": user,
            "status": status,
            "stage": "test",
            "request_occurred_at": requested,
            "occurred_at": kw.pop("occurred_at", requested + 1000),
            **kw,
        }
        self.producer.produce(
            self.topics.name("notifications.status"),
            key=nid.encode(),
            value=CODEC.encode("StatusEvent", event),
        )

    def notification(
        self,
        tenant: str,
        user: str,
        channel: str,
        requested: int,
        statuses: tuple[str, ...] = ("accepted", "delivered"),
        title: str = "Hello",
    ) -> str:
        nid = str(uuid.uuid4())
        for i, status in enumerate(statuses):
            self.status(
                nid,
                tenant,
                user,
                channel,
                status,
                requested=requested,
                occurred_at=requested + 1000 * (i + 1),
            )
        if channel == "in_app":
            message = {
                "notification_id": nid,
                "tenant_id": tenant,
                "user_id": user,
                "title": title,
                "body": f"body of {title}",
                "data_json": json.dumps({"title": title}),
                "created_at": requested + 5000,
            }
            self.producer.produce(
                self.topics.name("notifications.inbox"),
                key=f"{tenant}:{user}".encode(),
                value=CODEC.encode("InAppMessage", message),
            )
        return nid

    def flush(self) -> None:
        assert self.producer.flush(15) == 0


@pytest.fixture(scope="module")
def seeder(settings: Settings, topics: TopicCatalog) -> Seeder:
    return Seeder(settings, topics)


@pytest.fixture(scope="module")
def seeded(seeder: Seeder, engine: sa.Engine, sink: None) -> dict[str, Any]:
    """ada's notifications (listed, never changed), cleo's (read, unread, deleted) and other
    people's that must never show."""
    ada = {
        "in1": seeder.notification("tenant-a", "ada", "in_app", T0, title="first"),
        "in2": seeder.notification("tenant-a", "ada", "in_app", T0 + HOUR, title="second"),
        "in3": seeder.notification("tenant-a", "ada", "in_app", T0 + 2 * HOUR, title="third"),
        "mail": seeder.notification(
            "tenant-a", "ada", "email", T0 + 3 * HOUR, ("accepted", "sent")
        ),
        "sms": seeder.notification(
            "tenant-a", "ada", "sms", T0 + 24 * HOUR, ("accepted", "failed")
        ),
    }
    cleo = {
        name: seeder.notification("tenant-a", "cleo", "in_app", T0 + i * HOUR, title=name)
        for i, name in enumerate(("toggle", "all1", "all2", "gone"))
    }
    cleo["mail"] = seeder.notification("tenant-a", "cleo", "email", T0 + 9 * HOUR)
    others = {
        "bob": seeder.notification("tenant-a", "bob", "in_app", T0 + HOUR),
        "tenant_b_ada": seeder.notification("tenant-b", "ada", "in_app", T0 + HOUR),
    }
    seeder.flush()
    every = [*ada.values(), *cleo.values(), *others.values()]
    in_app = [n for n in every if n not in (ada["mail"], ada["sms"], cleo["mail"])]

    def written() -> bool:
        with engine.connect() as conn:
            rows = conn.execute(sa.select(sa.func.count()).select_from(inbox)).scalar_one()
            states = conn.execute(
                sa.text("SELECT count(*) FROM notifications WHERE status <> 'accepted'")
            ).scalar_one()
        return rows >= len(in_app) and states >= len(every)

    wait_for(written, 30, "the sink to write the seeded notifications")
    return {"ada": ada, "cleo": cleo, **others}


def bearer(issuer: Issuer, sub: str, tenant: str = "tenant-a", **kw: Any) -> dict[str, str]:
    return issuer.bearer(issuer.token(sub=sub, tenant_id=tenant, **kw))


def listing(client: TestClient, headers: dict[str, str], query: str = "") -> list[dict[str, Any]]:
    response = client.get(f"/api/v1/me/notifications{query}", headers=headers)
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def events_of(settings: Settings, topics: TopicCatalog, nid: str) -> list[dict[str, Any]]:
    """Every status event on notifications.status for `nid`, from the partition its key maps
    to (murmur2), which also proves the shim keyed it by notification id."""
    topic = topics.name("notifications.status")
    partition = expected_partition(nid, topics["notifications.status"].partitions)
    consumer = Consumer(
        {"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": "unused"}
    )
    try:
        low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
        consumer.assign([TopicPartition(topic, partition, low)])
        found = []
        while high > low:
            message = consumer.poll(5)
            assert message is not None and not message.error()
            value, offset = message.value(), message.offset()
            assert value is not None and offset is not None
            if message.key() == nid.encode():
                found.append(CODEC.decode(value, "StatusEvent"))
            if offset >= high - 1:
                break
        return found
    finally:
        consumer.close()


def avsc_symbols(name: str) -> list[str]:
    symbols: list[str] = json.loads((SCHEMAS / name).read_text())["symbols"]
    return symbols


def test_enums_match_the_schemas() -> None:
    assert [s.value for s in NotificationStatus] == avsc_symbols("notification_status.avsc")
    assert [c.value for c in Category] == avsc_symbols("category.avsc")


# -- reading -------------------------------------------------------------------------------------


def test_my_notifications_newest_first_and_only_mine(
    client: TestClient, issuer: Issuer, seeded: dict[str, Any]
) -> None:
    ada = seeded["ada"]
    items = listing(client, bearer(issuer, "ada"))
    assert [i["notification_id"] for i in items] == [
        ada["sms"],
        ada["mail"],
        ada["in3"],
        ada["in2"],
        ada["in1"],
    ]
    in3 = items[2]
    assert in3["channel"] == "in_app" and in3["status"] == "delivered"
    assert in3["requested_at"] == "2024-03-01T12:00:00Z"
    assert in3["read_at"] is None
    assert in3["in_app"]["title"] == "third"
    assert in3["in_app"]["body"] == "body of third"
    assert in3["in_app"]["data"] == {"title": "third"}
    mail = items[1]
    assert (mail["channel"], mail["status"], mail["in_app"]) == ("email", "sent", None)
    # Same user id in another tenant: only that tenant's notification.
    other = listing(client, bearer(issuer, "ada", tenant="tenant-b"))
    assert [i["notification_id"] for i in other] == [seeded["tenant_b_ada"]]


def test_pages_follow_the_cursor(
    client: TestClient, issuer: Issuer, seeded: dict[str, Any]
) -> None:
    headers = bearer(issuer, "ada")
    seen: list[str] = []
    pages = 0
    cursor = ""
    while True:
        response = client.get(f"/api/v1/me/notifications?limit=2{cursor}", headers=headers)
        assert response.status_code == 200, response.text
        page = response.json()
        pages += 1
        assert len(page["items"]) <= 2
        seen += [i["notification_id"] for i in page["items"]]
        if page["next_cursor"] is None:
            break
        cursor = f"&cursor={page['next_cursor']}"
    assert pages == 3
    assert seen == [i["notification_id"] for i in listing(client, headers)]
    assert len(set(seen)) == 5

    bad = client.get("/api/v1/me/notifications?cursor=not-a-cursor", headers=headers)
    assert bad.status_code == 400 and "cursor" in bad.json()["message"]
    for limit in (0, 101):
        response = client.get(f"/api/v1/me/notifications?limit={limit}", headers=headers)
        assert response.status_code == 422
        assert response.json()["detail"][0]["field"] == "query.limit"


def test_filters(client: TestClient, issuer: Issuer, seeded: dict[str, Any]) -> None:
    ada, headers = seeded["ada"], bearer(issuer, "ada")

    def ids(query: str) -> list[str]:
        return [i["notification_id"] for i in listing(client, headers, query)]

    assert ids("?channel=email") == [ada["mail"]]
    assert ids("?channel=email&channel=sms") == [ada["sms"], ada["mail"]]
    assert ids("?status=failed") == [ada["sms"]]
    assert ids("?status=delivered&channel=in_app") == [ada["in3"], ada["in2"], ada["in1"]]
    assert ids("?since=2024-03-01T11:00:00Z&until=2024-03-01T13:00:00Z") == [
        ada["in3"],
        ada["in2"],
    ]
    assert ids("?since=2024-03-02") == [ada["sms"]]  # a date: midnight UTC
    assert ids("?until=2024-03-01T11:00:00") == [ada["in1"]]  # no zone: UTC
    assert ids("?unread=true") == [ada["in3"], ada["in2"], ada["in1"]]
    assert ids("?unread=false") == []
    for query, field in (
        ("?status=lost", "query.status.0"),
        ("?channel=fax", "query.channel.0"),
        ("?since=yesterday", "query.since"),
    ):
        response = client.get(f"/api/v1/me/notifications{query}", headers=headers)
        assert response.status_code == 422, query
        assert response.json()["detail"][0]["field"] == field


def test_unread_count(client: TestClient, issuer: Issuer, seeded: dict[str, Any]) -> None:
    response = client.get("/api/v1/me/notifications/unread-count", headers=bearer(issuer, "ada"))
    assert response.status_code == 200, response.text
    assert response.json() == {"unread": 3}


# -- actions -------------------------------------------------------------------------------------


def unread_count(client: TestClient, headers: dict[str, str]) -> int:
    response = client.get("/api/v1/me/notifications/unread-count", headers=headers)
    assert response.status_code == 200, response.text
    count: int = response.json()["unread"]
    return count


def read_at(client: TestClient, headers: dict[str, str], nid: str) -> str | None:
    [item] = [i for i in listing(client, headers, "?limit=100") if i["notification_id"] == nid]
    value: str | None = item["read_at"]
    return value


def test_read_then_unread_then_read_again(
    client: TestClient,
    issuer: Issuer,
    seeded: dict[str, Any],
    settings: Settings,
    topics: TopicCatalog,
) -> None:
    headers = bearer(issuer, "cleo")
    nid = seeded["cleo"]["toggle"]
    path = f"/api/v1/me/notifications/{nid}"

    first = client.post(f"{path}/read", headers=headers)
    assert first.status_code == 202, first.text
    assert first.json()["status"] == "read"
    first_read = wait_for(lambda: read_at(client, headers, nid), 15, "read_at to be set")

    # A second click on "read" keeps the first read time.
    assert client.post(f"{path}/read", headers=headers).status_code == 202
    unread = client.post(f"{path}/unread", headers=headers)
    assert unread.status_code == 202, unread.text
    wait_for(lambda: read_at(client, headers, nid) is None, 15, "read_at to be cleared")

    # A retried POST with one Idempotency-Key is one event; the replay says so.
    keyed = {**headers, "Idempotency-Key": f"read-{nid}"}
    again = client.post(f"{path}/read", headers=keyed)
    retry = client.post(f"{path}/read", headers=keyed)
    assert again.status_code == retry.status_code == 202
    assert retry.headers.get("Idempotent-Replayed") == "true"
    assert retry.json() == again.json()
    last_read = wait_for(lambda: read_at(client, headers, nid), 15, "read_at to be set again")
    assert datetime.fromisoformat(last_read) > datetime.fromisoformat(first_read)

    actions = [e for e in events_of(settings, topics, nid) if e["stage"] == "inbox"]
    assert [e["status"] for e in actions] == ["read", "read", "unread", "read"]
    assert len({e["event_id"] for e in actions}) == 4
    assert {e["event_id"] for e in actions} >= {
        first.json()["event_id"],
        unread.json()["event_id"],
        again.json()["event_id"],
    }
    assert all(
        (e["tenant_id"], e["recipient_id"], e["channel"]) == ("tenant-a", "cleo", "in_app")
        for e in actions
    )


def test_mark_all_read(client: TestClient, issuer: Issuer, seeded: dict[str, Any]) -> None:
    headers = bearer(issuer, "cleo")
    before = unread_count(client, headers)
    assert before >= 2  # all1, all2 (and gone, unless deleted already)
    response = client.post("/api/v1/me/notifications/read-all", headers=headers)
    assert response.status_code == 202, response.text
    assert response.json()["marked"] == before
    assert response.json()["more"] is False
    wait_for(lambda: unread_count(client, headers) == 0, 15, "every message to be read")
    assert read_at(client, headers, seeded["cleo"]["all2"]) is not None
    # Only cleo's: ada's are untouched.
    assert unread_count(client, bearer(issuer, "ada")) == 3


def test_delete_hides_the_notification(
    client: TestClient, issuer: Issuer, seeded: dict[str, Any], engine: sa.Engine
) -> None:
    headers = bearer(issuer, "cleo")
    gone, mail = seeded["cleo"]["gone"], seeded["cleo"]["mail"]
    for nid in (gone, mail):
        response = client.delete(f"/api/v1/me/notifications/{nid}", headers=headers)
        assert response.status_code == 202, response.text
        assert response.json()["status"] == "deleted"

    def listed() -> set[str]:
        return {i["notification_id"] for i in listing(client, headers, "?limit=100")}

    wait_for(lambda: not listed() & {gone, mail}, 15, "deleted notifications to disappear")
    assert seeded["cleo"]["toggle"] in listed()
    with engine.connect() as conn:
        deleted_at = conn.execute(
            sa.select(inbox.c.deleted_at).where(inbox.c.notification_id == gone)
        ).scalar_one()
    assert deleted_at is not None
    again = client.delete(f"/api/v1/me/notifications/{gone}", headers=headers)
    assert again.status_code == 404
    assert client.post(f"/api/v1/me/notifications/{gone}/read", headers=headers).status_code == 404


def test_read_state_follows_the_latest_action_in_any_order(
    seeder: Seeder, client: TestClient, issuer: Issuer, seeded: dict[str, Any]
) -> None:
    """The sink's rule: the latest read/unread decides; read_at is the first read since the
    last unread; the events may arrive in any order."""
    headers = bearer(issuer, "dave")
    nid = seeder.notification("tenant-a", "dave", "in_app", T0)
    t = T0 + 60_000
    for status, at in (("read", t + 3), ("unread", t + 2), ("read", t + 4), ("read", t + 1)):
        seeder.status(
            nid,
            "tenant-a",
            "dave",
            "in_app",
            status,
            occurred_at=at,
            event_id=status_event_id(nid, status, 0, str(at)),
        )
    seeder.flush()
    wait_for(lambda: listing(client, headers), 15, "the notification to be listed")
    wait_for(
        lambda: read_at(client, headers, nid) == "2024-03-01T10:01:00.003000Z",
        15,
        "read_at to be the first read after the unread",
    )
    seeder.status(
        nid,
        "tenant-a",
        "dave",
        "in_app",
        "unread",
        occurred_at=t + 5,
        event_id=status_event_id(nid, "unread", 0, "late"),
    )
    seeder.flush()
    wait_for(lambda: read_at(client, headers, nid) is None, 15, "the later unread to win")


# -- refusals ------------------------------------------------------------------------------------


def test_refusals(client: TestClient, issuer: Issuer, seeded: dict[str, Any]) -> None:
    bob, ada = seeded["bob"], seeded["ada"]
    endpoints = [
        ("GET", "/api/v1/me/notifications"),
        ("GET", "/api/v1/me/notifications/unread-count"),
        ("POST", f"/api/v1/me/notifications/{ada['in1']}/read"),
        ("POST", "/api/v1/me/notifications/read-all"),
        ("DELETE", f"/api/v1/me/notifications/{ada['in1']}"),
        ("GET", "/api/v1/me/preferences"),
    ]
    expired = issuer.bearer(issuer.token(sub="ada", ttl=-120))
    forged = issuer.bearer(issuer.token(sub="ada", key=new_key()))
    other_audience = issuer.bearer(issuer.token(sub="ada", aud="someone-else"))
    for method, path in endpoints:
        assert client.request(method, path).status_code == 401, path
        assert client.request(method, path, headers=KEY_A).status_code == 403, path
        for headers in (expired, forged, other_audience):
            response = client.request(method, path, headers=headers)
            assert response.status_code == 401, (path, response.text)
    assert client.put("/api/v1/me/preferences", json={}, headers=KEY_A).status_code == 403

    ada_headers = bearer(issuer, "ada")
    for nid in (bob, seeded["tenant_b_ada"], "no-such-id"):  # another user's, tenant's, none
        for action in ("read", "unread"):
            response = client.post(f"/api/v1/me/notifications/{nid}/{action}", headers=ada_headers)
            assert response.status_code == 404, (nid, response.text)
        assert (
            client.delete(f"/api/v1/me/notifications/{nid}", headers=ada_headers).status_code == 404
        )
    not_in_app = client.post(f"/api/v1/me/notifications/{ada['mail']}/read", headers=ada_headers)
    assert not_in_app.status_code == 409
    assert "in-app" in not_in_app.json()["message"]


# -- preferences ---------------------------------------------------------------------------------


def test_preferences_put_then_get(
    client: TestClient, issuer: Issuer, settings: Settings, topics: TopicCatalog
) -> None:
    headers = bearer(issuer, "erin")
    empty = client.get("/api/v1/me/preferences", headers=headers)
    assert empty.status_code == 200, empty.text
    assert empty.json()["source"] == "none"

    body = {
        "channels": {"sms": False},
        "categories": {"marketing": {"enabled": False, "channels": {"email": True}}},
        "templates": {"weekly-digest": {"enabled": False}},
        "quiet_hours": {"start": "22:00", "end": "07:30", "timezone": "Europe/Paris"},
        "frequency_caps": [{"channel": "push", "max_count": 3, "period_seconds": 3600}],
        "do_not_disturb": False,
    }
    put = client.put("/api/v1/me/preferences", json=body, headers=headers)
    assert put.status_code == 200, put.text
    assert put.json()["source"] == "user"
    got = client.get("/api/v1/me/preferences", headers=headers).json()
    assert got == put.json()
    assert got["categories"]["marketing"] == {"enabled": False, "channels": {"email": True}}
    assert got["frequency_caps"] == [
        {"channel": "push", "category": None, "max_count": 3, "period_seconds": 3600}
    ]

    # On users.preferences, keyed tenant:user, on the partition murmur2 gives that key (the
    # one the enrich stage reads the user's notifications from).
    topic = topics.name("users.preferences")
    key = "tenant-a:erin"
    partition = expected_partition(key, topics["users.preferences"].partitions)
    consumer = Consumer({"bootstrap.servers": settings.kafka_bootstrap_servers, "group.id": "x"})
    try:
        consumer.assign([TopicPartition(topic, partition, 0)])
        message = wait_for(lambda: consumer.poll(1), 10, "the preferences record")
    finally:
        consumer.close()
    assert message.key() == key.encode()
    record = CODEC.decode(message.value(), "Preferences")
    assert (record["tenant_id"], record["user_id"]) == ("tenant-a", "erin")
    assert record["channels"] == {"sms": False}
    assert record["quiet_hours"] == {"start": "22:00", "end": "07:30", "timezone": "Europe/Paris"}


def test_tenant_defaults_apply_without_a_user_record(
    client: TestClient, issuer: Issuer, settings: Settings, topics: TopicCatalog
) -> None:
    tenant = {
        "tenant_id": "tenant-d",
        "default_preferences": {"tenant_id": "tenant-d", "user_id": "", "channels": {"sms": False}},
    }
    producer = Producer(producer_config(settings))
    producer.produce(
        topics.name("config.tenants"), key=b"tenant-d", value=CODEC.encode("Tenant", tenant)
    )
    assert producer.flush(15) == 0
    headers = bearer(issuer, "finn", tenant="tenant-d")

    def defaults() -> dict[str, Any] | None:
        found: dict[str, Any] = client.get("/api/v1/me/preferences", headers=headers).json()
        return found if found["source"] == "tenant_default" else None

    found = wait_for(defaults, 10, "the tenant's defaults")
    assert found["channels"] == {"sms": False}
    assert found["updated_at"] is None


def test_invalid_preferences_are_refused_naming_the_field(
    client: TestClient, issuer: Issuer
) -> None:
    headers = bearer(issuer, "erin")
    cases = [
        ({"quiet_hours": {"start": "25:00", "end": "07:00"}}, "quiet_hours.start"),
        (
            {"quiet_hours": {"start": "22:00", "end": "07:00", "timezone": "Mars/Olympus"}},
            "quiet_hours.timezone",
        ),
        ({"channels": {"fax": True}}, "channels.fax.[key]"),
        ({"categories": {"gossip": {"enabled": False}}}, "categories.gossip.[key]"),
        (
            {"frequency_caps": [{"max_count": 0, "period_seconds": 60}]},
            "frequency_caps.0.max_count",
        ),
        ({"opted_out": "maybe"}, "opted_out"),
        ({"colour": "blue"}, "colour"),
    ]
    for body, field in cases:
        response = client.put("/api/v1/me/preferences", json=body, headers=headers)
        assert response.status_code == 422, (body, response.text)
        assert field in [d["field"] for d in response.json()["detail"]], response.json()


# -- the read model's tables ---------------------------------------------------------------------


def test_create_tables_adds_the_new_column_and_index_to_old_tables(
    postgres_url: str, tmp_path: Path
) -> None:
    """Tables created before `inbox.deleted_at` and the recipient index existed get them
    (create_all alone creates tables, never alters them); running it again changes nothing."""
    name = f"t_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    urls = [
        sa.make_url(postgres_url).set(database=name).render_as_string(hide_password=False),
        f"sqlite:///{tmp_path / 'old.db'}",
    ]
    try:
        for url in urls:
            engine = make_engine(url)
            try:
                old = sa.MetaData()
                for table in (inbox, notifications):
                    columns = [
                        sa.Column(c.name, c.type, primary_key=c.primary_key, nullable=c.nullable)
                        for c in table.columns
                        if c.name != "deleted_at"
                    ]
                    sa.Table(table.name, old, *columns)
                old.create_all(engine)
                create_tables(engine)
                create_tables(engine)
                found = sa.inspect(engine)
                assert "deleted_at" in {c["name"] for c in found.get_columns("inbox")}, url
                indexes = {i["name"] for i in found.get_indexes("notifications")}
                assert "ix_notifications_tenant_recipient" in indexes, url
            finally:
                engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
