"""The send fast path answers exactly as the route it stands in for (api_shim.fast_send).

Two apps on the same settings, one with the fast path and one without: every request below
gets the same status, error body and headers from both, and the same record is produced. The
fast path's own count says which requests it served and which it handed to the route.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from api_shim.app import create_app
from api_shim.auth import new_api_key
from api_shim.fast_send import SendFastPath
from connectors.read_model import make_engine
from core.settings import Settings
from schemas import SchemaCatalog, build_codec
from tests.unit.test_shim_models import VALID, FakeProducer

URL = "/api/v1/notifications"
KEY = {"X-API-Key": "key-a"}
JSON = {"content-type": "application/json"}
# What differs per request by design: fresh ids and times.
VARYING = {"request_id", "created_at", "occurred_at", "notification_ids"}
HEADERS_COMPARED = ("content-type", "www-authenticate", "retry-after", "idempotent-replayed")


def _settings() -> Settings:
    return Settings(
        shim_api_keys={"key-a": "tenant-a", "key-b": "tenant-b"},
        topic_prefix="unit.",
        database_url="sqlite://",
        kafka_bootstrap_servers="127.0.0.1:9",
        shim_view_catchup_seconds=0.0,
        shim_max_body_bytes=4096,
        shim_rate_limit_per_key=1000.0,
    )


def _fast_path(app: FastAPI) -> SendFastPath:
    stack = app.middleware_stack
    while not isinstance(stack, SendFastPath):
        stack = stack.app  # type: ignore[union-attr]
    return stack


@pytest.fixture(scope="module")
def apps() -> Iterator[dict[str, Any]]:
    fast_producer, route_producer = FakeProducer(), FakeProducer()
    engine = make_engine("sqlite://")
    fast = create_app(_settings(), producer=fast_producer, engine=engine)  # type: ignore[arg-type]
    route = create_app(_settings(), producer=route_producer, engine=engine)  # type: ignore[arg-type]
    route.user_middleware = [m for m in route.user_middleware if m.cls is not SendFastPath]
    with (
        TestClient(fast, raise_server_exceptions=False) as fast_client,
        TestClient(route, raise_server_exceptions=False) as route_client,
    ):
        yield {
            "fast": (fast_client, fast_producer),
            "route": (route_client, route_producer),
            "path": _fast_path(fast),
        }
    engine.dispose()


def _record(producer: FakeProducer) -> dict[str, Any] | None:
    codec = build_codec(None, SchemaCatalog.load())
    requests = [s for s in producer.sent if "requests" in s["topic"]]
    if not requests:
        return None
    sent = requests[-1]
    record = codec.decode(sent["value"], "NotificationRequest")
    return {
        "topic": sent["topic"],
        "key": sent["key"],
        **{k: v for k, v in record.items() if k not in VARYING},
    }


def _answer(response: Any) -> dict[str, Any]:
    body = response.json() if response.content else None
    if response.status_code == 202:
        body = {"keys": sorted(body), "notifications": len(body["notifications"])}
    headers = {h: response.headers.get(h) for h in HEADERS_COMPARED}
    return {"status": response.status_code, "body": body, "headers": headers}


def _both(apps: dict[str, Any], **request: Any) -> tuple[dict[str, Any], bool]:
    """Sends the request to both apps; (the answer, whether the fast path served it)."""
    answers = {}
    path: SendFastPath = apps["path"]
    before = path.served
    for name in ("fast", "route"):
        client, producer = apps[name]
        producer.sent.clear()
        response = client.post(URL, **request)
        answers[name] = {**_answer(response), "record": _record(producer)}
    fast, route = answers["fast"], answers["route"]
    assert fast == route, {
        k: (fast["record"][k], route["record"][k])
        for k in (fast["record"] or {})
        if route["record"] and fast["record"][k] != route["record"].get(k)
    }
    return answers["fast"], path.served > before


BIG = {**VALID, "data": {"blob": "x" * 5000}}
CASES: dict[str, tuple[dict[str, Any], bool]] = {
    "valid": ({"json": VALID, "headers": KEY}, True),
    "tenant b": ({"json": VALID, "headers": {"X-API-Key": "key-b"}}, True),
    "traceparent": (
        {
            "json": VALID,
            "headers": {**KEY, "traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"},
        },
        True,
    ),
    "unknown key": ({"json": VALID, "headers": {"X-API-Key": "nope"}}, True),
    "no key": ({"json": VALID}, False),
    "bearer": ({"json": VALID, "headers": {"Authorization": "Bearer x.y.z"}}, False),
    "invalid body": ({"json": {**VALID, "channels": ["pigeon"]}, "headers": KEY}, False),
    "invalid body, unknown key": (
        {"json": {"recipients": []}, "headers": {"X-API-Key": "n"}},
        False,
    ),
    "not json": ({"content": b"{nope", "headers": {**KEY, **JSON}}, False),
    "form": ({"data": {"a": "b"}, "headers": KEY}, False),
    "over the limit": ({"json": BIG, "headers": KEY}, False),
    "empty idempotency key": ({"json": VALID, "headers": {**KEY, "Idempotency-Key": ""}}, False),
    "long idempotency key": (
        {"json": VALID, "headers": {**KEY, "Idempotency-Key": "k" * 257}},
        False,
    ),
    "long traceparent": ({"json": VALID, "headers": {**KEY, "traceparent": "0" * 129}}, False),
    "unknown batch": ({"json": {**VALID, "batch_id": "no-such-batch"}, "headers": KEY}, True),
}


@pytest.mark.parametrize("case", list(CASES))
def test_same_answer_as_the_route(apps: dict[str, Any], case: str) -> None:
    request, served_fast = CASES[case]
    _, served = _both(apps, **request)
    assert served == served_fast


def test_query_string_goes_to_the_route(apps: dict[str, Any]) -> None:
    client, _ = apps["fast"]
    before = apps["path"].served
    assert client.post(URL + "?x=1", json=VALID, headers=KEY).status_code == 202
    assert apps["path"].served == before


def test_idempotency_key_first_replay_and_reuse(apps: dict[str, Any]) -> None:
    headers = {**KEY, "Idempotency-Key": "fast-path-1"}
    first, served = _both(apps, json=VALID, headers=headers)
    assert served and first["status"] == 202 and first["record"] is not None
    replay, served = _both(apps, json=VALID, headers=headers)
    assert served and replay["headers"]["idempotent-replayed"] == "true"
    assert replay["record"] is None  # nothing produced again
    reused, served = _both(apps, json={**VALID, "data": {"name": "Bo"}}, headers=headers)
    assert served and reused["status"] == 422


def test_produce_failure_is_the_routes_503(apps: dict[str, Any]) -> None:
    from api_shim.producer import ProduceTimeout

    for name in ("fast", "route"):
        apps[name][1].fail = ProduceTimeout("no ack")
    try:
        answer, served = _both(apps, json=VALID, headers=KEY)
    finally:
        for name in ("fast", "route"):
            apps[name][1].fail = None
    assert served and answer["status"] == 503


def test_the_served_answer_is_json_with_a_length(apps: dict[str, Any]) -> None:
    client, _ = apps["fast"]
    response = client.post(URL, json=VALID, headers=KEY)
    assert response.status_code == 202
    assert int(response.headers["content-length"]) == len(response.content)
    assert json.loads(response.content)["request_id"]


def _add_key(apps: dict[str, Any], scopes: list[str], revoked: bool = False) -> str:
    key_id, key, digest = new_api_key()
    record = {
        "key_id": key_id,
        "tenant_id": "tenant-a",
        "name": "",
        "scopes": scopes,
        "secret_sha256": digest,
        "created_at": 1,
        "revoked_at": 2 if revoked else None,
    }
    for name in ("fast", "route"):
        apps[name][0].app.state.views["config.api-keys"].apply(key_id, record)
    return key


@pytest.mark.parametrize(
    ("scopes", "revoked", "status"),
    [(["send"], False, 202), (["read"], False, 403), (["send"], True, 401)],
)
def test_stored_keys_scopes_and_revocation(
    apps: dict[str, Any], scopes: list[str], revoked: bool, status: int
) -> None:
    key = _add_key(apps, scopes, revoked)
    answer, served = _both(apps, json=VALID, headers={"X-API-Key": key})
    assert served and answer["status"] == status


def _samples(client: TestClient) -> dict[tuple[str, str, str], float]:
    text = client.get("/metrics").text
    found = {}
    for line in text.splitlines():
        if line.startswith("notifications_shim_requests_total{"):
            labels, value = line[len("notifications_shim_requests_total{") :].split("} ")
            parts = dict(p.split("=", 1) for p in labels.split(","))
            key = tuple(parts[k].strip('"') for k in ("route", "method", "status"))
            found[key] = float(value)
    return found


def test_metrics_count_by_route_template_fast_path_included(apps: dict[str, Any]) -> None:
    client, _ = apps["fast"]
    before = _samples(client)
    assert client.post(URL, json=VALID, headers=KEY).status_code == 202  # fast path
    assert client.post(URL, json={"recipients": []}, headers=KEY).status_code == 422  # route
    assert client.get(URL + "/n-123", headers=KEY).status_code in (404, 503)
    assert client.get("/no/such/path").status_code == 404
    after = _samples(client)

    def grew(key: tuple[str, str, str]) -> float:
        return after.get(key, 0) - before.get(key, 0)

    assert grew((URL, "POST", "202")) == 1
    assert grew((URL, "POST", "422")) == 1
    status = "404" if (URL + "/{notification_id}", "GET", "404") in after else "503"
    assert grew((URL + "/{notification_id}", "GET", status)) == 1
    assert grew(("unmatched", "GET", "404")) == 1
    text = client.get("/metrics").text
    assert (
        'notifications_shim_request_seconds_bucket{le="0.0025",route="/api/v1/notifications"}'
        in text
    )
