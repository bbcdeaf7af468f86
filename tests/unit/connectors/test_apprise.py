"""The Apprise connector against a local peer, through Apprise's generic json:// and form://
services: the real library builds and sends the requests."""

from __future__ import annotations

import base64
import logging
from typing import Any

import pytest

from connectors.apprise_connector import AppriseConfig, AppriseConnector
from connectors.errors import ConfigurationError
from tests.support.http_peer import HttpPeer, Reply
from tests.support.provider_cases import (
    LOCAL_PEERS,
    STANDARD_FAULTS,
    TEST_TIMEOUT_SECONDS,
    Case,
    assert_result,
    message,
)

PASSWORD = "s3cret-pw"
CHAT = message(channel="chat", to="ignored-by-apprise", data_json='{"apprise_type": "warning"}')

# Apprise answers only success or failure, so some standard rows cannot hold for it.
NOT_APPLICABLE = {
    "400-bad-request": "Apprise reports no status: a 400 is an undetailed, retriable failure",
    "401-credentials": "Apprise reports no status: a 401 cannot be told apart from an outage",
    "429-retry-after": "Apprise does not pass Retry-After on (see the 429 row below)",
}


def standard_rows() -> list[Any]:
    return [
        pytest.param(case, id=case.id, marks=pytest.mark.skip(reason=NOT_APPLICABLE[case.id]))
        if case.id in NOT_APPLICABLE
        else case.param()
        for case in STANDARD_FAULTS
    ]


UNDETAILED = {"outcome": "failed", "retriable": True, "provider_fault": True, "retry_after": None}

SUCCESS = [
    Case("200", Reply(200, json={}), {"outcome": "sent", "provider": "apprise"}),
    Case("204", Reply(204), {"outcome": "sent", "provider": "apprise"}),
]

APPRISE_ROWS = [
    # What the skipped standard rows become through Apprise: retriable, no Retry-After.
    Case("400-undetailed", Reply(400, json={"error": "invalid parameter"}), UNDETAILED),
    Case("401-undetailed", Reply(401, json={"error": "unauthorized"}), UNDETAILED),
    Case("429-no-retry-after", Reply(429, headers={"Retry-After": "7"}), UNDETAILED),
    Case("500", Reply(500, body=b"boom"), UNDETAILED),
]


PATH_TOKEN = "T0KEN-IN-PATH"


def json_url(peer: HttpPeer, path: str = "/hook") -> str:
    return peer.url.replace("http://", f"json://alerts:{PASSWORD}@") + path


def connector(*urls: str) -> AppriseConnector:
    config = AppriseConfig(urls=list(urls), timeout_seconds=TEST_TIMEOUT_SECONDS)
    return AppriseConnector(config, egress=LOCAL_PEERS)


@pytest.mark.parametrize(
    "case", [*[c.param() for c in SUCCESS], *standard_rows()] + [c.param() for c in APPRISE_ROWS]
)
async def test_apprise_outcomes_and_the_json_it_posts(
    case: Case, peer: HttpPeer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    peer.reply(case.reply)
    result = await connector(json_url(peer)).deliver(CHAT)

    assert_result(result, case.expect)
    assert result.provider == "apprise"
    if not result.ok and case.id != "timeout":
        assert result.reason is not None and "no further detail" in result.reason
        assert PASSWORD not in result.reason and peer.url not in result.reason
    assert PASSWORD not in caplog.text
    [request] = peer.requests
    assert request.method == "POST"
    assert request.path == "/hook"
    assert request.headers["content-type"] == "application/json"
    credentials = base64.b64encode(f"alerts:{PASSWORD}".encode()).decode()
    assert request.headers["authorization"] == f"Basic {credentials}"
    assert request.json() == {
        "version": "1.0",
        "title": "Your order shipped",
        "message": "Order 42 is on its way.",
        "type": "warning",
        "attachments": [],
    }


async def test_form_service_and_several_urls(peer: HttpPeer) -> None:
    form_url = peer.url.replace("http://", "form://") + "/form"
    no_subject = CHAT.model_copy(update={"subject": None, "data_json": "{}"})
    result = await connector(json_url(peer), form_url).deliver(no_subject)
    assert result.outcome == "sent"
    by_path = {request.path: request for request in peer.requests}
    assert set(by_path) == {"/hook", "/form"}
    assert by_path["/form"].form() == {
        "version": ["1.0"],
        "title": [""],
        "message": ["Order 42 is on its way."],
        "type": ["info"],
    }
    assert by_path["/hook"].json()["type"] == "info"


async def test_one_failing_url_fails_the_send(peer: HttpPeer) -> None:
    peer.handler = lambda request: Reply(500) if request.path == "/down" else Reply(200)
    result = await connector(json_url(peer), json_url(peer, "/down")).deliver(CHAT)
    assert_result(result, UNDETAILED)
    assert sorted(request.path for request in peer.requests) == ["/down", "/hook"]


async def test_debug_logging_does_not_write_apprise_urls(
    peer: HttpPeer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # the root logger, as `--log-level debug` would
    result = await connector(json_url(peer, f"/hooks/{PATH_TOKEN}")).deliver(CHAT)
    assert result.outcome == "sent"
    assert peer.requests[-1].path == f"/hooks/{PATH_TOKEN}"
    apprise_lines = [r.getMessage() for r in caplog.records if r.name.startswith("apprise")]
    assert apprise_lines  # Apprise still logs at INFO
    assert all(PATH_TOKEN not in line and PASSWORD not in line for line in apprise_lines)


def test_invalid_url_is_a_configuration_error_that_does_not_echo_it() -> None:
    with pytest.raises(ConfigurationError, match="#2") as raised:
        connector("json://127.0.0.1/ok", f"nosuchscheme://user:{PASSWORD}@host")
    assert PASSWORD not in str(raised.value)


def test_urls_are_secret() -> None:
    config = AppriseConfig(urls=[f"json://alerts:{PASSWORD}@hooks.example.com/x"])
    assert PASSWORD not in repr(config) and PASSWORD not in str(config)
    with pytest.raises(ValueError):
        AppriseConfig(urls=[])
