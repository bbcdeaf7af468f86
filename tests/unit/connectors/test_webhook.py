"""The outgoing webhook against a local peer, its signature recipe, and the SSRF rule."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

import pytest

from connectors.egress import Egress, guarded_client
from connectors.errors import PermanentDeliveryError
from connectors.webhook import WebhookConfig, WebhookConnector, check_target, sign, verify
from tests.support.http_peer import HttpPeer, Reply
from tests.support.provider_cases import (
    LOCAL_PEERS,
    STANDARD_FAULTS,
    TEST_TIMEOUT_SECONDS,
    Case,
    assert_result,
    message,
)

SECRET = "whsec_test_0123456789"
HOOK = message(
    channel="webhook",
    to="placeholder",  # replaced with the peer's URL per test
    data_json='{"order_id": 42, "items": ["book"]}',
    idempotency_key="idem-n-1",
    attempt=2,
)


def connector(
    peer: HttpPeer, *, egress: Egress = LOCAL_PEERS, **overrides: Any
) -> WebhookConnector:
    # The peer listens on 127.0.0.1, which the SSRF rule refuses unless allowed (LOCAL_PEERS).
    values: dict[str, Any] = {"timeout_seconds": TEST_TIMEOUT_SECONDS, "secret": SECRET}
    values.update(overrides)
    return WebhookConnector(WebhookConfig(**values), egress=egress)


SUCCESS = [
    Case("200", Reply(200, json={"ok": True}), {"outcome": "delivered", "provider": "webhook"}),
    Case("202", Reply(202), {"outcome": "delivered", "provider": "webhook"}),
    Case("204-no-body", Reply(204), {"outcome": "delivered", "provider": "webhook"}),
]

WEBHOOK_ERRORS = [
    Case(
        "410-gone",
        Reply(410, body=b"subscription removed"),
        {"outcome": "failed", "retriable": False, "provider_fault": False},
    ),
    # A redirect is not followed (it could lead to an internal address): one request, failed.
    Case(
        "302-not-followed",
        Reply(302, headers={"Location": "http://169.254.169.254/latest/meta-data/"}),
        {"outcome": "failed", "retriable": False},
    ),
]


@pytest.mark.parametrize("case", [c.param() for c in SUCCESS + STANDARD_FAULTS + WEBHOOK_ERRORS])
async def test_webhook_answers_become_results_and_requests_are_signed(
    case: Case, peer: HttpPeer
) -> None:
    peer.reply(case.reply)
    webhook = connector(peer)
    before = int(time.time())
    result = await webhook.deliver(HOOK.model_copy(update={"to": peer.url + "/hooks/acme?x=1"}))
    await webhook.close()

    assert_result(result, case.expect)
    assert result.provider == "webhook"
    [request] = peer.requests
    assert request.method == "POST"
    assert request.path == "/hooks/acme" and request.query == {"x": ["1"]}
    headers = request.headers
    assert headers["content-type"] == "application/json"
    assert headers["idempotency-key"] == "idem-n-1"
    assert headers["x-notification-id"] == "n-1"
    timestamp = int(headers["x-notification-timestamp"])
    assert before <= timestamp <= int(time.time())
    # The documented recipe, computed independently of the module under test.
    digest = hmac.new(
        SECRET.encode(), f"{timestamp}.".encode() + request.body, hashlib.sha256
    ).hexdigest()
    assert headers["x-notification-signature"] == f"v1={digest}"
    assert verify(SECRET, headers["x-notification-signature"], timestamp, request.body)
    sent_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))
    assert request.json() == {
        "notification_id": "n-1",
        "tenant_id": "acme",
        "channel": "webhook",
        "subject": "Your order shipped",
        "text": "Order 42 is on its way.",
        "html": "<p>Order 42 is on its way.</p>",
        "data": {"order_id": 42, "items": ["book"]},
        "attempt": 2,
        "sent_at": sent_at,
    }


async def test_configured_url_wins_and_extra_headers_cannot_replace_ours(peer: HttpPeer) -> None:
    webhook = connector(
        peer,
        url=peer.url + "/fixed",
        headers={"Authorization": "Bearer receiver-token", "X-Notification-Signature": "forged"},
    )
    result = await webhook.deliver(HOOK.model_copy(update={"to": peer.url + "/ignored"}))
    await webhook.close()
    assert result.outcome == "delivered"
    [request] = peer.requests
    assert request.path == "/fixed"
    assert request.headers["authorization"] == "Bearer receiver-token"
    timestamp = request.headers["x-notification-timestamp"]
    assert request.headers["x-notification-signature"] == sign(SECRET, timestamp, request.body)
    assert "receiver-token" not in repr(webhook.config) and SECRET not in repr(webhook.config)


@pytest.mark.parametrize(
    "target",
    [
        "http://127.0.0.1:{port}/hook",
        "http://localhost:{port}/hook",
        "http://10.0.0.1/hook",
        "http://192.168.1.10/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:{port}/hook",
        "http://[::ffff:127.0.0.1]:{port}/hook",
        "http://0.0.0.0:{port}/hook",
        "http://100.64.0.1/hook",
        "http://224.0.0.1/hook",
        "ftp://example.com/hook",
        "file:///etc/passwd",
    ],
)
async def test_non_public_targets_and_other_schemes_are_refused(
    peer: HttpPeer, target: str
) -> None:
    port = peer.url.rsplit(":", 1)[1]
    webhook = connector(peer, egress=Egress())
    result = await webhook.deliver(HOOK.model_copy(update={"to": target.format(port=port)}))
    await webhook.close()
    assert_result(
        result,
        {
            "outcome": "failed",
            "retriable": False,
            "provider_fault": False,
            "address_invalid": False,
        },
    )
    assert peer.requests == []  # nothing was sent


async def test_redirects_are_not_followed_even_by_a_client_that_would(peer: HttpPeer) -> None:
    peer.reply(Reply(307, headers={"Location": peer.url + "/internal"}))
    async with guarded_client(LOCAL_PEERS) as shared:
        shared.follow_redirects = True
        webhook = WebhookConnector(WebhookConfig(secret=SECRET), http=shared, egress=LOCAL_PEERS)
        result = await webhook.deliver(HOOK.model_copy(update={"to": peer.url + "/hook"}))
    assert result.outcome == "failed" and not result.retriable
    assert [request.path for request in peer.requests] == ["/hook"]


async def test_other_schemes_are_refused_even_when_private_targets_are_allowed(
    peer: HttpPeer,
) -> None:
    webhook = connector(peer)
    result = await webhook.deliver(HOOK.model_copy(update={"to": "file:///etc/passwd"}))
    await webhook.close()
    assert result.outcome == "failed" and not result.retriable


def _resolver(*addresses: str) -> Egress:
    async def resolve(host: str, port: int) -> list[str]:
        return list(addresses)

    return Egress(resolver=resolve)


async def test_every_resolved_address_is_checked() -> None:
    # A public name with one private address among its answers is refused.
    with pytest.raises(PermanentDeliveryError, match=r"hooks\.example\.com .* 10\.1\.2\.3"):
        await check_target(
            "https://hooks.example.com/secret-path-token",
            egress=_resolver("93.184.215.14", "10.1.2.3"),
        )
    # Only public answers: allowed.
    public = _resolver("93.184.215.14", "2606:2800:21f::1", "::ffff:93.184.215.14")
    await check_target("https://hooks.example.com/secret-path-token", egress=public)


async def test_refusal_reason_names_the_host_not_the_url(peer: HttpPeer) -> None:
    webhook = connector(peer, egress=Egress())
    result = await webhook.deliver(
        HOOK.model_copy(update={"to": "http://127.0.0.1/hooks/T000/B000/secret-token"})
    )
    await webhook.close()
    assert result.reason is not None and "secret-token" not in result.reason


def test_verify_accepts_the_real_signature_and_rejects_everything_else() -> None:
    body = json.dumps({"a": 1}).encode()
    now = 1_700_000_000
    good = sign(SECRET, now, body)
    assert verify(SECRET, good, now, body, now=now)
    assert verify(SECRET, good, str(now), body.decode(), now=now + 299)
    assert verify(SECRET, f"v1=deadbeef, {good}", now, body, now=now)  # rotation: any match
    assert not verify("other-secret", good, now, body, now=now)
    assert not verify(SECRET, good, now, body + b" ", now=now)
    assert not verify(SECRET, good, now + 1, body, now=now)
    assert not verify(SECRET, good, now, body, now=now + 301)  # stale
    assert not verify(SECRET, good, now, body, now=now - 301)  # from the future
    assert not verify(SECRET, good.removeprefix("v1="), now, body, now=now)
    assert not verify(SECRET, good, "not-a-number", body, now=now)
    assert not verify(SECRET, "v1=é", now, body, now=now)
