"""Trigger rules on the real broker: upstream JSON events -> rendered emails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.conftest import now_ms
from tests.support.pipeline import REPO, Pipeline, wait_until
from tests.support.smtp import SmtpCapture

pytestmark = pytest.mark.integration

RULES = {
    "rules": [
        {
            "name": "order-created",
            "topic": "orders.events",
            "when": {"type": "order.created"},
            "tenant": {"path": "tenant_id"},
            "template_id": "order-confirmation",
            "channels": ["email"],
            "recipient": {"user_id": "customer.id", "email": "customer.email"},
            "data": {"name": "customer.name", "order_id": "id", "total": "total"},
            "idempotency_key": "event_id",
        }
    ]
}

TEMPLATE = {
    "tenant_id": "acme",
    "template_id": "order-confirmation",
    "version": 1,
    "content": {
        "subject": "Order {{ order_id }} confirmed",
        "text": "Thanks, {{ name }}! Order {{ order_id }} ({{ total }}) is confirmed.",
        "html": None,
    },
    "updated_at": 1,
    "variables": ["name", "order_id", "total"],
}


@pytest.fixture(scope="module")
def triggered(
    kafka_bootstrap: str, fresh_database: str, smtp: SmtpCapture, log_dir: Path
) -> Iterator[Pipeline]:
    rules_file = log_dir / "triggers.yaml"
    rules_file.write_text(yaml.safe_dump(RULES))
    pipe = Pipeline(
        bootstrap=kafka_bootstrap,
        database_url=fresh_database,
        smtp_port=smtp.port,
        log_dir=log_dir,
        extra_env={"TRIGGER_RULES_FILE": str(rules_file)},
    )
    pipe.provision()
    pipe.produce_record("notifications.templates", "acme:order-confirmation:1", TEMPLATE)
    pipe.flush()
    pipe.start()
    try:
        yield pipe
    finally:
        pipe.stop()
        if os.environ.get("SHOW_WORKER_LOG"):
            print(pipe.worker.tail(200))


def order_event(event_id: str, user: str, type_: str = "order.created", **extra: Any) -> bytes:
    event = {
        "event_id": event_id,
        "type": type_,
        "tenant_id": "acme",
        "id": f"o-{event_id}",
        "total": "19.50 EUR",
        "customer": {"id": user, "email": f"{user}@example.test", "name": user.title()},
        "at": now_ms(),
        **extra,
    }
    return json.dumps(event).encode()


def dead_letters(pipeline: Pipeline) -> list[dict[str, Any]]:
    return [
        pipeline.codec.decode(m.value(), "DeadLetter")
        for m in pipeline.read_topic("notifications.dead-letter", timeout=2)
    ]


def test_events_trigger_rendered_emails_and_bad_ones_are_parked(
    triggered: Pipeline, smtp: SmtpCapture
) -> None:
    # One key, so one partition: the bad events come first and must not stop it.
    key = "order-stream-1"
    triggered.produce("orders.events", key, b"{not json")
    triggered.produce("orders.events", key, order_event("e0", "ghost", customer={"name": "x"}))
    triggered.produce("orders.events", key, order_event("e1", "shipper", type_="order.shipped"))
    triggered.produce("orders.events", key, order_event("e2", "ada"))
    triggered.flush()

    def ada_mail() -> list[Any]:
        triggered.assert_alive()
        return [m for m in smtp.messages if m["To"] == "ada@example.test"]

    [mail] = wait_until(ada_mail, 120, "the triggered email to ada")
    assert mail["Subject"] == "Order o-e2 confirmed"
    text = mail.get_body(preferencelist=("plain",)).get_content()
    assert "Thanks, Ada! Order o-e2 (19.50 EUR) is confirmed." in text

    parked = wait_until(
        lambda: len(dead_letters(triggered)) >= 2 and dead_letters(triggered),
        60,
        "two dead letters",
    )
    by_offset = sorted(
        (d for d in parked if d["stage"] == "triggers"), key=lambda d: d["source_offset"]
    )
    assert [d["source_topic"] for d in by_offset] == [triggered.topics.name("orders.events")] * 2
    assert by_offset[0]["error"].startswith("not valid JSON")
    assert by_offset[0]["value"] == b"{not json"
    assert "recipient.user_id path 'customer.id' is missing" in by_offset[1]["error"]

    # The non-matching event made no request; the matching one exactly one.
    requests = [
        triggered.codec.decode(m.value(), "NotificationRequest")
        for m in triggered.read_topic("notifications.requests", timeout=2)
    ]
    assert [(r["tenant_id"], r["recipients"][0]["user_id"]) for r in requests] == [("acme", "ada")]
    assert requests[0]["idempotency_key"] == "e2"
    assert requests[0]["metadata"]["trigger"] == "order-created"
    assert not [m for m in smtp.messages if m["To"] in ("shipper@example.test",)]


def test_a_worker_refuses_to_start_with_a_bad_rules_file(
    triggered: Pipeline, log_dir: Path
) -> None:
    bad = log_dir / "bad-triggers.yaml"
    broken = {"rules": [{**RULES["rules"][0], "channels": ["pigeon"]}]}  # type: ignore[dict-item]
    bad.write_text(yaml.safe_dump(broken))
    env = {**triggered.env, "TRIGGER_RULES_FILE": str(bad), "WORKER_WEB_PORT": ""}
    env.pop("WORKER_WEB_PORT")
    env.pop("METRICS_PORT")
    result = subprocess.run(
        [sys.executable, "-m", "streams", "worker"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert "refusing to start" in result.stderr
    assert "rule 'order-created', field channels" in result.stderr
