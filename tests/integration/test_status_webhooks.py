"""Outgoing status webhooks end to end: a subscription made through the shim's admin API,
status events on notifications.status, the real worker POSTing them signed to local
receivers, retries through the retry topics, and the delivery log the real sink writes.

Receivers check signatures independently (HMAC-SHA256 recomputed here). Status events are
produced straight to notifications.status (what the pipeline's stages write), which keeps
the module fast; the subscriptions' receivers listen on 127.0.0.1, so the worker and the shim
run with WEBHOOK_ALLOW_PRIVATE_TARGETS (the guard itself is checked with it off).
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from api_shim.app import create_app
from api_shim.auth import new_api_key
from core.sealing import SecretBox, new_key
from streams.webhooks.rules import delivery_id, sealed_as
from tests.support.http_peer import HttpPeer, Recorded, Reply
from tests.support.pipeline import Pipeline, wait_until
from tests.support.smtp import SmtpCapture

pytestmark = pytest.mark.integration

KEY = new_key()
ACME = {"X-API-Key": "key-acme"}
GLOBEX = {"X-API-Key": "key-globex"}
BASE = "/api/v1/admin/webhooks"


class Receiver:
    """A tenant's webhook endpoint: records every POST; answers per notification from a
    script (503, 503, 200 ...), 200 otherwise."""

    def __init__(self, default: int = 200) -> None:
        self.peer = HttpPeer().start()
        self.default = default
        self.scripts: dict[str, list[int]] = {}
        self.by_notification: dict[str, list[Recorded]] = defaultdict(list)
        self._lock = threading.Lock()
        self.peer.handler = self._answer

    def _answer(self, request: Recorded) -> Reply:
        nid = request.json()["data"]["notification_id"]
        with self._lock:
            self.by_notification[nid].append(request)
            script = self.scripts.get(nid) or []
            status = script.pop(0) if script else self.default
        return Reply(status, json={"ok": status < 300})

    def url(self, path: str = "/hooks") -> str:
        return f"{self.peer.url}{path}"


@pytest.fixture(scope="module")
def receivers() -> Iterator[dict[str, Receiver]]:
    made = {"acme": Receiver(), "globex": Receiver(default=410)}
    yield made
    for receiver in made.values():
        receiver.peer.stop()


@pytest.fixture(scope="module")
def pipeline(
    kafka_bootstrap: str, fresh_database: str, smtp: SmtpCapture, log_dir: Path
) -> Iterator[Pipeline]:
    pipe = Pipeline(
        bootstrap=kafka_bootstrap,
        database_url=fresh_database,
        smtp_port=smtp.port,
        log_dir=log_dir,
        extra_env={
            "PROVIDER_SECRETS_KEY": KEY,
            "WEBHOOK_ALLOW_PRIVATE_TARGETS": "true",  # the receivers listen on 127.0.0.1
            "WEBHOOK_BACKOFF_SECONDS": "0.2",
            "WEBHOOK_MAX_ATTEMPTS": "4",
            "SINK_FLUSH_SECONDS": "0.2",
        },
    )
    pipe.start()
    try:
        yield pipe
    finally:
        pipe.stop()


@pytest.fixture(scope="module")
def send_only_key(pipeline: Pipeline) -> str:
    """An API key of acme's without the admin scope, on config.api-keys as the admin API
    writes it (written before the shim starts, so its view has it)."""
    key_id, key, digest = new_api_key()
    record = {
        "key_id": key_id,
        "tenant_id": "acme",
        "name": "sender",
        "scopes": ["send", "read"],
        "secret_sha256": digest,
        "created_at": int(time.time() * 1000),
        "revoked_at": None,
    }
    pipeline.produce_record("config.api-keys", key_id, record)
    pipeline.flush()
    return key


@pytest.fixture(scope="module")
def client(pipeline: Pipeline, send_only_key: str) -> Iterator[TestClient]:
    settings = pipeline.settings.model_copy(
        update={
            "shim_api_keys": {"key-acme": "acme", "key-globex": "globex"},
            "provider_secrets_key": SecretStr(KEY),
            "webhook_allow_private_targets": True,
        }
    )
    with TestClient(create_app(settings)) as test_client:
        yield test_client


_event_numbers = itertools.count()


def status_event(tenant: str, nid: str, status: str) -> dict[str, Any]:
    now = int(time.time() * 1000)
    return {
        "event_id": f"{nid}:{status}:{next(_event_numbers)}",
        "notification_id": nid,
        "request_id": f"req-{nid}",
        "tenant_id": tenant,
        "batch_id": None,
        "channel": "email",
        "recipient_id": "u-1",
        "status": status,
        "reason": None,
        "retriable": False,
        "provider": "smtp",
        "provider_message_id": None,
        "stage": "deliver",
        "attempt": 0,
        "deferred_until": None,
        "request_occurred_at": now - 50,
        "occurred_at": now,
    }


def produce_status(pipeline: Pipeline, event: dict[str, Any]) -> None:
    pipeline.produce_record("notifications.status", event["notification_id"], event)
    pipeline.flush()


def subscribe(client: TestClient, headers: dict[str, str], **body: Any) -> dict[str, Any]:
    response = client.post(BASE, json=body, headers=headers)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def signed_by(secret: str, request: Recorded) -> bool:
    """The receiver's check, written out: HMAC-SHA256 of "{timestamp}.{body}", hex, "v1="."""
    timestamp = request.headers["x-notification-timestamp"]
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + request.body, hashlib.sha256)
    signatures = request.headers["x-notification-signature"].split(",")
    fresh = abs(time.time() - int(timestamp)) < 300
    return fresh and any(
        hmac.compare_digest(f"v1={expected.hexdigest()}", s.strip()) for s in signatures
    )


def await_dispatching(pipeline: Pipeline, tenant: str, receiver: Receiver) -> None:
    """Until the worker delivers this tenant's events (it is up and has read the
    subscription): a fresh status event every second, until one arrives."""
    sent: list[str] = []

    def arrived() -> bool:
        pipeline.assert_alive()
        if any(nid in receiver.by_notification for nid in sent):
            return True
        sent.append(f"warm-{uuid.uuid4().hex[:8]}")
        produce_status(pipeline, status_event(tenant, sent[-1], "delivered"))
        return False

    wait_until(arrived, 90, f"the worker to deliver {tenant}'s status events", every=1.0)


# -- the subscription API ---------------------------------------------------------------------


def test_subscriptions_are_created_shown_once_changed_rotated_and_deleted(
    client: TestClient, pipeline: Pipeline
) -> None:
    body = {"url": "https://hooks.example.com/in", "event_types": ["failed", "delivered"]}
    first = client.post(BASE, json=body, headers={**ACME, "Idempotency-Key": "sub-1"})
    assert first.status_code == 201, first.text
    created = first.json()
    secret = created["secret"]
    assert secret.startswith("whsec_") and len(secret) > 30
    assert created["event_types"] == ["failed", "delivered"] and created["enabled"] is True
    sid = created["subscription_id"]

    # A retry gets the same subscription, not a second one, and never the secret again.
    replay = client.post(BASE, json=body, headers={**ACME, "Idempotency-Key": "sub-1"})
    assert replay.status_code == 201 and replay.headers["Idempotent-Replayed"] == "true"
    assert replay.json() == {**created, "secret": None}
    listed = client.get(BASE, headers=ACME).json()["items"]
    assert [s["subscription_id"] for s in listed].count(sid) == 1
    assert "secret" not in client.get(f"{BASE}/{sid}", headers=ACME).json()

    # Kafka holds the secret sealed, bound to the tenant and the subscription.
    written = [
        m.value()
        for m in pipeline.read_topic("config.webhook-subscriptions")
        if m.key() == f"acme:{sid}".encode()
    ]
    assert written and secret.encode() not in written[-1]
    record = pipeline.codec.decode(written[-1], "WebhookSubscription")
    box = SecretBox.from_settings(KEY, "k1")
    assert box is not None
    opened = box.open(record["secret_sealed"], tenant_id="acme", provider_id=sealed_as(sid))
    assert opened == {"secret": secret}

    changed = client.patch(
        f"{BASE}/{sid}", json={"enabled": False, "event_types": []}, headers=ACME
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["enabled"] is False and changed.json()["event_types"] == []
    assert client.get(f"{BASE}/{sid}", headers=ACME).json()["enabled"] is False

    rotated = client.post(f"{BASE}/{sid}/rotate-secret", headers=ACME)
    assert rotated.status_code == 200, rotated.text
    new_secret = rotated.json()["secret"]
    assert new_secret.startswith("whsec_") and new_secret != secret
    assert rotated.json()["previous_secret_valid_until"] is not None
    view = client.app.state.views["config.webhook-subscriptions"]  # type: ignore[attr-defined]
    reopened = box.open(
        view.get(f"acme:{sid}")["secret_sealed"], tenant_id="acme", provider_id=sealed_as(sid)
    )
    assert reopened["secret"] == new_secret and reopened["previous"] == secret

    assert client.delete(f"{BASE}/{sid}", headers=ACME).status_code == 204
    assert client.get(f"{BASE}/{sid}", headers=ACME).status_code == 404
    assert client.delete(f"{BASE}/{sid}", headers=ACME).status_code == 404


def test_the_api_refuses_strangers_non_admins_bad_input_and_other_tenants(
    client: TestClient, send_only_key: str
) -> None:
    valid = {"url": "https://hooks.example.com/in"}
    assert client.post(BASE, json=valid).status_code == 401
    assert client.get(BASE, headers={"X-API-Key": "nope"}).status_code == 401
    not_admin = {"X-API-Key": send_only_key}
    assert client.post(BASE, json=valid, headers=not_admin).status_code == 403
    assert client.get(BASE, headers=not_admin).status_code == 403

    for body, field in (
        ({"url": "https://x.example", "event_types": ["delivered", "opened"]}, "event_types"),
        ({"url": "ftp://hooks.example.com/in"}, "url"),
        ({"url": "https://x.example", "secret": "short"}, "secret"),
        ({"url": "https://x.example", "colour": "red"}, "colour"),
        ({}, "url"),
    ):
        refused = client.post(BASE, json=body, headers=ACME)
        assert refused.status_code == 422, (body, refused.text)
        assert field in {d["field"] for d in refused.json()["detail"]}, refused.json()

    theirs = subscribe(client, GLOBEX, url="https://hooks.example.com/globex")["subscription_id"]
    for method, path in (
        ("GET", f"{BASE}/{theirs}"),
        ("PATCH", f"{BASE}/{theirs}"),
        ("DELETE", f"{BASE}/{theirs}"),
        ("POST", f"{BASE}/{theirs}/rotate-secret"),
        ("GET", f"{BASE}/{theirs}/deliveries"),
        ("GET", f"{BASE}/no-such-subscription"),
    ):
        kwargs: dict[str, Any] = {"json": {"enabled": False}} if method == "PATCH" else {}
        answer = client.request(method, path, headers=ACME, **kwargs)
        assert answer.status_code == 404, (method, path, answer.text)
    assert theirs not in {
        s["subscription_id"] for s in client.get(BASE, headers=ACME).json()["items"]
    }
    assert client.get(f"{BASE}/{theirs}", headers=GLOBEX).json()["enabled"] is True
    assert client.delete(f"{BASE}/{theirs}", headers=GLOBEX).status_code == 204

    mine = subscribe(client, ACME, url="https://hooks.example.com/in")["subscription_id"]
    assert client.patch(f"{BASE}/{mine}", json={}, headers=ACME).status_code == 422
    assert client.patch(f"{BASE}/{mine}", json={"url": None}, headers=ACME).status_code == 422
    bad_cursor = client.get(f"{BASE}/{mine}/deliveries?cursor=junk", headers=ACME)
    assert bad_cursor.status_code == 422
    assert client.delete(f"{BASE}/{mine}", headers=ACME).status_code == 204


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hooks",  # loopback
        "http://localhost/hooks",  # a name that resolves to loopback
        "http://10.0.0.7/hooks",  # private
        "http://169.254.169.254/latest/meta-data/",  # link-local: cloud metadata
        "http://[::1]/hooks",
    ],
)
def test_the_ssrf_guard_refuses_non_public_urls_unless_the_operator_allows_them(
    client: TestClient, url: str
) -> None:
    state = client.app.state  # type: ignore[attr-defined]
    allowed = state.settings
    state.settings = allowed.model_copy(update={"webhook_allow_private_targets": False})
    try:
        refused = client.post(BASE, json={"url": url}, headers=ACME)
        assert refused.status_code == 422, refused.text
        assert refused.json()["detail"][0]["field"] == "url"
        assert "non-public address" in refused.json()["message"]
        existing = client.get(BASE, headers=ACME).json()["items"]
        assert url not in {s["url"] for s in existing}
        # A public address is accepted (an IP literal: no DNS needed here).
        created = client.post(BASE, json={"url": "https://1.1.1.1/hooks"}, headers=ACME)
        assert created.status_code == 201, created.text
    finally:
        state.settings = allowed
    sid = created.json()["subscription_id"]
    assert client.patch(f"{BASE}/{sid}", json={"url": url}, headers=ACME).status_code == 200
    assert client.delete(f"{BASE}/{sid}", headers=ACME).status_code == 204


# -- delivery ---------------------------------------------------------------------------------


def test_status_events_are_posted_signed_retried_filtered_and_logged(
    client: TestClient, pipeline: Pipeline, receivers: dict[str, Receiver]
) -> None:
    acme, globex = receivers["acme"], receivers["globex"]
    ours = subscribe(client, ACME, url=acme.url(), event_types=["delivered", "failed"])
    theirs = subscribe(client, GLOBEX, url=globex.url("/globex"))
    await_dispatching(pipeline, "acme", acme)
    await_dispatching(pipeline, "globex", globex)

    nid, other_nid = f"n-{uuid.uuid4().hex[:8]}", f"n-{uuid.uuid4().hex[:8]}"
    acme.scripts[nid] = [503, 503]  # then 200
    produce_status(pipeline, status_event("acme", nid, "sent"))  # not among its event types
    delivered = status_event("acme", nid, "delivered")
    produce_status(pipeline, delivered)
    produce_status(pipeline, status_event("globex", other_nid, "delivered"))

    wait_until(lambda: len(acme.by_notification[nid]) >= 3, 60, "three attempts at acme's hook")
    wait_until(lambda: globex.by_notification[other_nid], 30, "globex's event at its own hook")
    calls = acme.by_notification[nid]
    assert len(calls) == 3
    expected_id = delivery_id(delivered["event_id"], ours["subscription_id"])
    assert {c.headers["x-webhook-id"] for c in calls} == {expected_id}
    assert {c.headers["idempotency-key"] for c in calls} == {expected_id}
    assert [c.headers["x-webhook-attempt"] for c in calls] == ["1", "2", "3"]
    assert all(c.path == "/hooks" and c.method == "POST" for c in calls)
    assert all(signed_by(ours["secret"], c) for c in calls)
    assert not any(signed_by(theirs["secret"], c) for c in calls)
    assert len({c.body for c in calls}) == 1  # the same delivery, byte for byte
    sent = calls[0].json()
    assert sent["event_type"] == "delivered" and sent["tenant_id"] == "acme"
    assert sent["subscription_id"] == ours["subscription_id"]
    assert sent["data"] == delivered
    # Only the filtered-in event came; globex's event never reached acme's hook.
    assert [c.json()["event_type"] for c in calls] == ["delivered"] * 3
    assert other_nid not in acme.by_notification
    assert all(signed_by(theirs["secret"], c) for c in globex.by_notification[other_nid])
    assert nid not in globex.by_notification

    log = f"{BASE}/{ours['subscription_id']}/deliveries"

    def attempts() -> list[dict[str, Any]]:
        page = client.get(f"{log}?delivery_id={expected_id}", headers=ACME)
        assert page.status_code == 200, page.text
        items: list[dict[str, Any]] = page.json()["items"]
        return items if len(items) == 3 else []

    rows = wait_until(attempts, 30, "three attempts in the delivery log")
    assert [(r["attempt"], r["outcome"], r["http_status"]) for r in rows] == [
        (3, "delivered", 200),
        (2, "retrying", 503),
        (1, "retrying", 503),
    ]
    assert rows[2]["next_attempt_at"] is not None and rows[0]["next_attempt_at"] is None
    assert rows[0]["url"] == acme.url() and rows[0]["notification_id"] == nid
    # The receiver is on 127.0.0.1: a non-public peer's body never reaches the tenant-readable
    # log (HIGH 5); the status code does.
    assert rows[0]["response_body"] is None

    # Pages of two, newest first, following the cursor.
    first = client.get(f"{log}?delivery_id={expected_id}&limit=2", headers=ACME).json()
    assert [r["attempt"] for r in first["items"]] == [3, 2] and first["next_cursor"]
    second = client.get(
        f"{log}?delivery_id={expected_id}&limit=2&cursor={first['next_cursor']}", headers=ACME
    ).json()
    assert [r["attempt"] for r in second["items"]] == [1] and second["next_cursor"] is None

    # A receiver that answers 410 gets one attempt: the delivery fails for good.
    def globex_log() -> list[dict[str, Any]]:
        page = client.get(f"{BASE}/{theirs['subscription_id']}/deliveries", headers=GLOBEX)
        items: list[dict[str, Any]] = page.json()["items"]
        return [r for r in items if r["notification_id"] == other_nid]

    (failed,) = wait_until(globex_log, 30, "globex's failed delivery in its log")
    assert (failed["outcome"], failed["http_status"], failed["attempt"]) == ("failed", 410, 1)
    assert len(globex.by_notification[other_nid]) == 1
    # And acme's log is acme's alone.
    assert (
        client.get(f"{BASE}/{theirs['subscription_id']}/deliveries", headers=ACME).status_code
        == 404
    )
