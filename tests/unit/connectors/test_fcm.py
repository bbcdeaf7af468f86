"""FCM HTTP v1 against a local peer playing both Google's token endpoint and FCM.

The peer verifies the service-account assertion with the public half of a throwaway RSA key
(signature, issuer, audience, scope, lifetime) before it issues a token, and FCM requests must
carry a token it issued.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
from dataclasses import dataclass, field
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from connectors.base import OutboundMessage
from connectors.fcm import FcmConfig, FcmConnector
from tests.support.http_peer import HttpPeer, Recorded, Reply
from tests.support.provider_cases import (
    LOCAL_PEERS,
    STANDARD_FAULTS,
    TEST_TIMEOUT_SECONDS,
    Case,
    assert_result,
    message,
)

PROJECT = "demo-project"
CLIENT_EMAIL = "notifier@demo-project.iam.gserviceaccount.com"
KEY_ID = "key-1"
FCM_ERROR_TYPE = "google.firebase.fcm.v1.FcmError"
SEND_PATH = f"/v1/projects/{PROJECT}/messages:send"
FCM_NAME = f"projects/{PROJECT}/messages/0:1500415314455276%31bd1c9631bd1c96"
PUSH = message(
    channel="push",
    to="device-token-abc",
    priority="high",
    data_json='{"order_id": 42, "deep_link": "app://orders/42", "from": "x", "google.x": "y"}',
)


def fcm_error(code: int, status: str, error_code: str | None, text: str) -> dict[str, Any]:
    details = []
    if error_code:
        details.append({"@type": f"type.googleapis.com/{FCM_ERROR_TYPE}", "errorCode": error_code})
    return {"error": {"code": code, "message": text, "status": status, "details": details}}


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def private_pem(rsa_key: rsa.RSAPrivateKey) -> str:
    return rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@dataclass
class GooglePeer:
    """Routes the shared HttpPeer: /token verifies the assertion, FCM answers `fcm`."""

    public_key: Any
    token_uri: str
    fcm: Reply = field(default_factory=lambda: Reply(200, json={"name": FCM_NAME}))
    token_reply: Reply | None = None  # None: verify and issue a fresh token
    expires_in: int = 3599
    issued: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    _serial: itertools.count[int] = field(default_factory=itertools.count)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, request: Recorded) -> Reply:
        if request.path == "/token":
            return self._token(request)
        return self.fcm

    def _token(self, request: Recorded) -> Reply:
        problem = self._check_assertion(request)
        if problem:
            with self._lock:
                self.problems.append(problem)
            return Reply(400, json={"error": "invalid_grant", "error_description": problem})
        if self.token_reply is not None:
            return self.token_reply
        with self._lock:
            token = f"ya29.test-{next(self._serial)}"
            self.issued.append(token)
        return Reply(
            200, json={"access_token": token, "expires_in": self.expires_in, "token_type": "Bearer"}
        )

    def _check_assertion(self, request: Recorded) -> str | None:
        if request.method != "POST":
            return f"token request used {request.method}"
        if not request.headers.get("content-type", "").startswith(
            "application/x-www-form-urlencoded"
        ):
            return "token request is not a form post"
        form = request.form()
        if form.get("grant_type") != ["urn:ietf:params:oauth:grant-type:jwt-bearer"]:
            return f"wrong grant_type {form.get('grant_type')}"
        [assertion] = form.get("assertion", [""])
        try:
            header = jwt.get_unverified_header(assertion)
            claims = jwt.decode(
                assertion,
                self.public_key,
                algorithms=["RS256"],
                audience=self.token_uri,
                issuer=CLIENT_EMAIL,
                options={"require": ["iss", "aud", "iat", "exp"]},
            )
        except jwt.PyJWTError as exc:
            return f"assertion rejected: {exc}"
        if header.get("alg") != "RS256" or header.get("kid") != KEY_ID:
            return f"wrong header {header}"
        if claims.get("scope") != "https://www.googleapis.com/auth/firebase.messaging":
            return f"wrong scope {claims.get('scope')}"
        if claims["exp"] - claims["iat"] != 3600:
            return "assertion lifetime is not one hour"
        return None


@pytest.fixture
def google(peer: HttpPeer, rsa_key: rsa.RSAPrivateKey) -> GooglePeer:
    handler = GooglePeer(public_key=rsa_key.public_key(), token_uri=peer.url + "/token")
    peer.handler = handler
    return handler


@pytest.fixture
def connector(peer: HttpPeer, private_pem: str) -> FcmConnector:
    return FcmConnector(config(peer, private_pem), egress=LOCAL_PEERS)


def config(peer: HttpPeer, private_pem: str, **overrides: Any) -> FcmConfig:
    values: dict[str, Any] = {
        "base_url": peer.url,
        "timeout_seconds": TEST_TIMEOUT_SECONDS,
        "project_id": PROJECT,
        "client_email": CLIENT_EMAIL,
        "private_key": private_pem,
        "private_key_id": KEY_ID,
        "token_uri": peer.url + "/token",
    }
    values.update(overrides)
    return FcmConfig(**values)


def expected_body(push: OutboundMessage = PUSH) -> dict[str, Any]:
    return {
        "message": {
            "token": "device-token-abc",
            "notification": {"title": "Your order shipped", "body": "Order 42 is on its way."},
            # Strings only; FCM's reserved keys ("from", "google.*") are dropped.
            "data": {"order_id": "42", "deep_link": "app://orders/42", "notification_id": "n-1"},
            "android": {"priority": "high"},
            "apns": {"headers": {"apns-priority": "10"}},
        }
    }


def split(peer: HttpPeer) -> tuple[list[Recorded], list[Recorded]]:
    token = [request for request in peer.requests if request.path == "/token"]
    fcm = [request for request in peer.requests if request.path != "/token"]
    return token, fcm


SUCCESS = [
    Case(
        "sent",
        Reply(200, json={"name": FCM_NAME}),
        {"outcome": "sent", "provider": "fcm", "provider_message_id": FCM_NAME},
    ),
]

INVALID_ADDRESS = {
    "outcome": "failed",
    "retriable": False,
    "provider_fault": False,
    "address_invalid": True,
}

PERMANENT = {
    "outcome": "failed",
    "retriable": False,
    "provider_fault": False,
    "address_invalid": False,
}

FCM_ERRORS = [
    Case(
        "404-unregistered",
        Reply(
            404, json=fcm_error(404, "NOT_FOUND", "UNREGISTERED", "Requested entity was not found.")
        ),
        INVALID_ADDRESS,
    ),
    Case(
        "400-invalid-token",
        Reply(
            400,
            json=fcm_error(
                400,
                "INVALID_ARGUMENT",
                "INVALID_ARGUMENT",
                "The registration token is not a valid FCM registration token",
            ),
        ),
        INVALID_ADDRESS,
    ),
    Case(
        "400-invalid-data-is-not-the-token",
        Reply(
            400,
            json={
                "error": {
                    "code": 400,
                    "message": "Invalid value at 'message.data[0].value' (TYPE_STRING), 12",
                    "status": "INVALID_ARGUMENT",
                    "details": [
                        {
                            "@type": "type.googleapis.com/google.rpc.BadRequest",
                            "fieldViolations": [
                                {"field": "message.data[0].value", "description": "bad value"}
                            ],
                        }
                    ],
                }
            },
        ),
        PERMANENT,
    ),
    Case(
        "400-token-field-violation",
        Reply(
            400,
            json={
                "error": {
                    "code": 400,
                    "message": "Request contains an invalid argument.",
                    "status": "INVALID_ARGUMENT",
                    "details": [
                        {
                            "@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                            "errorCode": "INVALID_ARGUMENT",
                        },
                        {
                            "@type": "type.googleapis.com/google.rpc.BadRequest",
                            "fieldViolations": [
                                {"field": "message.token", "description": "Invalid token"}
                            ],
                        },
                    ],
                }
            },
        ),
        INVALID_ADDRESS,
    ),
    Case(
        "400-message-too-big-is-not-the-token",
        Reply(
            400,
            json=fcm_error(
                400, "INVALID_ARGUMENT", "INVALID_ARGUMENT", "Message is too big: 4200 bytes"
            ),
        ),
        PERMANENT,
    ),
    Case(
        "403-sender-id-mismatch",
        Reply(
            403,
            json=fcm_error(403, "PERMISSION_DENIED", "SENDER_ID_MISMATCH", "SenderId mismatch"),
        ),
        INVALID_ADDRESS,
    ),
    Case(
        "429-quota-exceeded",
        Reply(
            429,
            json=fcm_error(429, "RESOURCE_EXHAUSTED", "QUOTA_EXCEEDED", "Quota exceeded."),
            headers={"Retry-After": "30"},
        ),
        {"outcome": "failed", "retriable": True, "retry_after": 30.0, "address_invalid": False},
    ),
    Case(
        "503-unavailable",
        Reply(
            503, json=fcm_error(503, "UNAVAILABLE", "UNAVAILABLE", "The service is unavailable.")
        ),
        {"outcome": "failed", "retriable": True, "provider_fault": True},
    ),
    Case(
        "500-internal",
        Reply(500, json=fcm_error(500, "INTERNAL", "INTERNAL", "Internal error encountered.")),
        {"outcome": "failed", "retriable": True, "provider_fault": True},
    ),
    Case(
        "401-third-party-auth",
        Reply(
            401,
            json=fcm_error(
                401, "UNAUTHENTICATED", "THIRD_PARTY_AUTH_ERROR", "Auth error from APNS"
            ),
        ),
        {"outcome": "failed", "retriable": False, "provider_fault": True, "address_invalid": False},
    ),
]

# A plain 401 (the token was refused) gets one fresh token and one more try.
FCM_ATTEMPTS = {"401-credentials": 2}


@pytest.mark.parametrize("case", [c.param() for c in SUCCESS + STANDARD_FAULTS + FCM_ERRORS])
async def test_fcm_answers_become_results_and_requests_match_the_v1_api(
    case: Case, peer: HttpPeer, google: GooglePeer, connector: FcmConnector
) -> None:
    google.fcm = case.reply
    result = await connector.deliver(PUSH)
    await connector.close()

    assert_result(result, case.expect)
    assert result.provider == "fcm"
    assert google.problems == []
    tokens, sends = split(peer)
    attempts = FCM_ATTEMPTS.get(case.id, 1)
    assert len(tokens) == attempts and len(sends) == attempts
    for request, token in zip(sends, google.issued, strict=True):
        assert request.method == "POST"
        assert request.path == SEND_PATH
        assert request.headers["authorization"] == f"Bearer {token}"
        assert request.headers["content-type"] == "application/json"
        assert request.json() == expected_body()


async def test_normal_priority_leaves_android_and_apns_priority_to_fcm(
    peer: HttpPeer, google: GooglePeer, connector: FcmConnector
) -> None:
    push = PUSH.model_copy(update={"priority": "normal", "subject": None, "data_json": "{}"})
    result = await connector.deliver(push)
    await connector.close()
    assert result.outcome == "sent"
    [request] = split(peer)[1]
    assert request.json() == {
        "message": {
            "token": "device-token-abc",
            "notification": {"body": "Order 42 is on its way."},
            "data": {"notification_id": "n-1"},
        }
    }


async def test_token_is_cached_across_sends_and_concurrent_sends_share_one_fetch(
    peer: HttpPeer, google: GooglePeer, connector: FcmConnector
) -> None:
    results = await asyncio.gather(*(connector.deliver(PUSH) for _ in range(5)))
    results.append(await connector.deliver(PUSH))
    await connector.close()
    assert [result.outcome for result in results] == ["sent"] * 6
    tokens, sends = split(peer)
    assert len(tokens) == 1 and len(sends) == 6
    assert {request.headers["authorization"] for request in sends} == {"Bearer ya29.test-0"}


async def test_a_token_near_expiry_is_replaced_before_use(
    peer: HttpPeer, google: GooglePeer, connector: FcmConnector
) -> None:
    google.expires_in = 30  # inside the refresh margin: never reused
    await connector.deliver(PUSH)
    await connector.deliver(PUSH)
    await connector.close()
    tokens, sends = split(peer)
    assert len(tokens) == 2
    assert [r.headers["authorization"] for r in sends] == [
        "Bearer ya29.test-0",
        "Bearer ya29.test-1",
    ]


async def test_a_refused_token_is_refreshed_once_then_the_send_succeeds(
    peer: HttpPeer, google: GooglePeer, connector: FcmConnector
) -> None:
    await connector.deliver(PUSH)  # caches ya29.test-0
    answers = iter([Reply(401, json=fcm_error(401, "UNAUTHENTICATED", None, "expired"))])

    def fcm_once_refused(request: Recorded) -> Reply:
        if request.path == "/token":
            return google(request)
        return next(answers, Reply(200, json={"name": FCM_NAME}))

    peer.handler = fcm_once_refused
    result = await connector.deliver(PUSH)
    await connector.close()
    assert result.outcome == "sent" and result.provider_message_id == FCM_NAME
    tokens, sends = split(peer)
    assert len(tokens) == 2
    assert [r.headers["authorization"] for r in sends] == [
        "Bearer ya29.test-0",
        "Bearer ya29.test-0",
        "Bearer ya29.test-1",
    ]


@pytest.mark.parametrize(
    ("reply", "expect"),
    [
        (
            Reply(400, json={"error": "invalid_grant", "error_description": "Invalid JWT"}),
            {"outcome": "failed", "retriable": False, "provider_fault": True},
        ),
        (
            Reply(503, json={"error": "backend_error"}),
            {"outcome": "failed", "retriable": True, "provider_fault": True},
        ),
        (
            Reply(200, json={}, delay=TEST_TIMEOUT_SECONDS + 1.0),
            {"outcome": "failed", "retriable": True, "provider_fault": True},
        ),
    ],
    ids=["400-invalid-grant", "503", "timeout"],
)
async def test_token_endpoint_failures(
    reply: Reply,
    expect: dict[str, Any],
    peer: HttpPeer,
    google: GooglePeer,
    connector: FcmConnector,
) -> None:
    google.token_reply = reply
    result = await connector.deliver(PUSH)
    await connector.close()
    assert_result(result, expect)
    assert google.problems == []
    tokens, sends = split(peer)
    assert len(tokens) == 1 and sends == []


async def test_secrets_stay_out_of_repr_and_reasons(peer: HttpPeer, google: GooglePeer) -> None:
    bad_key = "-----BEGIN PRIVATE KEY-----\nnot-a-key-SECRETMATERIAL\n-----END PRIVATE KEY-----\n"
    cfg = config(peer, bad_key)
    assert "SECRETMATERIAL" not in repr(cfg) and "SECRETMATERIAL" not in str(cfg)
    connector = FcmConnector(cfg, egress=LOCAL_PEERS)
    result = await connector.deliver(PUSH)
    await connector.close()
    assert_result(result, {"outcome": "failed", "retriable": False, "provider_fault": True})
    assert result.reason is not None and "SECRETMATERIAL" not in result.reason
    assert peer.requests == []  # nothing left the process


def test_config_from_a_service_account_file_ignores_unused_fields(private_pem: str) -> None:
    info = {
        "type": "service_account",
        "project_id": PROJECT,
        "private_key_id": KEY_ID,
        "private_key": private_pem,
        "client_email": CLIENT_EMAIL,
        "client_id": "123",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    cfg = FcmConfig.from_service_account(info)
    assert cfg.base_url == "https://fcm.googleapis.com"
    assert cfg.client_email == CLIENT_EMAIL and cfg.private_key.get_secret_value() == private_pem
