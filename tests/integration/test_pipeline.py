"""End to end on the real broker: shim and upstream producers -> SMTP, in-app and Postgres."""

from __future__ import annotations

import json
import re
import secrets
import time
import uuid
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

from core.ids import expected_partition, notification_id
from core.kafka_clients import admin_config, client_config
from tests.integration.conftest import now_ms
from tests.support import requests
from tests.support.pipeline import Pipeline, wait_until
from tests.support.smtp import SmtpCapture

pytestmark = pytest.mark.integration
# This module's worker, sink and shim log one JSON object per line (core/logs.py).
PIPELINE_ENV = {"LOG_FORMAT": "json"}

HEADERS = {"X-API-Key": "key-acme"}
CONTENT = {
    "subject": "Order {{ order_id }} confirmed",
    "text": "Hello {{ name }}, your order {{ order_id }} is on its way.",
    "html": "<p>Hello {{ name }}, order <b>{{ order_id }}</b></p>",
}


def shim_body(user: str, **extra: Any) -> dict[str, Any]:
    return {
        "recipients": [{"user_id": user, "email": f"{user}@example.test"}],
        "channels": ["email"],
        "content": CONTENT,
        "data": {"name": user.upper(), "order_id": f"o-{user}"},
        **extra,
    }


def request_record(user: str, **extra: Any) -> dict[str, Any]:
    """A NotificationRequest as an upstream service would publish it (an order confirmation)."""
    fields = {"content": CONTENT, **extra}
    return requests.request_record(
        user, data={"name": user.upper(), "order_id": f"o-{user}"}, **fields
    )


def sink_states(pipeline: Pipeline, ids: list[str]) -> dict[str, str]:
    engine = sa.create_engine(pipeline.settings.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text(
                    "SELECT notification_id, status FROM notifications "
                    "WHERE notification_id = ANY(:ids)"
                ),
                {"ids": ids},
            ).all()
        return {row[0]: row[1] for row in rows}
    finally:
        engine.dispose()


def test_shim_and_upstream_notifications_arrive_once_rendered_and_reach_sent(
    pipeline: Pipeline, smtp: SmtpCapture, kafka_bootstrap: str
) -> None:
    expected: dict[str, str] = {}  # notification id -> user
    with httpx.Client(base_url=pipeline.shim_url, headers=HEADERS, timeout=30) as client:
        for i in range(200):
            user = f"shim{i}"
            response = client.post("/api/v1/notifications", json=shim_body(user))
            assert response.status_code == 202, response.text
            [item] = response.json()["notifications"]
            expected[item["notification_id"]] = user

    # An upstream service: a plain confluent-kafka producer with its default settings.
    upstream = Producer({"bootstrap.servers": kafka_bootstrap})
    topic = pipeline.topics.name("notifications.requests")
    for i in range(200):
        user = f"up{i}"
        record = request_record(user)
        upstream.produce(
            topic, key=f"acme:{user}", value=pipeline.codec.encode("NotificationRequest", record)
        )
        expected[notification_id(record["tenant_id"], record["request_id"], user, "email")] = user
    assert upstream.flush(30) == 0

    smtp.wait_for(400, timeout=180, check=pipeline.assert_alive)
    time.sleep(1)  # a duplicate would arrive right behind
    received = smtp.by_notification_id()
    ours = {nid: msgs for nid, msgs in received.items() if nid in expected}
    assert len(ours) == 400, f"{400 - len(ours)} notifications never reached SMTP"
    duplicates = {nid: len(msgs) for nid, msgs in ours.items() if len(msgs) != 1}
    assert not duplicates, f"sent more than once: {duplicates}"
    for nid, [message] in ours.items():
        user = expected[nid]
        assert message["To"] == f"{user}@example.test"
        assert message["Subject"] == f"Order o-{user} confirmed"
        text = message.get_body(preferencelist=("plain",)).get_content()
        assert f"Hello {user.upper()}, your order o-{user} is on its way." in text
        html = message.get_body(preferencelist=("html",)).get_content()
        assert f"<b>o-{user}</b>" in html

    ids = list(expected)
    wait_until(
        lambda: (
            set(sink_states(pipeline, ids).values()) == {"sent"}
            and len(sink_states(pipeline, ids)) == 400
        ),
        60,
        "the Postgres sink to show all 400 as sent",
    )


def test_opted_out_recipient_is_suppressed_and_never_sent(
    pipeline: Pipeline, smtp: SmtpCapture
) -> None:
    prefs = {
        "tenant_id": "acme",
        "user_id": "quiet",
        "opted_out": True,
        "channels": {},
        "updated_at": now_ms(),
    }
    no_email = {
        "tenant_id": "acme",
        "user_id": "noemail",
        "opted_out": False,
        "channels": {"email": False},
        "updated_at": now_ms(),
    }
    pipeline.produce_record("users.preferences", "acme:quiet", prefs)
    pipeline.produce_record("users.preferences", "acme:noemail", no_email)
    pipeline.flush()
    time.sleep(2)  # a stream-table join sees preferences once the worker has read them

    with httpx.Client(base_url=pipeline.shim_url, headers=HEADERS, timeout=30) as client:
        ids = {}
        for user in ("quiet", "noemail", "chatty"):
            response = client.post("/api/v1/notifications", json=shim_body(user))
            assert response.status_code == 202, response.text
            ids[user] = response.json()["notifications"][0]["notification_id"]

    pipeline.wait_for_status([ids["chatty"]], {"sent"})
    pipeline.wait_for_status([ids["quiet"], ids["noemail"]], {"suppressed"})
    reasons = {
        user: [e["reason"] for e in pipeline.statuses[nid] if e["status"] == "suppressed"]
        for user, nid in ids.items()
        if user != "chatty"
    }
    assert reasons == {
        "quiet": ["recipient opted out of all notifications"],
        "noemail": ["recipient disabled the email channel"],
    }
    sent = smtp.by_notification_id()
    assert ids["quiet"] not in sent and ids["noemail"] not in sent
    assert len(sent[ids["chatty"]]) == 1
    for user in ("quiet", "noemail"):
        assert "sent" not in pipeline.latest(ids[user])


def test_duplicate_idempotency_key_is_sent_once(pipeline: Pipeline, smtp: SmtpCapture) -> None:
    key = f"order-{uuid.uuid4()}"
    with httpx.Client(base_url=pipeline.shim_url, headers=HEADERS, timeout=30) as client:
        first, retried = (
            client.post(
                "/api/v1/notifications", json=shim_body("dup"), headers={"Idempotency-Key": key}
            )
            for _ in range(2)
        )
    assert first.status_code == retried.status_code == 202
    # The shim replays its first answer: the retry is the same request, not a second one.
    assert retried.json() == first.json()
    assert retried.headers["Idempotent-Replayed"] == "true"
    first_id = first.json()["notifications"][0]["notification_id"]

    # An upstream service that publishes the same key as a new request: the stream
    # recognises it and sends nothing more.
    upstream = requests.request_record("dup", tenant="acme", idempotency_key=key)
    second_id = requests.produce_request(pipeline, upstream)

    pipeline.wait_for_status([first_id], {"sent"})
    pipeline.wait_for_status([second_id], {"duplicate"})
    sent = smtp.by_notification_id()
    assert len(sent[first_id]) == 1
    assert second_id not in sent
    [duplicate] = [e for e in pipeline.statuses[second_id] if e["status"] == "duplicate"]
    assert first.json()["request_id"] in duplicate["reason"]


def test_malformed_request_is_dead_lettered_and_the_partition_moves_on(
    pipeline: Pipeline, smtp: SmtpCapture
) -> None:
    key = "acme:poisoned"  # the same key: the same partition, right behind the poison
    pipeline.produce("notifications.requests", key, b"\xc3\x01not avro at all")
    pipeline.produce("notifications.requests", key, b'{"json": "is not avro"}')
    behind = request_record("poisoned")
    pipeline.produce_record("notifications.requests", key, behind)
    pipeline.flush()

    nid = notification_id(behind["tenant_id"], behind["request_id"], "poisoned", "email")
    pipeline.wait_for_status([nid], {"sent"})
    assert len(smtp.by_notification_id()[nid]) == 1

    def dead_letters() -> list[dict[str, Any]]:
        records = [
            pipeline.codec.decode(m.value(), "DeadLetter")
            for m in pipeline.read_topic("notifications.dead-letter")
        ]
        return [r for r in records if r["stage"] == "request" and r["key"] == key.encode()]

    letters = wait_until(
        lambda: len(dead_letters()) == 2 and dead_letters(), 30, "two dead letters"
    )
    assert {letter["value"] for letter in letters} == {
        b"\xc3\x01not avro at all",
        b'{"json": "is not avro"}',
    }
    assert all(
        letter["error_type"] in {"CorruptMessageError", "UnknownSchemaError"} for letter in letters
    ), letters
    assert all(letter["error"] for letter in letters)


def test_json_logs_carry_the_stage_and_the_trace_of_the_message(pipeline: Pipeline) -> None:
    trace_id = secrets.token_hex(16)
    traceparent = f"00-{trace_id}-{secrets.token_hex(8)}-01".encode()
    pipeline.produce(
        "notifications.requests", "acme:json-logs", b"\xc3\x01poison", {"traceparent": traceparent}
    )
    pipeline.flush()

    def warning_line() -> str | None:
        lines = pipeline.worker.log_path.read_text(errors="replace").splitlines()
        return next((line for line in lines if trace_id in line), None)

    record = json.loads(wait_until(warning_line, 60, "the dead-letter warning, traced"))
    assert record["level"] == "warning" and "dead-lettering" in record["message"]
    assert record["stage"] == "request" and record["trace_id"] == trace_id
    assert record["logger"] == "streams.runtime.events"
    # Faust's start-up banner is not printed among the JSON lines.
    assert "| transport " not in pipeline.worker.log_path.read_text(errors="replace")

    # The sink and the shim log through the same formatter: JSON lines, none in text.
    text_format = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ )?[A-Z]+:? ")
    for process in (pipeline.sink, pipeline.shim):
        lines = process.log_path.read_text(errors="replace").splitlines()
        assert [json.loads(line)["logger"] for line in lines if line.startswith("{")], process.name
        assert not [line for line in lines if text_format.match(line)], process.name


def test_invalid_request_gets_failed_status_with_the_reason(pipeline: Pipeline) -> None:
    record = request_record("badjson", data_json="[1, 2]")
    pipeline.produce_record("notifications.requests", "acme:badjson", record)
    pipeline.flush()
    nid = notification_id(record["tenant_id"], record["request_id"], "badjson", "email")
    pipeline.wait_for_status([nid], {"failed"})
    [failed] = [e for e in pipeline.statuses[nid] if e["status"] == "failed"]
    assert failed["reason"] == "data_json: must be a JSON object"
    assert failed["retriable"] is False


def test_template_error_fails_without_retry(pipeline: Pipeline, smtp: SmtpCapture) -> None:
    record = request_record(
        "tplerr", content={"subject": "Hi", "text": "Hello {{ missing }}", "html": None}
    )
    pipeline.produce_record("notifications.requests", "acme:tplerr", record)
    pipeline.flush()
    nid = notification_id(record["tenant_id"], record["request_id"], "tplerr", "email")
    pipeline.wait_for_status([nid], {"failed"})
    [failed] = [e for e in pipeline.statuses[nid] if e["status"] == "failed"]
    assert failed["stage"] == "render" and "missing" in failed["reason"]
    assert not failed["retriable"]
    assert nid not in smtp.by_notification_id()


TEMPLATE_BOMBS = [
    "{{ 9**(9**9) }}",  # Python's 9**9**9: compiling it used to hang the worker's event loop
    "{{ 'x' * 30000000 }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
]


def test_template_bombs_fail_at_render_and_the_partition_keeps_moving(
    pipeline: Pipeline, smtp: SmtpCapture
) -> None:
    """Issue 21, HIGH 2: each bomb is `failed` at render (not retriable) within its time
    budget, and the clean message behind them on the same partition is sent."""
    started = time.monotonic()
    ids = []
    for source in [*TEMPLATE_BOMBS, "Hi {{ name }}"]:
        record = request_record("tplbomb", content={"subject": "Hi", "text": source, "html": None})
        pipeline.produce_record("notifications.requests", "acme:tplbomb", record)
        ids.append(notification_id(record["tenant_id"], record["request_id"], "tplbomb", "email"))
    pipeline.flush()
    *bombs, clean = ids
    pipeline.wait_for_status([clean], {"sent"}, timeout=60)
    pipeline.wait_for_status(bombs, {"failed"}, timeout=10)
    elapsed = time.monotonic() - started
    for nid in bombs:
        [failed] = [e for e in pipeline.statuses[nid] if e["status"] == "failed"]
        assert failed["stage"] == "render" and not failed["retriable"], failed
        assert nid not in smtp.by_notification_id()
    pipeline.assert_alive()
    # Three bombs at most a 1 s budget each, plus the pipeline's own latency.
    assert elapsed < 30, f"the partition took {elapsed:.1f} s to get past the bombs"


def test_in_app_notification_lands_in_the_inbox(pipeline: Pipeline) -> None:
    with httpx.Client(base_url=pipeline.shim_url, headers=HEADERS, timeout=30) as client:
        response = client.post(
            "/api/v1/notifications",
            json={
                "recipients": [{"user_id": "inboxer"}],
                "channels": ["in_app"],
                "content": {
                    "subject": "Welcome {{ name }}",
                    "text": "Glad you are here, {{ name }}.",
                },
                "data": {"name": "Ada"},
            },
        )
    assert response.status_code == 202, response.text
    nid = response.json()["notifications"][0]["notification_id"]
    pipeline.wait_for_status([nid], {"delivered"})

    engine = sa.create_engine(pipeline.settings.database_url)
    try:

        def inbox_row() -> Any:
            with engine.connect() as conn:
                return conn.execute(
                    sa.text("SELECT user_id, title, body FROM inbox WHERE notification_id = :id"),
                    {"id": nid},
                ).first()

        row = wait_until(inbox_row, 30, "the inbox row")
        assert tuple(row) == ("inboxer", "Welcome Ada", "Glad you are here, Ada.")
    finally:
        engine.dispose()

    with httpx.Client(base_url=pipeline.shim_url, timeout=30) as client:
        mine = client.get(f"/api/v1/notifications/{nid}", headers=HEADERS)
        theirs = client.get(f"/api/v1/notifications/{nid}", headers={"X-API-Key": "key-globex"})
    assert mine.status_code == 200 and theirs.status_code == 404


def test_trace_context_is_carried_across_every_hop(pipeline: Pipeline) -> None:
    """Two recipients: the first is in the request's partition (enriched in the request
    stage's consumer), the second in another one, so it crosses notifications.accepted."""
    trace_id = uuid.uuid4().hex
    partitions = pipeline.topics["notifications.accepted"].partitions
    home = expected_partition("acme:traced", partitions)
    other = next(
        f"traced{i}"
        for i in range(100)
        if expected_partition(f"acme:traced{i}", partitions) != home
    )
    record = request_record("traced")
    record["recipients"].append(
        {**record["recipients"][0], "user_id": other, "email": f"{other}@example.test"}
    )
    pipeline.produce(
        "notifications.requests",
        "acme:traced",
        pipeline.codec.encode("NotificationRequest", record),
        headers={"traceparent": f"00-{trace_id}-{'1' * 16}-01".encode()},
    )
    pipeline.flush()
    nid = notification_id(record["tenant_id"], record["request_id"], "traced", "email")
    crossing = notification_id(record["tenant_id"], record["request_id"], other, "email")
    pipeline.wait_for_status([nid, crossing], {"sent"})

    def traceparents(topic: str, nid: str = nid) -> list[str]:
        found = []
        for message in pipeline.read_topic(topic):
            if nid.encode() in message.value():
                headers = dict(message.headers() or [])
                found.append(headers["traceparent"].decode())
        return found

    assert not traceparents("notifications.accepted"), "the first recipient took a hop"
    crossed = traceparents("notifications.accepted", crossing)
    assert crossed and all(p.split("-")[1] == trace_id for p in crossed)
    for topic in ("notifications.deliver.email", "notifications.status"):
        parents = traceparents(topic)
        assert parents, topic
        assert all(p.split("-")[1] == trace_id for p in parents), (topic, parents)
        # each hop is a child span: a new span id, the same trace
        assert all(p.split("-")[2] != "1" * 16 for p in parents), (topic, parents)


def test_preferences_on_the_wrong_partition_are_dead_lettered_with_the_fix(
    pipeline: Pipeline,
) -> None:
    """A producer with librdkafka's default partitioner breaks co-partitioning: say so."""
    from core.ids import expected_partition

    key = "acme:misplaced"
    wrong = (expected_partition(key, 4) + 1) % 4
    prefs = {
        "tenant_id": "acme",
        "user_id": "misplaced",
        "opted_out": True,
        "channels": {},
        "updated_at": now_ms(),
    }
    pipeline.producer.produce(
        pipeline.topics.name("users.preferences"),
        key=key,
        partition=wrong,
        value=pipeline.codec.encode("Preferences", prefs),
    )
    pipeline.flush()

    def letters() -> list[dict[str, Any]]:
        records = [
            pipeline.codec.decode(m.value(), "DeadLetter")
            for m in pipeline.read_topic("notifications.dead-letter")
        ]
        return [r for r in records if r["key"] == key.encode()]

    [letter] = wait_until(letters, 30, "the misplaced preferences to be dead-lettered")
    assert letter["stage"] == "enrich:Preferences"
    assert letter["source_partition"] == wrong
    assert "murmur2" in letter["error"]


def test_templates_from_the_templates_topic_are_rendered(
    pipeline: Pipeline, smtp: SmtpCapture
) -> None:
    template = {
        "tenant_id": "acme",
        "template_id": "welcome",
        "version": 1,
        "updated_at": now_ms(),
        "content": {
            "subject": "Welcome, {{ name }}",
            "text": "Hi {{ name }}, glad you came.",
            "html": "<h1>Hi {{ name }}</h1>",
        },
    }
    pipeline.produce_record("notifications.templates", "acme:welcome:1", template)
    pipeline.flush()
    time.sleep(1)  # every render worker reads the templates topic in the background

    with_template = request_record(
        "templated", template_id="welcome", content=None, data_json=json.dumps({"name": "Grace"})
    )
    missing = request_record("untemplated", template_id="no-such-template", content=None)
    for record, user in ((with_template, "templated"), (missing, "untemplated")):
        pipeline.produce_record("notifications.requests", f"acme:{user}", record)
    pipeline.flush()

    sent_id = notification_id(
        with_template["tenant_id"], with_template["request_id"], "templated", "email"
    )
    failed_id = notification_id(missing["tenant_id"], missing["request_id"], "untemplated", "email")
    pipeline.wait_for_status([sent_id], {"sent"})
    pipeline.wait_for_status([failed_id], {"failed"})
    [message] = smtp.by_notification_id()[sent_id]
    assert message["Subject"] == "Welcome, Grace"
    assert "Hi Grace, glad you came." in message.get_body(("plain",)).get_content()
    [failed] = [e for e in pipeline.statuses[failed_id] if e["status"] == "failed"]
    assert failed["reason"] == "template 'no-such-template' not found for tenant acme"


def test_worker_exposes_stage_metrics(pipeline: Pipeline) -> None:
    record = request_record("metered")
    pipeline.produce_record("notifications.requests", "acme:metered", record)
    pipeline.flush()
    pipeline.wait_for_status(
        [notification_id(record["tenant_id"], record["request_id"], "metered", "email")], {"sent"}
    )
    text = httpx.get(f"http://127.0.0.1:{pipeline.metrics_port}/metrics", timeout=5).text
    for line in (
        'notifications_stage_messages_total{outcome="accepted",stage="request"}',
        'notifications_stage_messages_total{outcome="sent",stage="deliver"}',
        'notifications_status_events_total{stage="deliver",status="sent"}',
        'notifications_stage_latency_seconds_count{stage="deliver"}',
        'notifications_stage_handler_seconds_count{stage="request"}',
        'notifications_breaker_state{provider="env:smtp",state="closed"} 1.0',
    ):
        assert line in text, line


def consumer_lag(port: int, topic: str, unit: str = "messages") -> dict[tuple[str, str], float]:
    """(group, partition) -> messages (or seconds) behind on `topic`, from a process's
    /metrics."""
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    lag = {}
    for labels, value in re.findall(
        rf"^notifications_consumer_lag_{unit}\{{(.*)\}} (\S+)$", text, re.M
    ):
        label = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if label["topic"] == topic:
            lag[(label["group"], label["partition"])] = float(value)
    return lag


def test_worker_and_sink_report_their_consumer_lag(pipeline: Pipeline) -> None:
    record = request_record("lagging")
    pipeline.produce_record("notifications.requests", "acme:lagging", record)
    pipeline.flush()
    nid = notification_id(record["tenant_id"], record["request_id"], "lagging", "email")
    pipeline.wait_for_status([nid], {"sent"})
    group = pipeline.settings.full_app_id
    requests_topic = pipeline.topics.name("notifications.requests")
    status_topic = pipeline.topics.name("notifications.status")

    def caught_up(port: int, topic: str, group: str) -> bool:
        for unit in ("messages", "seconds"):
            lag = {k: v for k, v in consumer_lag(port, topic, unit).items() if k[0] == group}
            if not lag or any(behind != 0 for behind in lag.values()):
                return False
        return True

    # Committed within a second, read every 5 s: the worker's group on its input ...
    wait_until(lambda: caught_up(pipeline.metrics_port, requests_topic, group), 30, "lag 0")
    # ... the status stage's batched loop's, a group of its own, on the status topic ...
    loop_group = f"{group}-loop"
    wait_until(lambda: caught_up(pipeline.metrics_port, status_topic, loop_group), 30, "loop lag 0")
    # ... and the sink's on the status topic.
    sink_group = f"{group}-postgres-sink"
    wait_until(
        lambda: caught_up(pipeline.sink_metrics_port, status_topic, sink_group), 30, "sink lag 0"
    )
    # It wrote in batches, and says how large.
    sink = httpx.get(f"http://127.0.0.1:{pipeline.sink_metrics_port}/metrics", timeout=5).text
    batches = re.search(r"^notifications_sink_batch_messages_count (\S+)$", sink, re.M)
    assert batches and float(batches.group(1)) >= 1, "no sink batch size observed"


def test_worker_and_sink_answer_health_and_readiness(pipeline: Pipeline) -> None:
    """Issue 19, item 7: probes on the processes that had none. A running worker has joined
    its group and recovered its tables; the sink has partitions and writes."""

    def probe(port: int, path: str) -> httpx.Response:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)

    for port in (pipeline.metrics_port, pipeline.sink_metrics_port):
        wait_until(lambda port=port: probe(port, "/ready").status_code == 200, 60, "ready")
        live = probe(port, "/health")
        assert live.status_code == 200 and live.json()["status"] == "ok", live.text
        ready = probe(port, "/ready").json()
        assert ready["status"] == "ready" and set(ready["checks"].values()) == {"ok"}, ready
        assert "# HELP" in probe(port, "/metrics").text
    assert set(probe(pipeline.sink_metrics_port, "/ready").json()["checks"]) == {
        "loop",
        "partitions",
        "database",
    }
    assert "group" in probe(pipeline.metrics_port, "/ready").json()["checks"]


def test_a_10_mb_request_fails_alone_and_the_one_behind_it_is_sent(
    pipeline: Pipeline, smtp: SmtpCapture
) -> None:
    """Issue 16, item 4: a topic whose max.message.bytes was raised lets a 10 MB request
    reach the request stage. It fails (REQUEST_MAX_BYTES) with a dead letter that does not
    try to carry the 10 MB along (the dead-letter topic keeps Kafka's 1 MB limit), and the
    request right behind it on the same partition is sent."""
    topic = pipeline.topics.name("notifications.requests")
    admin = AdminClient(admin_config(pipeline.settings))
    raised = ConfigEntry(
        "max.message.bytes", str(16 << 20), incremental_operation=AlterConfigOpType.SET
    )
    for future in admin.incremental_alter_configs(
        [ConfigResource("topic", topic, incremental_configs=[raised])]
    ).values():
        future.result(timeout=30)
    big_producer = Producer(client_config(pipeline.settings, **{"message.max.bytes": 16 << 20}))
    key = "acme:huge"
    huge = request_record("huge")
    huge["data_json"] = json.dumps({"blob": "x" * (10 << 20)})
    big_producer.produce(topic, key=key, value=pipeline.codec.encode("NotificationRequest", huge))
    assert big_producer.flush(60) == 0
    behind = request_record("huge")
    pipeline.produce_record("notifications.requests", key, behind)
    pipeline.flush()

    huge_id = notification_id("acme", huge["request_id"], "huge", "email")
    behind_id = notification_id("acme", behind["request_id"], "huge", "email")
    pipeline.wait_for_status([behind_id], {"sent"})
    pipeline.wait_for_status([huge_id], {"failed"})
    [failed] = [e for e in pipeline.statuses[huge_id] if e["status"] == "failed"]
    assert "over REQUEST_MAX_BYTES=1000000" in failed["reason"], failed["reason"]
    assert huge_id not in smtp.by_notification_id()

    def letter() -> list[dict[str, Any]]:
        records = [
            pipeline.codec.decode(m.value(), "DeadLetter")
            for m in pipeline.read_topic("notifications.dead-letter")
        ]
        return [r for r in records if r["key"] == key.encode()]

    [dead] = wait_until(letter, 30, "the dead letter of the 10 MB request")
    assert dead["value"] is None and "bytes are not kept" in dead["error"], dead["error"]


def test_messages_the_provider_cannot_take_fail_alone_and_trip_no_shared_breaker(
    pipeline: Pipeline, smtp: SmtpCapture
) -> None:
    """A line break in a subject is the message's fault, not the SMTP provider's: five such
    notifications from one tenant fail once each, permanently, and another tenant's clean
    email through the same provider (env:smtp, breaker min 5 calls) is still sent at once
    (issue 21, MEDIUM 10: they counted as provider failures, x attempts, and opened the breaker
    every tenant shares)."""
    broken = {"subject": "Invoice\nBcc: everyone@example.test", "text": "x", "html": None}
    bad_ids = []
    for i in range(5):
        record = request_record(f"crlf{i}", content=broken)
        pipeline.produce_record("notifications.requests", f"acme:crlf{i}", record)
        bad_ids.append(
            notification_id(record["tenant_id"], record["request_id"], f"crlf{i}", "email")
        )
    pipeline.flush()
    pipeline.wait_for_status(bad_ids, {"failed"}, timeout=30)
    for nid in bad_ids:
        [failed] = [e for e in pipeline.statuses[nid] if e["status"] == "failed"]
        assert failed["stage"] == "deliver" and not failed["retriable"], failed
        assert "linefeed" in failed["reason"], failed  # one attempt: `[failed]` above

    clean = request_record("clean-globex", tenant="globex")
    pipeline.produce_record("notifications.requests", "globex:clean-globex", clean)
    pipeline.flush()
    clean_id = notification_id(clean["tenant_id"], clean["request_id"], "clean-globex", "email")
    pipeline.wait_for_status([clean_id], {"sent"}, timeout=20)
    assert len(smtp.by_notification_id()[clean_id]) == 1
    assert not set(bad_ids) & set(smtp.by_notification_id())


def test_two_tenants_reusing_a_request_id_and_user_id_are_both_delivered_and_counted(
    pipeline: Pipeline, smtp: SmtpCapture
) -> None:
    """Upstream services choose request ids, and user ids repeat across tenants: the
    notification id carries the tenant, so neither tenant's notification is taken for the
    other's (issue 19, item 1: the second was marked sent from the `delivered` table without
    being sent, and the sink kept one row)."""
    shared_request_id = str(uuid.uuid4())
    ids = {}
    for tenant in ("acme", "globex"):
        record = request_record(
            "twin",
            tenant=tenant,
            request_id=shared_request_id,
            recipient={"email": f"twin@{tenant}.example.test"},
        )
        pipeline.produce_record("notifications.requests", f"{tenant}:twin", record)
        ids[tenant] = notification_id(tenant, shared_request_id, "twin", "email")
    pipeline.flush()
    assert ids["acme"] != ids["globex"]
    pipeline.wait_for_status(list(ids.values()), {"sent"}, timeout=30)

    received = smtp.by_notification_id()
    for tenant, nid in ids.items():
        [message] = received[nid]
        assert message["To"] == f"twin@{tenant}.example.test"
    wait_until(
        lambda: sink_states(pipeline, list(ids.values())) == dict.fromkeys(ids.values(), "sent"),
        20,
        "both notifications in the sink",
    )


def test_send_at_over_http_is_held_then_sent_once(pipeline: Pipeline, smtp: SmtpCapture) -> None:
    """send_at and category in the HTTP body reach the pipeline (issue 19, item 3: the shim
    refused them, though the Kafka request schema has them)."""
    send_at = now_ms() + 6_000
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(send_at / 1000))
    iso += f".{send_at % 1000:03d}+00:00"
    body = shim_body("later-http", send_at=iso, category="alert")
    with httpx.Client(base_url=pipeline.shim_url, headers=HEADERS, timeout=30) as client:
        response = client.post("/api/v1/notifications", json=body)
    assert response.status_code == 202, response.text
    [item] = response.json()["notifications"]
    nid = item["notification_id"]
    pipeline.wait_for_status([nid], {"deferred"}, timeout=30)
    [deferral] = [e for e in pipeline.statuses[nid] if e["status"] == "deferred"]
    assert deferral["deferred_until"] == send_at
    assert nid not in smtp.by_notification_id()
    pipeline.wait_for_status([nid], {"sent"}, timeout=60)
    assert len(smtp.by_notification_id()[nid]) == 1
    [sent] = [e for e in pipeline.statuses[nid] if e["status"] == "sent"]
    assert sent["occurred_at"] >= send_at


def test_a_held_notification_is_cancelled_over_http_and_never_sent(
    pipeline: Pipeline, smtp: SmtpCapture
) -> None:
    """DELETE /api/v1/notifications/{id} while it waits for its send_at: `cancelled`, final,
    nothing sent, a second DELETE is 409 (issue 19, item 3)."""
    send_at = now_ms() + 12_000
    iso = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(send_at / 1000 + 1))
    with httpx.Client(base_url=pipeline.shim_url, headers=HEADERS, timeout=30) as client:
        response = client.post("/api/v1/notifications", json=shim_body("cancel-me", send_at=iso))
        assert response.status_code == 202, response.text
        nid = response.json()["notifications"][0]["notification_id"]
        assert client.delete("/api/v1/notifications/no-such-id").status_code == 404
        wait_until(
            lambda: sink_states(pipeline, [nid]).get(nid) == "deferred", 20, "deferred in the sink"
        )
        cancelled = client.delete(f"/api/v1/notifications/{nid}")
        assert cancelled.status_code == 202, cancelled.text
        assert cancelled.json() == {"notification_id": nid, "status": "cancel_requested"}
        pipeline.wait_for_status([nid], {"cancelled"}, timeout=20)
        [event] = [e for e in pipeline.statuses[nid] if e["status"] == "cancelled"]
        assert event["stage"] == "scheduler" and event["reason"] == "cancelled by the sender"
        wait_until(
            lambda: sink_states(pipeline, [nid]).get(nid) == "cancelled", 20, "cancelled in sink"
        )
        again = client.delete(f"/api/v1/notifications/{nid}")
        assert again.status_code == 409, again.text
    time.sleep(max(0.0, (send_at - now_ms()) / 1000) + 3)  # past its send_at and a tick
    pipeline.poll_statuses()
    assert [e["status"] for e in pipeline.statuses[nid]][-1] == "cancelled"
    assert nid not in smtp.by_notification_id()


def test_a_held_notification_is_rescheduled_earlier_over_http_and_sent_once(
    pipeline: Pipeline, smtp: SmtpCapture
) -> None:
    """PATCH /api/v1/notifications/{id} with a new send_at while it waits: a new `deferred`
    with the new time, then sent then, not at the old time (issue 19, item 3)."""
    original = now_ms() + 600_000
    iso = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(original / 1000))
    with httpx.Client(base_url=pipeline.shim_url, headers=HEADERS, timeout=30) as client:
        response = client.post("/api/v1/notifications", json=shim_body("move-me", send_at=iso))
        assert response.status_code == 202, response.text
        nid = response.json()["notifications"][0]["notification_id"]
        wait_until(
            lambda: sink_states(pipeline, [nid]).get(nid) == "deferred", 20, "deferred in the sink"
        )
        too_far = client.patch(
            f"/api/v1/notifications/{nid}", json={"send_at": "2999-01-01T00:00:00Z"}
        )
        assert too_far.status_code == 422, too_far.text
        sooner = now_ms() + 3_000
        new_iso = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(sooner / 1000 + 1))
        moved = client.patch(f"/api/v1/notifications/{nid}", json={"send_at": new_iso})
        assert moved.status_code == 202, moved.text
        assert moved.json() == {"notification_id": nid, "status": "reschedule_requested"}
    pipeline.wait_for_status([nid], {"sent"}, timeout=40)
    deferrals = [e["deferred_until"] for e in pipeline.statuses[nid] if e["status"] == "deferred"]
    assert deferrals[0] == original // 1000 * 1000 and len(deferrals) == 2, deferrals
    assert deferrals[1] < original
    assert len(smtp.by_notification_id()[nid]) == 1
