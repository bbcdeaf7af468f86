"""Delivery on the real broker: retries through retry topics, failover, permanent errors,
poison messages, channel fallback, sealed per-tenant credentials.

Providers are the generic HMAC-signed webhook connector pointed at local HTTP peers (each
test its own tenant and peer), so the real connector, its signing and its error mapping are
in the loop. Each tenant's provider configuration is a ProviderConfig event with its secret
AES-GCM sealed, as `python -m streams.config put providers` writes it.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from connectors.webhook import verify
from core.ids import notification_id
from core.sealing import SecretBox, new_key
from tests.support.http_peer import HttpPeer, Reply
from tests.support.pipeline import Pipeline, wait_until
from tests.support.ports import free_port
from tests.support.requests import request_record
from tests.support.smtp import SmtpCapture

pytestmark = pytest.mark.integration

KEY = new_key()
BOX = SecretBox.from_settings(KEY, "k1")
SECRET = "whsec-test"


def provider_config(tenant: str, provider_id: str, url: str, priority: int = 0) -> dict[str, Any]:
    assert BOX is not None
    return {
        "tenant_id": tenant,
        "provider_id": provider_id,
        "channel": "webhook",
        "provider": "webhook",
        "enabled": True,
        "priority": priority,
        # allow_private_targets here is ignored (dropped): only the operator's setting lifts
        # the guard, for every connector.
        "settings": {"url": url, "allow_private_targets": "false", "timeout_seconds": "2"},
        "secrets_sealed": BOX.seal({"secret": SECRET}, tenant_id=tenant, provider_id=provider_id),
        "updated_at": 1,
    }


class Peers:
    def __init__(self) -> None:
        self.flaky = HttpPeer().start()
        self.failing_over = HttpPeer().start()
        self.rejecting = HttpPeer(Reply(400, json={"error": "unknown subscriber"})).start()
        self.spare = HttpPeer().start()
        self.fallback = HttpPeer().start()
        self.victim = HttpPeer().start()  # another tenant's provider: must never be called
        self.intruder = HttpPeer().start()
        self.dead_url = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens
        self.collector = HttpPeer().start()  # an OTLP/HTTP trace collector

    def stop(self) -> None:
        for peer in (
            self.flaky,
            self.failing_over,
            self.rejecting,
            self.spare,
            self.fallback,
            self.victim,
            self.intruder,
            self.collector,
        ):
            peer.stop()


@pytest.fixture(scope="module")
def peers() -> Iterator[Peers]:
    peers = Peers()
    yield peers
    peers.stop()


@pytest.fixture(scope="module")
def pipeline(
    kafka_bootstrap: str, fresh_database: str, smtp: SmtpCapture, log_dir: Path, peers: Peers
) -> Iterator[Pipeline]:
    pipe = Pipeline(
        bootstrap=kafka_bootstrap,
        database_url=fresh_database,
        smtp_port=smtp.port,
        log_dir=log_dir,
        extra_env={
            "PROVIDER_SECRETS_KEY": KEY,
            "DELIVER_MAX_ATTEMPTS": "4",
            "DELIVER_BACKOFF_SECONDS": "0.2",
            "BREAKER_MIN_CALLS": "1000",  # breakers have their own tests; keep them out here
            "WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",  # the peers listen on 127.0.0.1
            # Spans exported (core/tracing.py) to the local collector, in batches every 100 ms.
            "OTEL_EXPORTER_OTLP_ENDPOINT": peers.collector.url,
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        },
    )
    pipe.provision()
    configs = [
        provider_config("flaky", "hook", f"{peers.flaky.url}/hook"),
        provider_config("failover", "primary", peers.dead_url, priority=0),
        provider_config("failover", "secondary", f"{peers.failing_over.url}/hook", priority=1),
        provider_config("permanent", "primary", f"{peers.rejecting.url}/hook", priority=0),
        provider_config("permanent", "secondary", f"{peers.spare.url}/hook", priority=1),
        provider_config("poison", "hook", f"{peers.spare.url}/poison"),
        provider_config("fallback", "hook", f"{peers.rejecting.url}/hook"),
        provider_config("victim", "hook", f"{peers.victim.url}/hook"),
        provider_config("intruder", "own", f"{peers.intruder.url}/hook"),
        provider_config("traced", "hook", f"{peers.spare.url}/traced"),
    ]
    for config in configs:
        key = f"{config['tenant_id']}:{config['provider_id']}"
        pipe.produce_record("config.providers", key, config)
    pipe.flush()
    pipe.start()
    try:
        yield pipe
    finally:
        pipe.stop()


def send_webhook(pipeline: Pipeline, tenant: str, user: str, **fields: Any) -> str:
    record = request_record(user, tenant=tenant, channels=["webhook"], **fields)
    pipeline.produce_record("notifications.requests", f"{tenant}:{user}", record)
    pipeline.flush()
    return notification_id(record["tenant_id"], record["request_id"], user, "webhook")


def statuses(pipeline: Pipeline, nid: str) -> list[dict[str, Any]]:
    pipeline.poll_statuses()
    return pipeline.statuses[nid]


def test_flaky_provider_fails_twice_then_delivers_once(pipeline: Pipeline, peers: Peers) -> None:
    answers = iter([Reply(503, json={"error": "busy"}), Reply(503), Reply(200, json={})])
    peers.flaky.handler = lambda _request: next(answers, Reply(200, json={}))
    nid = send_webhook(pipeline, "flaky", "u1")
    pipeline.wait_for_status([nid], {"delivered"}, timeout=60)

    calls = [r for r in peers.flaky.requests if r.json()["notification_id"] == nid]
    assert len(calls) == 3
    # Every attempt carries the same idempotency key and a valid signature.
    assert {c.headers["idempotency-key"] for c in calls} == {nid}
    for call in calls:
        assert verify(
            SECRET,
            call.headers["x-notification-signature"],
            call.headers["x-notification-timestamp"],
            call.body,
        )
    history = [(s["status"], s["attempt"]) for s in statuses(pipeline, nid)]
    assert [s for s, _ in history if s in {"deferred", "delivered", "failed"}] == [
        "deferred",
        "deferred",
        "delivered",
    ]
    deferred = [s for s in statuses(pipeline, nid) if s["status"] == "deferred"]
    assert all(s["retriable"] and "HTTP 503" in s["reason"] for s in deferred)


def exported_spans(collector: HttpPeer, trace_id: str) -> list[Span]:
    spans = []
    for request in list(collector.requests):
        if request.path != "/v1/traces":
            continue
        export = ExportTraceServiceRequest.FromString(request.body)
        for resource_spans in export.resource_spans:
            for scope_spans in resource_spans.scope_spans:
                spans += [s for s in scope_spans.spans if s.trace_id.hex() == trace_id]
    return spans


def attributes(span: Span) -> dict[str, Any]:
    return {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in span.attributes}


def test_one_trace_follows_a_notification_to_the_provider_call_and_its_statuses(
    pipeline: Pipeline, peers: Peers
) -> None:
    trace_id = secrets.token_hex(16)
    record = request_record("u1", tenant="traced", channels=["webhook"])
    schema = pipeline.topics["notifications.requests"].value_schema
    pipeline.produce(
        "notifications.requests",
        "traced:u1",
        pipeline.codec.encode(schema, record),
        {"traceparent": f"00-{trace_id}-{secrets.token_hex(8)}-01".encode()},
    )
    pipeline.flush()
    nid = notification_id(record["tenant_id"], record["request_id"], "u1", "webhook")
    pipeline.wait_for_status([nid], {"delivered"}, timeout=60)

    requests_topic = pipeline.topics.name("notifications.requests")
    deliver_topic = pipeline.topics.name("notifications.deliver.webhook")
    status_topic = pipeline.topics.name("notifications.status")
    wanted = {f"process {requests_topic}", f"process {deliver_topic}", "send webhook"}
    wanted_with_status = {*wanted, f"process {status_topic}"}
    wait_until(
        lambda: wanted_with_status <= {s.name for s in exported_spans(peers.collector, trace_id)},
        30,
        f"the spans {sorted(wanted_with_status)}",
    )
    spans = exported_spans(peers.collector, trace_id)
    one = {s.name: s for s in spans if s.name in wanted}
    request_span, deliver_span = one[f"process {requests_topic}"], one[f"process {deliver_topic}"]
    provider_span = one["send webhook"]

    # The messaging conventions for Kafka, on every message a stage processed.
    assert request_span.kind == Span.SpanKind.SPAN_KIND_CONSUMER
    request_attributes = attributes(request_span)
    assert request_attributes["messaging.system"] == "kafka"
    assert request_attributes["messaging.operation.type"] == "process"
    assert request_attributes["messaging.destination.name"] == requests_topic
    assert request_attributes["messaging.consumer.group.name"] == pipeline.settings.full_app_id
    assert {"messaging.destination.partition.id", "messaging.kafka.offset"} <= set(
        request_attributes
    )
    assert attributes(deliver_span)["notifications.stage"] == "deliver-webhook"
    # Parent links across the hops: the request stage (enrich, render and route run in its
    # consumer) produced the delivery, the deliver stage called the provider.
    assert request_span.parent_span_id  # the upstream producer's span
    assert deliver_span.parent_span_id == request_span.span_id
    assert provider_span.kind == Span.SpanKind.SPAN_KIND_CLIENT
    assert provider_span.parent_span_id == deliver_span.span_id
    status_parents = {s.parent_span_id for s in spans if s.name == f"process {status_topic}"}
    assert status_parents <= {request_span.span_id, deliver_span.span_id}
    assert len(status_parents) == 2  # statuses from both stages: accepted ... delivered


def test_dead_provider_fails_over_to_the_next(pipeline: Pipeline, peers: Peers) -> None:
    nid = send_webhook(pipeline, "failover", "u1")
    pipeline.wait_for_status([nid], {"delivered"}, timeout=60)
    assert [r.json()["notification_id"] for r in peers.failing_over.requests].count(nid) == 1
    done = next(s for s in statuses(pipeline, nid) if s["status"] == "delivered")
    assert done["provider"] == "webhook"
    assert "after failover from failover:primary: connection failed" in done["reason"]
    assert not [s for s in statuses(pipeline, nid) if s["status"] == "deferred"]


def test_permanent_error_fails_at_once_without_retry_or_failover(
    pipeline: Pipeline, peers: Peers
) -> None:
    nid = send_webhook(pipeline, "permanent", "u1")
    pipeline.wait_for_status([nid], {"failed"}, timeout=60)
    failed = next(s for s in statuses(pipeline, nid) if s["status"] == "failed")
    assert failed["retriable"] is False
    # The status code, never the receiver's body: reasons are tenant-readable (HIGH 5).
    assert "HTTP 400" in failed["reason"] and "unknown subscriber" not in failed["reason"]
    rejected = [r for r in peers.rejecting.requests if r.json()["notification_id"] == nid]
    assert len(rejected) == 1
    # The message's own fault: the next provider would answer the same, so it is not tried.
    assert not [r for r in peers.spare.requests if r.json()["notification_id"] == nid]


def test_poison_message_is_dead_lettered_and_the_partition_continues(
    pipeline: Pipeline, peers: Peers
) -> None:
    pipeline.produce("notifications.deliver.webhook", "poison:u1", b"\x00not avro at all")
    nid = send_webhook(pipeline, "poison", "u1")  # same key: same partition, after the poison
    pipeline.wait_for_status([nid], {"delivered"}, timeout=60)
    dead = [
        pipeline.codec.decode(m.value(), "DeadLetter")
        for m in pipeline.read_topic("notifications.dead-letter")
    ]
    poison = [d for d in dead if d["value"] == b"\x00not avro at all"]
    assert len(poison) == 1 and poison[0]["stage"].startswith("deliver")
    assert poison[0]["source_topic"] == pipeline.topics.name("notifications.deliver.webhook")


def test_exhausted_retries_dead_letter_with_history_and_a_replayable_copy(
    pipeline: Pipeline, peers: Peers
) -> None:
    peers.flaky.handler = lambda _request: Reply(503, json={"error": "down"})
    nid = send_webhook(pipeline, "flaky", "u2")
    pipeline.wait_for_status([nid], {"failed"}, timeout=60)
    failed = next(s for s in statuses(pipeline, nid) if s["status"] == "failed")
    assert failed["retriable"] is True
    calls = [r for r in peers.flaky.requests if r.json()["notification_id"] == nid]
    assert len(calls) == 4  # DELIVER_MAX_ATTEMPTS

    def parked() -> dict[str, Any] | None:
        for message in pipeline.read_topic("notifications.dead-letter"):
            record = pipeline.codec.decode(message.value(), "DeadLetter")
            if record["notification_id"] == nid:
                return record
        return None

    record = wait_until(parked, 30, "the dead letter")
    assert len(record["error_history"]) == 4
    assert all("HTTP 503" in line for line in record["error_history"])
    assert record["source_topic"] == pipeline.topics.name("notifications.deliver.webhook")
    fresh = pipeline.codec.decode(record["value"], "Notification")
    assert fresh["notification_id"] == nid and fresh["attempt"] == 0
    assert SECRET not in json.dumps(record, default=str)


def test_failed_channel_falls_back_to_the_next_allowed_channel(
    pipeline: Pipeline, smtp: SmtpCapture
) -> None:
    nid = send_webhook(pipeline, "fallback", "u1", fallback_channels=["email"])
    pipeline.wait_for_status([nid], {"failed"}, timeout=60)
    fallback_id = f"{nid}~email"
    pipeline.wait_for_status([fallback_id], {"sent"}, timeout=60)
    failed = next(s for s in statuses(pipeline, nid) if s["status"] == "failed")
    assert fallback_id in failed["reason"]
    wait_until(lambda: smtp.by_notification_id().get(fallback_id), 30, "the fallback email")


def test_an_override_naming_another_tenants_provider_is_ignored(
    pipeline: Pipeline, peers: Peers
) -> None:
    # Published straight to Kafka, as an upstream service would: no shim to refuse it.
    nid = send_webhook(pipeline, "intruder", "u1", provider_overrides={"webhook": "victim:hook"})
    pipeline.wait_for_status([nid], {"delivered", "failed"}, timeout=60)
    done = next(s for s in statuses(pipeline, nid) if s["status"] in {"delivered", "failed"})
    assert done["status"] == "delivered", done
    assert "victim" not in (done["reason"] or "")
    assert [r.json()["notification_id"] for r in peers.intruder.requests] == [nid]
    assert peers.victim.requests == []


def test_secrets_never_reach_status_events(pipeline: Pipeline) -> None:
    pipeline.poll_statuses()
    everything = json.dumps(pipeline.statuses, default=str)
    assert SECRET not in everything
