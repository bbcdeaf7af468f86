"""The pure rules inside the stages: validation, fan-out, suppression, rendering, ranking."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest

from core.lifecycle import rank, supersedes
from streams.runtime.events import Rejected
from streams.stages.enrich import enrich, resolve_address, suppression_reason
from streams.stages.render import RenderError, render
from streams.stages.request import validate
from streams.state.fanout import fan_out


def request(**overrides: Any) -> dict[str, Any]:
    base = {
        "request_id": "r-1",
        "tenant_id": "acme",
        "idempotency_key": None,
        "batch_id": None,
        "occurred_at": 1,
        "channels": ["email", "in_app"],
        "recipients": [
            {
                "user_id": "ada",
                "email": "ada@x.test",
                "phone": None,
                "locale": None,
                "timezone": None,
            }
        ],
        "template_id": None,
        "content": {"subject": "Hi", "text": "Hello", "html": None},
        "data_json": "{}",
        "priority": "normal",
        "metadata": {},
    }
    return {**base, **overrides}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"tenant_id": " "}, "tenant_id: must not be empty"),
        ({"recipients": []}, "recipients: at least one recipient is required"),
        ({"channels": []}, "channels: at least one channel is required"),
        ({"content": None}, "template_id or content: one of them is required"),
        ({"data_json": "{oops"}, "data_json: not valid JSON"),
        ({"data_json": "[1]"}, "data_json: must be a JSON object"),
    ],
)
def test_invalid_requests_are_rejected_naming_the_field(
    overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(Rejected, match=message.replace("(", r"\(")):
        validate(request(**overrides))


def test_fan_out_is_one_per_recipient_and_channel_with_stable_ids() -> None:
    twice = request(recipients=request()["recipients"] * 2)  # a repeated recipient
    first, second = fan_out(twice, "r-1"), fan_out(twice, "r-1")
    assert [(n["recipient"]["user_id"], n["channel"]) for n in first] == [
        ("ada", "email"),
        ("ada", "in_app"),
    ]
    assert [n["notification_id"] for n in first] == [n["notification_id"] for n in second]
    assert (
        len(
            {n["notification_id"] for n in fan_out(request(), "r-2")}
            | {n["notification_id"] for n in first}
        )
        == 4
    )


def test_preferences_suppress_with_a_reason() -> None:
    assert suppression_reason(None, "email") is None
    assert suppression_reason({"opted_out": True, "channels": {}}, "email") == (
        "recipient opted out of all notifications"
    )
    assert suppression_reason({"opted_out": False, "channels": {"sms": False}}, "sms") == (
        "recipient disabled the sms channel"
    )
    assert suppression_reason({"opted_out": False, "channels": {"sms": False}}, "email") is None


def test_address_comes_from_the_profile_before_the_request() -> None:
    recipient = {"user_id": "ada", "email": "req@x.test", "phone": None}
    assert resolve_address("email", recipient, {"email": "profile@x.test"}) == (
        "profile@x.test",
        "profile",
    )
    assert resolve_address("email", recipient, None) == ("req@x.test", "request")
    assert resolve_address("sms", recipient, None) == (None, "none")
    assert resolve_address("in_app", recipient, None) == ("ada", "request")
    enriched = enrich(
        {"channel": "email", "recipient": {**recipient, "locale": None, "timezone": None}},
        {"locale": "pt-BR", "timezone": "America/Sao_Paulo"},
    )
    assert (enriched["locale"], enriched["timezone"]) == ("pt-BR", "America/Sao_Paulo")


def test_enrich_sources_user_service_then_request_then_tenant_defaults() -> None:
    recipient = {"user_id": "ada", "email": "req@x.test", "phone": None}
    assert resolve_address("email", recipient, {"email": "svc@x.test"}, "user_service") == (
        "svc@x.test",
        "user_service",
    )
    assert resolve_address("email", recipient, {"locale": "de"}, "user_service") == (
        "req@x.test",
        "request",
    )
    tenant = {"default_locale": "fr", "timezone": "Europe/Paris"}
    bare = {"channel": "email", "recipient": {**recipient, "locale": None, "timezone": None}}
    enriched = enrich(bare, None, "request", tenant)
    assert (enriched["locale"], enriched["timezone"]) == ("fr", "Europe/Paris")
    explicit = {"channel": "email", "recipient": {**recipient, "locale": "it", "timezone": "UTC"}}
    enriched = enrich(explicit, {"locale": "de", "timezone": "Asia/Tokyo"}, "profile", tenant)
    assert (enriched["locale"], enriched["timezone"]) == ("it", "UTC")


def notification(content: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    return {
        "notification_id": "n-1",
        "tenant_id": "acme",
        "template_id": None,
        "content": content,
        "data_json": json.dumps(data),
        "locale": "en",
        "recipient": {"user_id": "ada"},
    }


def test_render_fills_subject_text_and_escapes_html() -> None:
    content = {"subject": "Hi {{ name }}", "text": "Hello {{ name }}", "html": "<p>{{ name }}</p>"}
    assert render(notification(content, {"name": "<Ada>"})) == {
        "subject": "Hi <Ada>",
        "text": "Hello <Ada>",
        "html": "<p>&lt;Ada&gt;</p>",
    }


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("Hello {{ missing }}", "'missing' is undefined"),
        ("{{ name.__class__.__mro__ }}", "access to attribute '__class__'"),
        ("{% for %}", "TemplateSyntaxError"),
    ],
    ids=["missing-variable", "sandbox-escape", "syntax-error"],
)
def test_render_errors_are_render_errors(text: str, error: str) -> None:
    with pytest.raises(RenderError, match=error):
        render(notification({"subject": None, "text": text, "html": None}, {"name": "x"}))


def test_latest_state_is_the_highest_rank() -> None:
    assert supersedes("sent", False, "rendered", False)
    assert not supersedes("rendered", False, "sent", False)
    assert supersedes("sent", False, "failed", True)  # a retry that worked
    assert not supersedes("sent", False, "failed", False)
    assert rank("suppressed") > rank("read")
    with pytest.raises(ValueError, match="unknown status"):
        rank("teleported")


async def test_transient_errors_retry_the_handler_instead_of_dead_lettering() -> None:
    from schemas import RegistryUnavailableError
    from streams.runtime.events import guarded

    calls: list[int] = []

    async def handler(event: Any) -> None:
        calls.append(1)
        if len(calls) < 3:
            raise RegistryUnavailableError("registry down")

    await guarded("test", SimpleNamespace(headers=None), handler)  # type: ignore[arg-type]
    assert len(calls) == 3
