"""Provider configurations through the admin API: which connector fields are secrets, and the
checks that run before anything is sealed or written (no Kafka needed)."""

from __future__ import annotations

from typing import Any

import pytest

from api_shim.admin_common import FieldProblem
from api_shim.admin_models import ProviderIn
from api_shim.admin_providers import _check, secret_fields
from connectors.registry import PROVIDERS


def test_secret_fields_are_the_connectors_secretstr_fields() -> None:
    assert secret_fields(PROVIDERS["sendgrid"].config_model) == {"api_key"}
    assert secret_fields(PROVIDERS["smtp"].config_model) == {"password"}
    assert {"secret", "headers"} <= secret_fields(PROVIDERS["webhook"].config_model)
    assert secret_fields(PROVIDERS["in_app"].config_model) == frozenset()


def body(**overrides: Any) -> ProviderIn:
    return ProviderIn.model_validate({"channel": "email", "provider": "smtp", **overrides})


def test_a_valid_configuration_passes() -> None:
    _check(body(), {"host": "mail.example", "port": "587"}, {"password": "pw"})
    _check(
        body(provider="sendgrid"),
        {"sender": "a@b.example", "rate_per_sec": "2.5"},
        {"api_key": "k"},
    )


@pytest.mark.parametrize(
    ("provider", "settings", "secrets", "field"),
    [
        ("smtp", {"port": "not-a-port"}, {}, "settings.port"),
        ("smtp", {"password": "plain"}, {}, "settings.password"),
        ("smtp", {}, {"password": "pw", "pasword": "pw"}, "secrets.pasword"),
        ("sendgrid", {"sender": "a@b.example"}, {}, "secrets.api_key"),
        (
            "sendgrid",
            {"sender": "a@b.example", "rate_per_sec": "0"},
            {"api_key": "k"},
            "settings.rate_per_sec",
        ),
    ],
)
def test_problems_name_the_field(
    provider: str, settings: dict[str, str], secrets: dict[str, str], field: str
) -> None:
    with pytest.raises(FieldProblem) as info:
        _check(body(provider=provider), settings, secrets)
    assert info.value.field == field
    assert "pw" not in info.value.message.replace(field, "")
