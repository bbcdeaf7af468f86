"""A deliver worker killed mid-stream and restarted loses nothing, and a provider that
honours idempotency keys sees no duplicate take effect.

300 webhook notifications go to a local receiver that deduplicates on `Idempotency-Key`
(as the webhook docs ask receivers to), and 100 emails to the SMTP capture. The worker is
SIGKILLed once the receiver has about a third, then restarted. Every notification must
arrive; the raw repeats the receiver saw (sends the `delivered` table could not stop: sent
before the kill, recorded after) are counted and printed, and each carried the same key as
its first send, so the receiver applied every notification exactly once. The email repeats
(SMTP has no idempotency key, only a stable Message-ID) are counted and printed too.
"""

from __future__ import annotations

import signal
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from streams.ids import notification_id
from streams.sealing import SecretBox, new_key
from tests.support.http_peer import HttpPeer, Recorded, Reply
from tests.support.pipeline import Pipeline, wait_until
from tests.support.requests import request_record
from tests.support.smtp import SmtpCapture

pytestmark = pytest.mark.integration

WEBHOOKS, EMAILS = 300, 100
KEY = new_key()


class DedupingReceiver:
    """Applies each Idempotency-Key once, like a well-behaved webhook receiver."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()
        self.applied: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, request: Recorded) -> Reply:
        key = request.headers["idempotency-key"]
        with self.lock:
            self.seen[key] += 1
            if self.seen[key] == 1:
                self.applied.append(request.json()["notification_id"])
        return Reply(200, json={"ok": True})


@pytest.fixture(scope="module")
def receiver() -> Iterator[tuple[HttpPeer, DedupingReceiver]]:
    dedup = DedupingReceiver()
    with HttpPeer() as peer:
        peer.handler = dedup
        yield peer, dedup


@pytest.fixture(scope="module")
def pipeline(
    kafka_bootstrap: str,
    fresh_database: str,
    smtp: SmtpCapture,
    log_dir: Path,
    receiver: tuple[HttpPeer, DedupingReceiver],
) -> Iterator[Pipeline]:
    peer, _ = receiver
    box = SecretBox.from_settings(KEY, "k1")
    assert box is not None
    pipe = Pipeline(
        bootstrap=kafka_bootstrap,
        database_url=fresh_database,
        smtp_port=smtp.port,
        log_dir=log_dir,
        extra_env={"PROVIDER_SECRETS_KEY": KEY, "WEBHOOK_ALLOW_PRIVATE_TARGETS": "true"},
    )
    pipe.provision()
    pipe.produce_record(
        "config.providers",
        "acme:hook",
        {
            "tenant_id": "acme",
            "provider_id": "hook",
            "channel": "webhook",
            "provider": "webhook",
            "settings": {"url": f"{peer.url}/hook"},
            "secrets_sealed": box.seal({"secret": "s"}, tenant_id="acme", provider_id="hook"),
        },
    )
    pipe.flush()
    pipe.start()
    try:
        yield pipe
    finally:
        pipe.stop()


def test_killed_deliver_worker_loses_nothing_and_repeats_carry_the_key(
    pipeline: Pipeline, receiver: tuple[HttpPeer, DedupingReceiver], smtp: SmtpCapture
) -> None:
    _, dedup = receiver
    hooks, emails = [], []
    for i in range(max(WEBHOOKS, EMAILS)):
        user = f"k{i}"
        if i < WEBHOOKS:
            record = request_record(user, channels=["webhook"])
            pipeline.produce_record("notifications.requests", f"acme:{user}", record)
            hooks.append(
                notification_id(record["tenant_id"], record["request_id"], user, "webhook")
            )
        if i < EMAILS:
            record = request_record(user)
            pipeline.produce_record("notifications.requests", f"acme:{user}", record)
            emails.append(notification_id(record["tenant_id"], record["request_id"], user, "email"))
    pipeline.flush()

    wait_until(
        lambda: pipeline.assert_alive() or len(dedup.applied) >= WEBHOOKS // 3,
        120,
        "a third of the webhooks",
        every=0.05,
    )
    pipeline.worker.stop(signal.SIGKILL)
    before_kill = len(dedup.applied)
    assert before_kill < WEBHOOKS, "everything was delivered before the kill"
    pipeline.worker.start()

    pipeline.wait_for_status(hooks, {"delivered"}, timeout=240)
    pipeline.wait_for_status(emails, {"sent"}, timeout=120)
    assert sorted(dedup.applied) == sorted(hooks)  # each applied once, none lost
    raw_repeats = sum(count - 1 for count in dedup.seen.values())
    assert set(dedup.seen) == set(hooks)  # a repeat carries its notification's own key
    received = smtp.by_notification_id()
    assert set(emails) <= set(received)
    email_repeats = sum(len(received[nid]) - 1 for nid in emails)
    print(
        f"\nSIGKILL after {before_kill} of {WEBHOOKS} webhooks: {raw_repeats} repeated sends, "
        f"all deduplicated by Idempotency-Key (applied once each); "
        f"{email_repeats} duplicate emails of {EMAILS} (SMTP has no idempotency key)"
    )
