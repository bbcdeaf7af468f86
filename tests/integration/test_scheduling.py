"""The scheduler stage on the real broker: send_at, direct commands, poison, a SIGKILL restart.

A notification with a future send_at is deferred by enrich, held by the scheduler and released
at its time through the whole pipeline to SMTP, once. A worker killed while schedules and a
digest window are pending releases each of them exactly once after restarting.
"""

from __future__ import annotations

import json
import signal
import sys
import time
import uuid
from typing import Any

import pytest

from core.ids import notification_id
from tests.integration.conftest import now_ms
from tests.support.pipeline import Pipeline, Process, wait_until
from tests.support.ports import free_port
from tests.support.requests import request_record
from tests.support.smtp import SmtpCapture

pytestmark = pytest.mark.integration

CONTENT = {"subject": "Hello {{ name }}", "text": "Hi {{ name }}", "html": None}
DIGEST_CONTENT = {
    "subject": "{{ count }} updates on {{ digest_key }}",
    "text": "{% for item in items %}[{{ item.n }}]\n{% endfor %}",
    "html": None,
}


def request(user: str, **extra: Any) -> dict[str, Any]:
    return request_record(user, **{"content": CONTENT, **extra})


def send(pipeline: Pipeline, user: str, **extra: Any) -> str:
    record = request(user, **extra)
    pipeline.produce_record("notifications.requests", f"acme:{user}", record)
    return notification_id(record["tenant_id"], record["request_id"], user, "email")


def template(template_id: str, content: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "tenant_id": "acme",
        "template_id": template_id,
        "version": 1,
        "updated_at": now_ms(),
        "content": content,
        **fields,
    }


def digest_rule(template_id: str, **fields: Any) -> dict[str, Any]:
    return {
        "key": "project",
        "mode": "fixed",
        "window_seconds": 10,
        "max_window_seconds": 86400,
        "max_items": 0,
        "template_id": template_id,
        **fields,
    }


def put_digest_templates(pipeline: Pipeline, name: str, rule: dict[str, Any]) -> None:
    """`name` is collected into digests by `rule`; `name-digest` renders them."""
    pipeline.produce_record(
        "notifications.templates",
        f"acme:{name}:1",
        template(name, CONTENT, digest=rule),
    )
    pipeline.produce_record(
        "notifications.templates",
        f"acme:{rule['template_id']}:1",
        template(rule["template_id"], DIGEST_CONTENT),
    )
    pipeline.flush()


def send_item(pipeline: Pipeline, user: str, template_id: str, n: Any, project: str) -> str:
    data = json.dumps({"name": user, "n": n, "project": project})
    return send(pipeline, user, template_id=template_id, content=None, data_json=data)


def events(pipeline: Pipeline, nid: str, status: str) -> list[dict[str, Any]]:
    return [e for e in pipeline.statuses.get(nid, []) if e["status"] == status]


def digest_messages(smtp: SmtpCapture, user: str) -> list[Any]:
    return [m for m in smtp.messages if m["To"] == f"{user}@example.test"]


def items_listed(message: Any) -> list[str]:
    text = message.get_body(preferencelist=("plain",)).get_content()
    return [line.strip("[]") for line in text.split() if line.startswith("[")]


def sent_at(pipeline: Pipeline, nid: str) -> int:
    return min(e["occurred_at"] for e in events(pipeline, nid, "sent"))


def test_send_at_is_deferred_then_sent_once_after_its_time(
    pipeline: Pipeline, smtp: SmtpCapture
) -> None:
    send_at = now_ms() + 5_000
    nid = send(pipeline, "later", send_at=send_at)
    pipeline.flush()

    pipeline.wait_for_status([nid], {"deferred"}, timeout=60)
    [deferred] = events(pipeline, nid, "deferred")
    assert deferred["deferred_until"] == send_at
    assert "send_at" in (deferred["reason"] or "")
    assert nid not in smtp.by_notification_id(), "sent before its send_at"

    pipeline.wait_for_status([nid], {"sent"}, timeout=90)
    assert sent_at(pipeline, nid) >= send_at
    time.sleep(2)  # a second release would arrive right behind
    assert len(smtp.by_notification_id()[nid]) == 1

    # The request stage enriches in place (no hop); the release is the one message
    # through notifications.accepted, and it carries the request's trace across the wait.
    def trace_ids(topic: str) -> set[bytes]:
        return {
            dict(m.headers() or [])["traceparent"].split(b"-")[1]
            for m in pipeline.read_topic(topic)
            if nid.encode() in m.value()
        }

    released = [
        m
        for m in pipeline.read_topic("notifications.accepted")
        if pipeline.codec.decode(m.value(), "Notification")["notification_id"] == nid
    ]
    assert len(released) == 1
    traces = trace_ids("notifications.accepted") | trace_ids("notifications.status")
    assert len(traces) == 1, traces


def notification(user: str, nid: str) -> dict[str, Any]:
    """A Notification as enrich hands it to the scheduler (no send_at: not deferred again)."""
    record = request(user)
    return {
        "notification_id": nid,
        "request_id": record["request_id"],
        "tenant_id": "acme",
        "batch_id": None,
        "occurred_at": record["occurred_at"],
        "channel": "email",
        "recipient": record["recipients"][0],
        "template_id": None,
        "content": CONTENT,
        "data_json": record["data_json"],
        "priority": "normal",
        "metadata": {},
        "address": f"{user}@example.test",
        "locale": "en",
        "timezone": "UTC",
        "profile_source": "request",
        "rendered": None,
        "attempt": 0,
        "category": "transactional",
        "template_version": None,
        "send_at": None,
        "digest_id": None,
    }


def command(note: dict[str, Any], release_at: int, issued_at: int) -> dict[str, Any]:
    return {
        "kind": "schedule",
        "notification": note,
        "release_at": release_at,
        "reason": "test",
        "digest_key": None,
        "digest_rule": None,
        "issued_at": issued_at,
    }


def test_commands_due_now_release_at_once_replays_do_not_and_poison_is_dead_lettered(
    pipeline: Pipeline, smtp: SmtpCapture
) -> None:
    user = "direct"
    key = f"acme:{user}"
    now = now_ms()
    due, held = str(uuid.uuid4()), str(uuid.uuid4())
    # Poison first: the partition must move on to the valid commands behind it.
    pipeline.produce("notifications.deferred", key, b"\x00not avro")
    pipeline.produce_record("notifications.deferred", key, command(notification(user, due), 0, now))
    pipeline.produce_record(
        "notifications.deferred", key, command(notification(user, held), now + 3_000, now)
    )
    # A replay of the same command (same issued_at) is not released a second time.
    pipeline.produce_record(
        "notifications.deferred", key, command(notification(user, held), now + 3_000, now)
    )
    pipeline.flush()

    pipeline.wait_for_status([due, held], {"sent"}, timeout=90)
    assert sent_at(pipeline, held) >= now + 3_000
    time.sleep(3)
    received = smtp.by_notification_id()
    assert len(received[due]) == 1 and len(received[held]) == 1
    pipeline.poll_statuses()
    assert len(events(pipeline, held, "rendered")) == 1, "released twice"

    def letters() -> list[dict[str, Any]]:
        records = [
            pipeline.codec.decode(m.value(), "DeadLetter")
            for m in pipeline.read_topic("notifications.dead-letter")
        ]
        return [r for r in records if r["stage"] == "scheduler" and r["key"] == key.encode()]

    [letter] = wait_until(letters, 30, "the poison command to be dead-lettered")
    assert letter["value"] == b"\x00not avro"


DIGEST_ITEMS = 400


def test_restart_with_pending_schedules_and_an_open_digest_releases_each_once(
    pipeline: Pipeline, smtp: SmtpCapture
) -> None:
    # A SIGKILLed member holds its partitions until its session times out (about a minute
    # here), longer than any short window: the window flushes when it is full instead, so
    # an item lost or added twice across the restart shows as a digest that never comes or
    # one that lists the wrong items.
    rule = digest_rule("restart-digest", window_seconds=600, max_items=DIGEST_ITEMS)
    put_digest_templates(pipeline, "restart-item", rule)
    time.sleep(1)  # the worker's template views read the topic in the background
    send_at = now_ms() + 15_000
    scheduled = [send(pipeline, f"rs{i}", send_at=send_at) for i in range(30)]
    digest_user = "rdigest"
    half = DIGEST_ITEMS // 2
    items = [send_item(pipeline, digest_user, "restart-item", i, "p1") for i in range(half)]
    pipeline.flush()

    def collected() -> int:
        pipeline.assert_alive()
        pipeline.poll_statuses()
        return sum(1 for nid in items if events(pipeline, nid, "deferred"))

    # Kill it with the window open and the second half of its items on their way.
    wait_until(lambda: collected() >= half // 2, 90, "the first digest items to be collected")
    items += [
        send_item(pipeline, digest_user, "restart-item", i, "p1") for i in range(half, DIGEST_ITEMS)
    ]
    pipeline.flush()
    pipeline.worker.stop(signal.SIGKILL)
    before_kill = sum(1 for nid in items if events(pipeline, nid, "deferred"))
    print(f"\nkilled with at least {before_kill} of {len(items)} digest items collected")
    assert now_ms() < send_at, "too slow: the schedules were due before the kill"
    pipeline.worker.start()

    pipeline.wait_for_status(scheduled, {"sent"}, timeout=180)
    pipeline.wait_for_status(items, {"digested"}, timeout=180)
    for nid in scheduled:
        assert sent_at(pipeline, nid) >= send_at
    wait_until(lambda: digest_messages(smtp, digest_user), 60, "the digest email")
    time.sleep(3)  # a second release or a second digest would arrive right behind
    received = smtp.by_notification_id()
    assert all(len(received[nid]) == 1 for nid in scheduled), "a schedule was sent twice"
    messages = digest_messages(smtp, digest_user)
    windows = {e["reason"] for nid in items for e in events(pipeline, nid, "deferred")}
    assert len(messages) == 1, (
        f"{[(m['X-Notification-Id'], m['Subject']) for m in messages]}; windows: {windows}"
    )
    [message] = messages
    listed = items_listed(message)
    assert sorted(listed, key=int) == [str(i) for i in range(DIGEST_ITEMS)], listed
    assert message["Subject"] == f"{DIGEST_ITEMS} updates on restart-item|email|p1"
    replayed = sum(1 for nid in items if len(events(pipeline, nid, "deferred")) > 1)
    print(f"{replayed} digest items were collected again after the restart (replays)")


def test_schedules_move_with_their_partitions_when_a_second_worker_joins(
    pipeline: Pipeline, smtp: SmtpCapture
) -> None:
    """Each worker ticks only the partitions it owns: after the rebalance, still once each."""
    send_at = now_ms() + 22_000  # the second worker is ready ~6 s after it starts
    users = [f"mv{i}" for i in range(40)]  # spread over every partition
    scheduled = [send(pipeline, user, send_at=send_at) for user in users]
    pipeline.flush()
    pipeline.wait_for_status(scheduled, {"deferred"}, timeout=60)

    second = Process(
        "worker-2",
        [sys.executable, "-m", "streams", "worker", "-l", "info"],
        {**pipeline.env, "WORKER_WEB_PORT": str(free_port()), "METRICS_PORT": str(free_port())},
        pipeline.worker.log_path.parent,
    )
    second.start()
    try:
        wait_until(
            lambda: b"Worker]: Ready" in second.log_path.read_bytes(),
            120,
            "the second worker to join",
        )
        assert now_ms() < send_at, "the second worker joined after the schedules were due"
        pipeline.wait_for_status(scheduled, {"sent"}, timeout=180)
        for nid in scheduled:
            assert sent_at(pipeline, nid) >= send_at
        time.sleep(3)  # a second release would arrive right behind
        received = smtp.by_notification_id()
        assert all(len(received[nid]) == 1 for nid in scheduled), "a schedule was sent twice"
        assert b"scheduler: partition" in second.log_path.read_bytes(), (
            "the second worker never swept a partition of its own"
        )
    finally:
        second.stop()
