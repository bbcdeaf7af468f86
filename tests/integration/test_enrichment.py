"""Enrichment from an HTTP user service, on the real broker with a real worker.

A local HTTP server plays the user service; the worker is pointed at it with
USER_SERVICE_URL. Precedence: users.profiles, then the service, then the request.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.pipeline import Pipeline, wait_materialised, wait_until
from tests.support.requests import produce_request, request_record
from tests.support.smtp import SmtpCapture
from tests.support.user_service import UserServicePeer

pytestmark = pytest.mark.integration

CONTENT = {"subject": "Hello {{ name }}", "text": "Hi {{ name }}", "html": None}


@pytest.fixture(scope="module")
def user_service() -> Iterator[UserServicePeer]:
    service = UserServicePeer().start()
    yield service
    service.stop()


@pytest.fixture(scope="module")
def pipeline(
    kafka_bootstrap: str,
    fresh_database: str,
    smtp: SmtpCapture,
    log_dir: Path,
    user_service: UserServicePeer,
) -> Iterator[Pipeline]:
    """The pipeline with its enrich stage pointed at the local user service."""
    pipe = Pipeline(
        bootstrap=kafka_bootstrap,
        database_url=fresh_database,
        smtp_port=smtp.port,
        log_dir=log_dir,
        extra_env={
            "USER_SERVICE_URL": user_service.url,
            "USER_SERVICE_TIMEOUT_SECONDS": "1",
            "USER_SERVICE_BREAKER_FAILURES": "2",
            "USER_SERVICE_BREAKER_RESET_SECONDS": "600",
        },
    )
    pipe.start()
    try:
        yield pipe
    finally:
        pipe.stop()


def send(pipeline: Pipeline, user: str, email: str | None) -> str:
    record = request_record(user, content=CONTENT, recipient={"email": email})
    return produce_request(pipeline, record)


def enriched(pipeline: Pipeline, nid: str) -> dict[str, Any]:
    """The notification as enrich passed it on (render and route add to it, never change
    the enrichment), read from its delivery topic."""

    def find() -> dict[str, Any] | None:
        for message in pipeline.read_topic("notifications.deliver.email"):
            value = pipeline.codec.decode(message.value(), "Notification")
            if value["notification_id"] == nid:
                return value
        return None

    found: dict[str, Any] = wait_until(find, 30, f"{nid} on notifications.deliver.email")
    return found


def test_the_user_service_supplies_address_locale_and_timezone(
    pipeline: Pipeline, smtp: SmtpCapture, user_service: UserServicePeer
) -> None:
    user_service.users["/users/acme/svc"] = {
        "email": "svc@service.test",
        "locale": "de",
        "timezone": "Europe/Berlin",
    }
    # A users.profiles record wins over the service.
    user_service.users["/users/acme/tabled"] = {"email": "tabled@service.test"}
    pipeline.produce_record(
        "users.profiles",
        "acme:tabled",
        {"tenant_id": "acme", "user_id": "tabled", "email": "tabled@profile.test"},
    )
    wait_materialised(pipeline, "users.profiles")

    from_service = send(pipeline, "svc", "svc@request.test")
    from_table = send(pipeline, "tabled", "tabled@request.test")
    unknown = send(pipeline, "nobody", "nobody@request.test")  # 404: the request's data
    pipeline.flush()
    pipeline.wait_for_status([from_service, from_table, unknown], {"sent"})

    sent = smtp.by_notification_id()
    assert sent[from_service][0]["To"] == "svc@service.test"
    assert sent[from_table][0]["To"] == "tabled@profile.test"
    assert sent[unknown][0]["To"] == "nobody@request.test"
    notification = enriched(pipeline, from_service)
    assert notification["profile_source"] == "user_service"
    assert (notification["locale"], notification["timezone"]) == ("de", "Europe/Berlin")
    assert enriched(pipeline, from_table)["profile_source"] == "profile"
    assert enriched(pipeline, unknown)["profile_source"] == "request"
    assert "/users/acme/svc" in user_service.requests
    assert "/users/acme/tabled" not in user_service.requests


def test_a_failing_user_service_falls_back_to_the_request_and_opens_the_breaker(
    pipeline: Pipeline, smtp: SmtpCapture, user_service: UserServicePeer
) -> None:
    user_service.mode = "error"
    for user in ("down1", "down2", "down3", "down4"):
        user_service.users[f"/users/acme/{user}"] = {"email": f"{user}@service.test"}
    before = len(user_service.requests)
    ids = {user: send(pipeline, user, f"{user}@request.test") for user in ("down1", "down2")}
    pipeline.flush()
    pipeline.wait_for_status(list(ids.values()), {"sent"})
    # Two failures open the breaker: the next notifications do not call the service at all,
    # even once it is back.
    user_service.mode = "ok"
    ids.update({user: send(pipeline, user, f"{user}@request.test") for user in ("down3", "down4")})
    pipeline.flush()
    pipeline.wait_for_status(list(ids.values()), {"sent"})

    sent = smtp.by_notification_id()
    for user, nid in ids.items():
        assert sent[nid][0]["To"] == f"{user}@request.test"
        assert enriched(pipeline, nid)["profile_source"] == "request"
    assert len(user_service.requests) - before == 2
