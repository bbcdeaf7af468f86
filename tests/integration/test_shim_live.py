"""Live updates over Server-Sent Events, against the real broker and the real pipeline.

The shim runs under a real uvicorn server in a thread (TestClient would buffer the stream);
the streams are read with httpx. The end-to-end test sends an in-app notification through the
shim's POST /api/v1/notifications to the real worker and measures how long it takes to reach
the user's open stream. The other tests produce status events and in-app messages straight
onto the pipeline's topics (what the worker would write), which keeps them fast and exact.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from confluent_kafka import Producer

from core.catalog import TopicCatalog
from core.ids import expected_partition
from core.kafka_clients import producer_config
from core.settings import Settings
from schemas import SchemaCatalog, build_codec
from tests.support.jwks import Issuer
from tests.support.pipeline import Pipeline
from tests.support.shim_server import ShimServer
from tests.support.smtp import SmtpCapture

pytestmark = pytest.mark.integration

CODEC = build_codec(None, SchemaCatalog.load())
KEY_A = {"X-API-Key": "key-a"}
KEY_C = {"X-API-Key": "key-c"}
LATENCY_LIMIT_SECONDS = 1.0


# -- a real server and an SSE reader -------------------------------------------------------------


@dataclass
class Event:
    id: str | None
    event: str
    data: dict[str, Any]
    received: float  # time.monotonic() when its last line was read


class Stream:
    """An open SSE response, read line by line. The server sends a comment at least every
    keepalive, so each read returns in time to check a deadline."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.lines = response.iter_lines()
        self.start_id: str | None = None
        self.keepalives = 0
        first = self._block(time.monotonic() + 10)
        assert first is not None and first.event == "", first
        self.start_id = first.id  # the position the stream starts at

    def _block(self, deadline: float) -> Event | None:
        """The next block (event, or the id-only opening block); None past the deadline."""
        fields: dict[str, str] = {}
        while time.monotonic() < deadline:
            line = next(self.lines)
            if line.startswith(":"):
                self.keepalives += "keepalive" in line
                continue
            if line:
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
                continue
            if fields.get("data") is not None or "id" in fields:
                data = json.loads(fields["data"]) if "data" in fields else {}
                return Event(fields.get("id"), fields.get("event", ""), data, time.monotonic())
        return None

    def next(self, timeout: float = 10) -> Event:
        event = self._block(time.monotonic() + timeout)
        if event is None:
            raise AssertionError(f"no event within {timeout}s")
        return event

    def collect(self, count: int, timeout: float = 10) -> list[Event]:
        return [self.next(timeout) for _ in range(count)]

    def quiet_for(self, seconds: float) -> list[Event]:
        """Events arriving within `seconds` (there should be none)."""
        found = []
        deadline = time.monotonic() + seconds
        while (event := self._block(deadline)) is not None:
            found.append(event)
        return found


@contextmanager
def stream(url: str, headers: dict[str, str]) -> Iterator[Stream]:
    with (
        httpx.Client(timeout=httpx.Timeout(10, read=10)) as client,
        client.stream("GET", url, headers=headers) as response,
    ):
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        yield Stream(response)


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    with Issuer() as issuer:
        yield issuer


@pytest.fixture(scope="module")
def live_pipeline(
    kafka_bootstrap: str, fresh_database: str, smtp: SmtpCapture, log_dir: Path
) -> Iterator[Pipeline]:
    """The real worker (and sink) on this module's topics; the shim runs in-process."""
    pipe = Pipeline(
        bootstrap=kafka_bootstrap, database_url=fresh_database, smtp_port=smtp.port, log_dir=log_dir
    )
    pipe.start()
    try:
        yield pipe
    finally:
        pipe.stop()


@pytest.fixture(scope="module")
def settings(live_pipeline: Pipeline, issuer: Issuer) -> Settings:
    return live_pipeline.settings.model_copy(
        update={
            "shim_api_keys": {"key-a": "tenant-a", "key-c": "tenant-c"},
            "shim_sse_keepalive_seconds": 0.3,
            **issuer.settings(),
        }
    )


@pytest.fixture(scope="module")
def server(settings: Settings) -> Iterator[ShimServer]:
    with ShimServer(settings) as server:
        yield server


class Writer:
    """Writes status events and in-app messages as the worker would."""

    def __init__(self, settings: Settings) -> None:
        self.producer = Producer(producer_config(settings))
        self.topics = TopicCatalog.load(settings)
        self.partitions = self.topics["notifications.status"].partitions

    def status(
        self,
        tenant: str,
        user: str,
        status: str,
        *,
        nid: str | None = None,
        batch_id: str | None = None,
    ) -> str:
        nid = nid or str(uuid.uuid4())
        now = int(time.time() * 1000)
        event = {
            "event_id": str(uuid.uuid4()),
            "notification_id": nid,
            "request_id": "req",
            "tenant_id": tenant,
            "batch_id": batch_id,
            "channel": "in_app",
            "recipient_id": user,
            "status": status,
            "stage": "test",
            "request_occurred_at": now,
            "occurred_at": now,
        }
        self.producer.produce(
            self.topics.name("notifications.status"),
            key=nid.encode(),
            value=CODEC.encode("StatusEvent", event),
        )
        return nid

    def message(self, tenant: str, user: str, title: str) -> str:
        nid = str(uuid.uuid4())
        record = {
            "notification_id": nid,
            "tenant_id": tenant,
            "user_id": user,
            "title": title,
            "body": f"body of {title}",
            "created_at": int(time.time() * 1000),
        }
        self.producer.produce(
            self.topics.name("notifications.inbox"),
            key=f"{tenant}:{user}".encode(),
            value=CODEC.encode("InAppMessage", record),
        )
        return nid

    def on_every_partition(self, tenant: str, user: str, status: str) -> set[str]:
        """One status event per partition (ids chosen by where murmur2 puts them): once all
        have arrived, everything written before them has been read."""
        ids: dict[int, str] = {}
        while len(ids) < self.partitions:
            nid = str(uuid.uuid4())
            ids.setdefault(expected_partition(nid, self.partitions), nid)
        return {self.status(tenant, user, status, nid=nid) for nid in ids.values()}

    def flush(self) -> None:
        assert self.producer.flush(15) == 0


@pytest.fixture(scope="module")
def writer(settings: Settings) -> Writer:
    return Writer(settings)


def bearer(issuer: Issuer, sub: str, tenant: str = "tenant-a", **kw: Any) -> dict[str, str]:
    return issuer.bearer(issuer.token(sub=sub, tenant_id=tenant, **kw))


# -- (a) end to end: request -> worker -> the user's stream within a second -----------------------


def send_in_app(server: ShimServer, user: str, text: str) -> str:
    body = {
        "recipients": [{"user_id": user}],
        "channels": ["in_app"],
        "content": {"subject": "Live", "text": text},
    }
    response = httpx.post(f"{server.url}/api/v1/notifications", json=body, headers=KEY_A)
    assert response.status_code == 202, response.text
    [ref] = response.json()["notifications"]
    nid: str = ref["notification_id"]
    return nid


def test_in_app_message_reaches_the_open_stream_within_a_second(
    server: ShimServer, issuer: Issuer, live_pipeline: Pipeline
) -> None:
    # Warm up: the worker has just started (group join, table recovery).
    with stream(f"{server.url}/api/v1/me/stream", bearer(issuer, "warm-up")) as warm:
        nid = send_in_app(server, "warm-up", "warming up")
        deadline = time.monotonic() + 120
        while True:
            live_pipeline.assert_alive()
            event = warm.next(timeout=max(0.1, deadline - time.monotonic()))
            if event.event == "message" and event.data["notification_id"] == nid:
                break

    with stream(f"{server.url}/api/v1/me/stream", bearer(issuer, "lina")) as live:
        sent_at = time.monotonic()
        nid = send_in_app(server, "lina", "hello, live")
        event = live.next(timeout=10)
        latency = event.received - sent_at
        print(f"\nin-app message on the live stream {latency * 1000:.0f} ms after the request")
        assert event.event == "message"
        assert event.data["notification_id"] == nid
        assert event.data["title"] == "Live"
        assert event.data["body"] == "hello, live"
        assert latency < LATENCY_LIMIT_SECONDS, f"{latency:.3f}s"


# -- (b) resume with Last-Event-ID ----------------------------------------------------------------


def test_resume_from_last_event_id_misses_and_repeats_nothing(
    server: ShimServer, issuer: Issuer, writer: Writer
) -> None:
    url = f"{server.url}/api/v1/me/stream"
    headers = bearer(issuer, "rey")

    def noise() -> None:  # never for rey: another user, the same user id in another tenant
        writer.message("tenant-a", "finn", "not rey's")
        writer.message("tenant-b", "rey", "not rey's either")
        writer.status("tenant-a", "finn", "read")
        writer.status("tenant-b", "rey", "read")
        writer.status("tenant-a", "rey", "delivered")  # rey's, but not a read-state change

    with stream(url, headers) as first:
        noise()
        before = {writer.message("tenant-a", "rey", f"m{i}") for i in range(3)}
        before.add(writer.status("tenant-a", "rey", "read"))
        writer.flush()
        got = first.collect(2)
        last_id = got[-1].id
    assert last_id is not None

    # While disconnected: the rest of the first batch is still unread, and more arrive.
    noise()
    after = {writer.message("tenant-a", "rey", f"later{i}") for i in range(2)}
    after.add(writer.status("tenant-a", "rey", "unread"))
    after.add(writer.status("tenant-a", "rey", "deleted"))
    writer.flush()

    with stream(url, {**headers, "Last-Event-ID": last_id}) as resumed:
        rest = resumed.collect(len(before) + len(after) - 2)
        assert resumed.quiet_for(1.0) == []
    seen = [e.data["notification_id"] for e in got + rest]
    assert len(seen) == len(set(seen)), "an event was repeated"
    assert set(seen) == before | after, "an event was lost, or another user's was sent"
    states = {e.data["status"] for e in got + rest if e.event == "read_state"}
    assert states == {"read", "unread", "deleted"}
    messages = [e for e in got + rest if e.event == "message"]
    assert all(e.data["body"].startswith("body of ") for e in messages)


def test_a_stream_that_saw_nothing_resumes_from_its_opening_id(
    server: ShimServer, issuer: Issuer, writer: Writer
) -> None:
    url = f"{server.url}/api/v1/me/stream"
    headers = bearer(issuer, "sam")
    with stream(url, headers) as idle:
        opening = idle.start_id
    assert opening is not None
    nid = writer.message("tenant-a", "sam", "while away")
    writer.flush()
    with stream(url, {**headers, "Last-Event-ID": opening}) as resumed:
        assert resumed.next().data["notification_id"] == nid


def test_bad_last_event_id_is_400(server: ShimServer, issuer: Issuer) -> None:
    headers = bearer(issuer, "rey")
    with stream(f"{server.url}/api/v1/events/stream", KEY_A) as tenant_stream:
        tenant_id = tenant_stream.start_id
    assert tenant_id is not None
    for bad in ("garbage", "s0:1,s0:2", "s0:-1", tenant_id):  # the last: another stream's id
        response = httpx.get(
            f"{server.url}/api/v1/me/stream", headers={**headers, "Last-Event-ID": bad}
        )
        assert response.status_code == 400, (bad, response.text)
        assert "Last-Event-ID" in response.json()["message"]


# -- (c) the tenant stream ------------------------------------------------------------------------


def test_tenant_stream_has_only_the_tenants_events(
    server: ShimServer, issuer: Issuer, writer: Writer
) -> None:
    # tenant-c: no other test (nor the worker) writes its events, so every one is accounted for.
    url = f"{server.url}/api/v1/events/stream"
    with (
        stream(url, KEY_C) as tenant_c,
        stream(f"{url}?status=delivered&batch_id=b-7", KEY_C) as filtered,
        stream(url, bearer(issuer, "vera", tenant="tenant-c", roles=["viewer"])) as viewer,
    ):
        other = {writer.status("tenant-d", "u", s) for s in ("accepted", "delivered", "failed")}
        other.add(writer.status("tenant-d", "u", "delivered", batch_id="b-7"))
        mine = {writer.status("tenant-c", "u", s) for s in ("accepted", "sent", "delivered")}
        wanted = writer.status("tenant-c", "u", "delivered", batch_id="b-7")
        mine.add(writer.status("tenant-c", "u", "failed", batch_id="b-7"))
        # Last on every partition: when these are in, every earlier event has been read.
        sentinels = writer.on_every_partition("tenant-c", "u", "delivered")
        writer.flush()

        expected = mine | {wanted} | sentinels
        for reader in (tenant_c, viewer):
            events = reader.collect(len(expected))
            ids = [e.data["notification_id"] for e in events]
            assert set(ids) == expected, "another tenant's event was sent, or one was lost"
            assert {e.data["tenant_id"] for e in events} == {"tenant-c"}
            assert {e.event for e in events} == {"status"}
            assert reader.quiet_for(0.5) == []
        only = filtered.next()
        assert only.data["notification_id"] == wanted
        assert (only.data["status"], only.data["batch_id"]) == ("delivered", "b-7")
        assert filtered.quiet_for(0.5) == []
    assert not other & expected


def test_stream_refusals(server: ShimServer, issuer: Issuer) -> None:
    me, events = f"{server.url}/api/v1/me/stream", f"{server.url}/api/v1/events/stream"
    assert httpx.get(me).status_code == 401
    assert httpx.get(events).status_code == 401
    assert httpx.get(me, headers=KEY_A).status_code == 403  # an API key is not a user
    # A user without the viewer or admin role has no read access to the tenant's events.
    assert httpx.get(events, headers=bearer(issuer, "rey")).status_code == 403
    expired = issuer.bearer(issuer.token(sub="rey", ttl=-120))
    assert httpx.get(me, headers=expired).status_code == 401
    assert httpx.get(f"{events}?status=lost", headers=KEY_A).status_code == 422


# -- (d) limits: streams per tenant and per caller, how far back a resume replays ----------------

KEY_E = {"X-API-Key": "key-e"}
KEY_E2 = {"X-API-Key": "key-e2"}  # another key of tenant-e
KEY_F = {"X-API-Key": "key-f"}
REPLAY_MAX_MESSAGES = 3
REPLAY_MAX_SECONDS = 4.0


@pytest.fixture(scope="module")
def limited(settings: Settings) -> Iterator[ShimServer]:
    """A shim with small live-stream quotas and replay bound."""
    keys = {"key-e": "tenant-e", "key-e2": "tenant-e", "key-f": "tenant-f", "key-g": "tenant-g"}
    small = settings.model_copy(
        update={
            "shim_api_keys": {**settings.shim_api_keys, **keys},
            "shim_sse_max_streams_per_tenant": 2,
            "shim_sse_max_streams_per_principal": 1,
            "shim_sse_replay_max_messages": REPLAY_MAX_MESSAGES,
            "shim_sse_replay_max_seconds": REPLAY_MAX_SECONDS,
        }
    )
    with ShimServer(small) as server:
        yield server


def refused(url: str, headers: dict[str, str]) -> httpx.Response:
    """The answer to a stream request that must not open."""
    with httpx.Client(timeout=10) as client, client.stream("GET", url, headers=headers) as r:
        assert r.status_code != 200, "the stream opened"
        r.read()
        return r


def test_streams_are_limited_per_caller_and_per_tenant(limited: ShimServer, issuer: Issuer) -> None:
    url = f"{limited.url}/api/v1/events/stream"
    viewer = bearer(issuer, "eve", tenant="tenant-e", roles=["viewer"])
    # Each stream is held by a name: a reader dropped at once would close its connection.
    with stream(url, KEY_E) as first:
        again = refused(url, KEY_E)  # the same key: its share is one
        assert again.status_code == 429, again.text
        assert int(again.headers["Retry-After"]) >= 1
        assert "these credentials" in again.json()["message"]
        with stream(url, KEY_E2) as second:  # another key of the tenant: its second stream
            third = refused(url, viewer)  # a user of the tenant: over the tenant's two
            assert third.status_code == 429, third.text
            assert "this tenant" in third.json()["message"]
            with stream(url, KEY_F) as other:  # another tenant is not affected
                assert other.start_id is not None
            # The refused requests left the open streams alone.
            assert first.quiet_for(0.5) == [] and second.quiet_for(0.5) == []
            assert first.keepalives and second.keepalives
    # Closed streams give their slots back (once the server sees the client gone).
    deadline = time.monotonic() + 10
    while True:
        with httpx.Client(timeout=10) as client, client.stream("GET", url, headers=viewer) as r:
            if r.status_code == 200:
                break
        assert time.monotonic() < deadline, "the slots of closed streams were not given back"
        time.sleep(0.3)


def on_partition(partition: int, partitions: int) -> str:
    """A notification id murmur2 puts on `partition` (status events are keyed by it)."""
    while expected_partition(nid := str(uuid.uuid4()), partitions) != partition:
        pass
    return nid


def resumed_events(url: str, headers: dict[str, str], last_id: str) -> list[Event]:
    with stream(url, {**headers, "Last-Event-ID": last_id}) as resumed:
        return resumed.quiet_for(2.0)


def test_a_resume_replays_no_more_than_the_bound_and_says_so(
    limited: ShimServer, writer: Writer
) -> None:
    url = f"{limited.url}/api/v1/events/stream"
    with stream(url, KEY_F) as opened:
        opening = opened.start_id
    assert opening is not None
    mine = [
        writer.status("tenant-f", "u", "sent", nid=on_partition(0, writer.partitions))
        for _ in range(8)
    ]
    writer.flush()

    events = resumed_events(url, KEY_F, opening)
    assert events and events[0].event == "replay_truncated", [e.event for e in events]
    resumed_from = events[0].data["resumed_from"]
    assert events[0].id == resumed_from
    got = [e.data["notification_id"] for e in events[1:]]
    assert {e.event for e in events[1:]} == {"status"}
    # At most the last REPLAY_MAX_MESSAGES messages of partition 0 (other writers may have
    # added some of theirs): never the older ones.
    assert got and set(got) <= set(mine[-REPLAY_MAX_MESSAGES:]), got

    # A resume within the bound is exact and not flagged.
    last = events[-1].id
    assert last is not None
    more = writer.status("tenant-f", "u", "delivered", nid=on_partition(0, writer.partitions))
    writer.flush()
    again = resumed_events(url, KEY_F, last)
    assert [(e.event, e.data["notification_id"]) for e in again] == [("status", more)]


def test_a_resume_replays_no_further_back_than_the_time_bound(
    limited: ShimServer, writer: Writer
) -> None:
    url = f"{limited.url}/api/v1/events/stream"
    headers = {"X-API-Key": "key-g"}
    with stream(url, headers) as opened:
        opening = opened.start_id
    assert opening is not None
    old = writer.status("tenant-g", "u", "sent", nid=on_partition(1, writer.partitions))
    writer.flush()
    time.sleep(REPLAY_MAX_SECONDS + 1)
    new = writer.status("tenant-g", "u", "delivered", nid=on_partition(1, writer.partitions))
    writer.flush()

    events = resumed_events(url, headers, opening)
    assert [e.event for e in events] == ["replay_truncated", "status"]
    assert events[1].data["notification_id"] == new != old
