"""The shim's front door against the real broker: credentials, scopes, JWTs, rate and size
limits, Idempotency-Key, error shape and the OpenAPI document.

API keys are written to config.api-keys the way the admin API writes them (an ApiKey record
with the SHA-256 of the secret); the shim must pick them up from the topic.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import Producer
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from openapi_spec_validator import validate

from api_shim.app import create_app
from api_shim.auth import new_api_key
from core.catalog import TopicCatalog
from core.kafka_clients import producer_config
from core.provision import provision
from core.settings import Settings
from schemas import SchemaCatalog, build_codec
from tests.support.http_peer import Reply
from tests.support.jwks import Issuer, new_key

pytestmark = pytest.mark.integration

CODEC = build_codec(None, SchemaCatalog.load())
BOOTSTRAP_A = {"X-API-Key": "boot-a"}
BODY = {"recipients": [{"user_id": "u1"}], "channels": ["email"], "content": {"text": "hi"}}


@pytest.fixture(scope="module")
def issuer() -> Iterator[Issuer]:
    with Issuer() as running:
        yield running


@pytest.fixture(scope="module")
def settings(kafka_bootstrap: str, fresh_database: str, issuer: Issuer) -> Settings:
    settings = Settings(
        kafka_bootstrap_servers=kafka_bootstrap,
        topic_prefix=f"t-{uuid.uuid4().hex[:12]}.",
        database_url=fresh_database,
        shim_api_keys={"boot-a": "tenant-a", "boot-b": "tenant-b", "boot-off": "tenant-off"},
        **issuer.settings(),
    )
    provision(settings)
    return settings


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def write_api_key(
    settings: Settings, tenant: str, scopes: list[str], *, revoked: bool = False
) -> str:
    """An ApiKey record on config.api-keys, as the admin API writes it; returns the key."""
    key_id, key, digest = new_api_key()
    record = {
        "key_id": key_id,
        "tenant_id": tenant,
        "name": "test",
        "scopes": scopes,
        "secret_sha256": digest,
        "created_at": int(time.time() * 1000),
        "revoked_at": int(time.time() * 1000) if revoked else None,
    }
    publish_api_key(settings, key_id, record)
    return key


def publish_api_key(settings: Settings, key_id: str, record: dict[str, Any]) -> None:
    producer = Producer(producer_config(settings))
    topic = TopicCatalog.load(settings).name("config.api-keys")
    producer.produce(topic, key=key_id.encode(), value=CODEC.encode("ApiKey", record))
    assert producer.flush(10) == 0


def eventually(client: TestClient, method: str, path: str, expect: int, **kwargs: Any) -> Any:
    """The view follows the topic asynchronously: poll until the answer is `expect`."""
    deadline = time.monotonic() + 10
    while True:
        response = client.request(method, path, **kwargs)
        if response.status_code == expect or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


def assert_error(response: Any, status: int, error: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error"] == error, body
    assert body["message"]
    assert "Traceback" not in response.text
    return body


# -- API keys ----------------------------------------------------------------------------------


def test_no_credentials_is_401_with_a_challenge(client: TestClient) -> None:
    response = client.post("/api/v1/notifications", json=BODY)
    assert_error(response, 401, "unauthorized")
    assert "ApiKey" in response.headers["WWW-Authenticate"]


@pytest.mark.parametrize("key", ["nope", "nk_deadbeef_wrong", "nk_", "nk__x"])
def test_unknown_or_malformed_key_is_401(client: TestClient, key: str) -> None:
    assert_error(
        client.post("/api/v1/notifications", json=BODY, headers={"X-API-Key": key}),
        401,
        "unauthorized",
    )


def test_a_key_from_the_topic_works_with_its_scopes_only(
    client: TestClient, settings: Settings
) -> None:
    send_only = write_api_key(settings, "tenant-a", ["send"])
    response = eventually(
        client, "POST", "/api/v1/notifications", 202, json=BODY, headers={"X-API-Key": send_only}
    )
    assert response.status_code == 202, response.text
    notification_id = response.json()["notifications"][0]["notification_id"]
    # Reading needs the read scope.
    body = assert_error(
        client.get(f"/api/v1/notifications/{notification_id}", headers={"X-API-Key": send_only}),
        403,
        "forbidden",
    )
    assert "'read'" in body["message"]


def test_the_right_secret_with_a_wrong_key_id_or_vice_versa_is_refused(
    client: TestClient, settings: Settings
) -> None:
    key = write_api_key(settings, "tenant-a", ["send"])
    eventually(client, "POST", "/api/v1/notifications", 202, json=BODY, headers={"X-API-Key": key})
    key_id, secret = key.removeprefix("nk_").split("_", 1)
    tampered = f"nk_{key_id}_{secret[:-1]}{'A' if secret[-1] != 'A' else 'B'}"
    assert_error(
        client.post("/api/v1/notifications", json=BODY, headers={"X-API-Key": tampered}),
        401,
        "unauthorized",
    )


def test_a_revoked_key_is_refused(client: TestClient, settings: Settings) -> None:
    key_id, key, digest = new_api_key()
    record = {
        "key_id": key_id,
        "tenant_id": "tenant-a",
        "name": "soon revoked",
        "scopes": ["send"],
        "secret_sha256": digest,
        "created_at": int(time.time() * 1000),
        "revoked_at": None,
    }
    publish_api_key(settings, key_id, record)
    headers = {"X-API-Key": key}
    assert (
        eventually(
            client, "POST", "/api/v1/notifications", 202, json=BODY, headers=headers
        ).status_code
        == 202
    )
    publish_api_key(settings, key_id, {**record, "revoked_at": int(time.time() * 1000)})
    body = assert_error(
        eventually(client, "POST", "/api/v1/notifications", 401, json=BODY, headers=headers),
        401,
        "unauthorized",
    )
    assert "revoked" in body["message"]


def test_another_tenants_notification_is_404(client: TestClient) -> None:
    sent = client.post("/api/v1/notifications", json=BODY, headers=BOOTSTRAP_A)
    assert sent.status_code == 202
    notification_id = sent.json()["notifications"][0]["notification_id"]
    other = client.get(f"/api/v1/notifications/{notification_id}", headers={"X-API-Key": "boot-b"})
    assert_error(other, 404, "not_found")


def test_a_disabled_tenants_keys_are_refused(client: TestClient, settings: Settings) -> None:
    headers = {"X-API-Key": "boot-off"}
    assert client.post("/api/v1/notifications", json=BODY, headers=headers).status_code == 202
    producer = Producer(producer_config(settings))
    tenant = {"tenant_id": "tenant-off", "enabled": False, "updated_at": int(time.time() * 1000)}
    producer.produce(
        TopicCatalog.load(settings).name("config.tenants"),
        key=b"tenant-off",
        value=CODEC.encode("Tenant", tenant),
    )
    assert producer.flush(10) == 0
    refused = eventually(client, "POST", "/api/v1/notifications", 403, json=BODY, headers=headers)
    assert "disabled" in assert_error(refused, 403, "forbidden")["message"]


# -- JWT ---------------------------------------------------------------------------------------


def test_a_viewer_token_reads_and_cannot_send(client: TestClient, issuer: Issuer) -> None:
    viewer = issuer.bearer(issuer.token(roles=["viewer"], tenant_id="tenant-a"))
    # Authorised to read: the answer is about the object (unknown here), not the caller.
    assert_error(client.get("/api/v1/notifications/nope", headers=viewer), 404, "not_found")
    assert_error(client.post("/api/v1/notifications", json=BODY, headers=viewer), 403, "forbidden")


def test_a_token_without_a_role_may_not_read_tenant_data(
    client: TestClient, issuer: Issuer
) -> None:
    user = issuer.bearer(issuer.token(roles=[]))
    assert_error(client.get("/api/v1/notifications/nope", headers=user), 403, "forbidden")


@pytest.mark.parametrize(
    ("claims", "says"),
    [
        ({"ttl": -120}, "expired"),
        ({"key": "forged"}, "signature"),
        ({"aud": "someone-else"}, "audience"),
        ({"iss": "https://evil.test/"}, "issuer"),
        ({"tenant_id": None}, "tenant_id"),
        ({"kid": "unknown-kid"}, "not signed by a key of the issuer"),
    ],
)
def test_bad_tokens_are_401_and_say_why(
    client: TestClient, issuer: Issuer, claims: dict[str, Any], says: str
) -> None:
    if claims.get("key") == "forged":
        claims = {**claims, "key": new_key()}
    token = issuer.token(roles=["admin"], **claims)
    body = assert_error(
        client.get("/api/v1/notifications/x", headers=issuer.bearer(token)), 401, "unauthorized"
    )
    assert says in body["message"]


def test_garbage_bearer_is_401(client: TestClient) -> None:
    response = client.get("/api/v1/notifications/x", headers={"Authorization": "Bearer not.a.jwt"})
    assert_error(response, 401, "unauthorized")


def test_a_token_signed_with_another_algorithm_than_its_keys_is_401(
    client: TestClient, issuer: Issuer
) -> None:
    # An ES256 header naming the issuer's RSA key: PyJWT raised TypeError, a 500.
    ec_token = issuer.token(
        roles=["admin"], key=ec.generate_private_key(ec.SECP256R1()), algorithm="ES256"
    )
    body = assert_error(
        client.get("/api/v1/notifications/x", headers=issuer.bearer(ec_token)), 401, "unauthorized"
    )
    assert "algorithm" in body["message"]
    # HS256 with the public key as the HMAC secret (the classic confusion) is refused too.
    hs_token = issuer.token(roles=["admin"], key="s" * 32, algorithm="HS256")
    assert_error(
        client.get("/api/v1/notifications/x", headers=issuer.bearer(hs_token)), 401, "unauthorized"
    )


def test_unknown_key_ids_refetch_the_jwks_at_most_once_per_cooldown(
    client: TestClient, issuer: Issuer
) -> None:
    before = issuer.jwks_fetches()
    for _ in range(20):
        token = issuer.token(roles=["admin"], kid=f"kid-{uuid.uuid4().hex[:8]}")
        response = client.get("/api/v1/notifications/x", headers=issuer.bearer(token))
        assert_error(response, 401, "unauthorized")
    # The module's shim has the default 60 s cooldown: one fetch at most (none if a test
    # before fetched within it), not one per token. (PyJWT >= 2.11 has a cooldown of its own;
    # the 2.8 that pyproject.toml allows refetched for every token.)
    assert issuer.jwks_fetches() - before <= 1


def test_a_failing_jwks_is_asked_at_most_once_per_cooldown(settings: Settings) -> None:
    # An issuer outage: every token (known kid or not) used to retry the fetch, one 5 s
    # timeout after another, before the caller was even rate limited.
    with Issuer() as own:
        quick = settings.model_copy(update={**own.settings(), "shim_jwt_jwks_refetch_seconds": 2.0})
        own.peer.default = Reply(503, body=b"down")
        with TestClient(create_app(quick)) as client:
            token = own.bearer(own.token(roles=["viewer"]))
            for _ in range(10):
                body = assert_error(
                    client.get("/api/v1/notifications/x", headers=token), 401, "unauthorized"
                )
                assert "unreachable" in body["message"]
            assert own.jwks_fetches() == 1
            own.serve(own.jwk())  # back
            time.sleep(2.1)
            assert_error(client.get("/api/v1/notifications/x", headers=token), 404, "not_found")
            assert own.jwks_fetches() == 2


def test_a_rotated_in_key_is_picked_up_after_the_cooldown(settings: Settings) -> None:
    with Issuer(kid="old-key") as own, Issuer(kid="new-key") as rotated:
        quick = settings.model_copy(update={**own.settings(), "shim_jwt_jwks_refetch_seconds": 2.0})
        with TestClient(create_app(quick)) as client:
            old = own.bearer(own.token(roles=["viewer"]))
            assert_error(client.get("/api/v1/notifications/x", headers=old), 404, "not_found")
            assert own.jwks_fetches() == 1
            # The issuer starts signing with a new key: within the cooldown it is not asked.
            own.serve(own.jwk(), rotated.jwk())
            new = rotated.bearer(rotated.token(roles=["viewer"]))
            for _ in range(5):
                assert_error(
                    client.get("/api/v1/notifications/x", headers=new), 401, "unauthorized"
                )
            assert own.jwks_fetches() == 1
            time.sleep(2.1)
            assert_error(client.get("/api/v1/notifications/x", headers=new), 404, "not_found")
            assert_error(client.get("/api/v1/notifications/x", headers=old), 404, "not_found")
            assert own.jwks_fetches() == 2


@pytest.mark.parametrize("missing", ["shim_jwt_issuer", "shim_jwt_audience"])
def test_a_jwks_without_issuer_or_audience_refuses_to_start(
    settings: Settings, missing: str
) -> None:
    # Without both, a token the issuer signed for any other application would be accepted.
    with pytest.raises(ValueError, match=missing.upper()):
        create_app(settings.model_copy(update={missing: None}))


def test_a_token_for_an_unknown_tenant_is_401_until_the_tenant_exists(
    client: TestClient, settings: Settings, issuer: Issuer
) -> None:
    tenant = f"tenant-{uuid.uuid4().hex[:8]}"
    viewer = issuer.bearer(issuer.token(roles=["viewer"], tenant_id=tenant))
    body = assert_error(client.get("/api/v1/notifications/x", headers=viewer), 401, "unauthorized")
    assert "tenant" in body["message"]
    # Once the operator created it (a Tenant record on config.tenants), its users are in.
    producer = Producer(producer_config(settings))
    record = {"tenant_id": tenant, "enabled": True, "updated_at": int(time.time() * 1000)}
    producer.produce(
        TopicCatalog.load(settings).name("config.tenants"),
        key=tenant.encode(),
        value=CODEC.encode("Tenant", record),
    )
    assert producer.flush(10) == 0
    known = eventually(client, "GET", "/api/v1/notifications/x", 404, headers=viewer)
    assert_error(known, 404, "not_found")


# -- limits ------------------------------------------------------------------------------------


def test_rate_limit_answers_429_with_retry_after(settings: Settings) -> None:
    limited = settings.model_copy(
        update={"shim_rate_limit_per_key": 2.0, "shim_rate_limit_burst_seconds": 1.0}
    )
    with TestClient(create_app(limited)) as client:
        answers = [client.get("/api/v1/notifications/x", headers=BOOTSTRAP_A) for _ in range(4)]
        assert [a.status_code for a in answers[:2]] == [404, 404]
        refused = answers[-1]
        assert_error(refused, 429, "rate_limited")
        assert int(refused.headers["Retry-After"]) >= 1
        # Another tenant has its own bucket.
        assert (
            client.get("/api/v1/notifications/x", headers={"X-API-Key": "boot-b"}).status_code
            == 404
        )


def test_tenant_rate_limit_covers_all_its_keys(settings: Settings) -> None:
    limited = settings.model_copy(
        update={"shim_rate_limit_per_tenant": 2.0, "shim_rate_limit_burst_seconds": 1.0}
    )
    with TestClient(
        create_app(
            limited,
        )
    ) as client:
        key_b2 = {"X-API-Key": "boot-b"}
        codes = [
            client.get("/api/v1/notifications/x", headers=key_b2).status_code for _ in range(3)
        ]
        assert codes[-1] == 429


def test_oversized_body_is_413_declared_or_streamed(settings: Settings) -> None:
    small = settings.model_copy(update={"shim_max_body_bytes": 1000})
    big = {**BODY, "content": {"text": "x" * 5000}}
    with TestClient(create_app(small)) as client:
        assert_error(
            client.post("/api/v1/notifications", json=big, headers=BOOTSTRAP_A),
            413,
            "payload_too_large",
        )

        def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
            yield b'{"recipients": [{"user_id": "u1"}], "channels": ["email"], '
            yield b'"content": {"text": "'
            for _ in range(10):
                yield b"x" * 500
            yield b'"}}'

        streamed = client.post(
            "/api/v1/notifications",
            content=chunks(),
            headers={**BOOTSTRAP_A, "Content-Type": "application/json"},
        )
        assert_error(streamed, 413, "payload_too_large")
        # Under the limit still works.
        assert (
            client.post("/api/v1/notifications", json=BODY, headers=BOOTSTRAP_A).status_code == 202
        )


def test_a_record_over_kafkas_size_limit_is_413_not_503(settings: Settings) -> None:
    """An operator may raise SHIM_MAX_BODY_BYTES past Kafka's 1 MB message limit: a request
    that passes the body limit but not Kafka's is the caller's to shrink (413), not an outage
    to retry (503). The real producer refuses it before it leaves the process."""
    roomy = settings.model_copy(update={"shim_max_body_bytes": 8 * 1024 * 1024})
    addresses = {f"chat{i}": "a" * 2000 for i in range(8)}
    recipients = [{"user_id": f"u{i}", "addresses": addresses} for i in range(80)]
    with TestClient(create_app(roomy)) as client:
        response = client.post(
            "/api/v1/notifications", json={**BODY, "recipients": recipients}, headers=BOOTSTRAP_A
        )
        body = assert_error(response, 413, "payload_too_large")
        assert "message size limit" in body["message"]
        assert (
            client.post("/api/v1/notifications", json=BODY, headers=BOOTSTRAP_A).status_code == 202
        )


def test_malformed_json_and_invalid_fields_are_422_naming_the_field(client: TestClient) -> None:
    broken = client.post(
        "/api/v1/notifications",
        content=b"{not json",
        headers={**BOOTSTRAP_A, "Content-Type": "application/json"},
    )
    assert_error(broken, 422, "validation_failed")
    invalid = client.post(
        "/api/v1/notifications", json={**BODY, "channels": ["pigeon"]}, headers=BOOTSTRAP_A
    )
    body = assert_error(invalid, 422, "validation_failed")
    assert body["detail"][0]["field"].startswith("channels")


def test_unknown_path_and_wrong_method_answer_in_the_error_shape(client: TestClient) -> None:
    assert_error(client.get("/api/v1/nowhere", headers=BOOTSTRAP_A), 404, "not_found")
    wrong_method = client.put("/api/v1/notifications", headers=BOOTSTRAP_A)
    assert_error(wrong_method, 405, "method_not_allowed")
    # RFC 9110: a 405 names the methods the resource allows.
    assert wrong_method.headers["Allow"] == "POST"


# -- Idempotency-Key ---------------------------------------------------------------------------


def test_idempotency_key_replays_the_first_answer_even_in_another_process(
    client: TestClient, settings: Settings
) -> None:
    key = {"Idempotency-Key": f"order-{uuid.uuid4().hex[:8]}"}
    first = client.post("/api/v1/notifications", json=BODY, headers={**BOOTSTRAP_A, **key})
    again = client.post("/api/v1/notifications", json=BODY, headers={**BOOTSTRAP_A, **key})
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["Idempotent-Replayed"] == "true"
    # Another tenant's identical key is another request.
    other = client.post("/api/v1/notifications", json=BODY, headers={"X-API-Key": "boot-b", **key})
    assert other.json()["request_id"] != first.json()["request_id"]
    # A new shim process (restart, or another replica) knows the answer from the topic.
    with TestClient(create_app(settings)) as restarted:
        replayed = restarted.post(
            "/api/v1/notifications", json=BODY, headers={**BOOTSTRAP_A, **key}
        )
        assert replayed.json() == first.json()
        assert replayed.headers.get("Idempotent-Replayed") == "true"


def test_idempotency_key_reused_for_another_body_is_422(client: TestClient) -> None:
    key = {"Idempotency-Key": f"k-{uuid.uuid4().hex[:8]}"}
    assert (
        client.post("/api/v1/notifications", json=BODY, headers={**BOOTSTRAP_A, **key}).status_code
        == 202
    )
    other_body = {**BODY, "content": {"text": "something else"}}
    response = client.post("/api/v1/notifications", json=other_body, headers={**BOOTSTRAP_A, **key})
    body = assert_error(response, 422, "unprocessable")
    assert "Idempotency-Key" in body["message"]


# -- the OpenAPI document ----------------------------------------------------------------------


def test_openapi_document_is_valid_and_documents_errors(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    validate(document)  # raises on any violation of the OpenAPI 3.1 specification
    operations = [
        (path, method, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    ]
    assert operations
    for path, method, operation in operations:
        where = f"{method.upper()} {path}"
        assert operation.get("summary"), f"{where} has no summary"
        assert operation.get("tags"), f"{where} has no tag"
        codes = set(operation["responses"])
        assert any(code.startswith("2") for code in codes), f"{where} documents no success"
        if operation.get("security") or path.startswith("/api/"):
            assert "401" in codes or path.startswith("/api/v1/inbound"), f"{where}: no 401"
            # The operator's platform endpoints and provider callbacks are not rate limited.
            limited = not path.startswith(("/api/v1/inbound", "/api/v1/platform"))
            assert "429" in codes or not limited, f"{where}: no 429"
