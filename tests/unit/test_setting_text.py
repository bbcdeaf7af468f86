"""Provider settings as text, back to the connector's types (issue 21, MEDIUM 14): a value
that starts like JSON is not JSON unless its field takes a list or an object."""

from __future__ import annotations

from typing import Any

import pytest

from connectors.egress import Egress
from connectors.registry import PROVIDERS
from connectors.setting_text import setting_from_text
from streams.delivery.providers import ProviderPool

SENDGRID = PROVIDERS["sendgrid"].config_model
APPRISE = PROVIDERS["apprise"].config_model


@pytest.mark.parametrize(
    ("model", "name", "raw", "expected"),
    [
        (SENDGRID, "sender", "[Acme] <no-reply@acme.example>", "[Acme] <no-reply@acme.example>"),
        (SENDGRID, "sender", '{"looks": "like json"}', '{"looks": "like json"}'),
        (APPRISE, "urls", '["json://hooks.example/a"]', ["json://hooks.example/a"]),
        # Not JSON: handed on as text for the model to refuse by name.
        (APPRISE, "urls", "[not json", "[not json"),
        (SENDGRID, "unknown_field", "{x", "{x"),
    ],
)
def test_setting_from_text(model: Any, name: str, raw: str, expected: Any) -> None:
    assert setting_from_text(model, name, raw) == expected


async def test_the_worker_builds_a_provider_whose_sender_starts_with_a_bracket() -> None:
    pool = ProviderPool(box=None, egress=Egress(), env={})
    record = {
        "tenant_id": "acme",
        "provider_id": "sendgrid-eu",
        "channel": "email",
        "provider": "sendgrid",
        "settings": {"sender": "[Acme] <no-reply@acme.example>", "api_key": "k"},
    }
    try:
        pool.on_config("acme:sendgrid-eu", None, record)
        candidate = pool.candidate("acme:sendgrid-eu")
        assert candidate.connector.config.sender == "[Acme] <no-reply@acme.example>"
    finally:
        await pool.close()
