"""Provider configurations through the admin API: which connector fields are secrets, and the
checks that run before anything is sealed or written (no Kafka needed)."""

from __future__ import annotations

from typing import Any

import pytest

from api_shim.admin_common import FieldProblem
from api_shim.admin_models import ProviderIn
from api_shim.admin_providers import _check, check_targets_of, secret_fields
from connectors.egress import Egress
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
        ("smtp", {"host": "mail.example", "port": "not-a-port"}, {}, "settings.port"),
        ("smtp", {"password": "plain"}, {}, "settings.password"),
        ("smtp", {"host": "mail.example"}, {"password": "pw", "pasword": "pw"}, "secrets.pasword"),
        # No default relay on our own machine (HIGH 4): a host must be given.
        ("smtp", {"port": "25"}, {}, "settings.host"),
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


# -- SSRF: every host a configuration makes us connect to (docs/security.md, HIGH 4) ---------

KEY = "-----BEGIN PRIVATE KEY-----\nnot checked here\n-----END PRIVATE KEY-----\n"
FCM = {"project_id": "p", "client_email": "svc@p.iam.gserviceaccount.com"}


def _public_dns(host: str) -> Egress:
    """DNS that answers a public address for every name but `host`, which is 10.0.0.7."""

    async def resolve(name: str, port: int) -> list[str]:
        return ["10.0.0.7"] if name == host else ["93.184.215.14"]

    return Egress(resolver=resolve)


async def _targets_problem(
    provider: str, channel: str, settings: dict[str, str], secrets: dict[str, str], dns: Egress
) -> FieldProblem | None:
    cls, config = _check(body(provider=provider, channel=channel), settings, secrets)
    try:
        await check_targets_of(dns, cls, config, settings, secrets)
    except FieldProblem as problem:
        return problem
    return None


@pytest.mark.parametrize(
    ("provider", "channel", "settings", "secrets", "field"),
    [
        # FCM's token endpoint is fetched with the service account's assertion.
        (
            "fcm",
            "push",
            {**FCM, "token_uri": "http://169.254.169.254/token"},
            {"private_key": KEY},
            "settings.token_uri",
        ),
        (
            "fcm",
            "push",
            {**FCM, "token_uri": "https://oauth.internal.example/token"},
            {"private_key": KEY},
            "settings.token_uri",
        ),
        (
            "fcm",
            "push",
            {**FCM, "token_uri": "file:///etc/passwd"},
            {"private_key": KEY},
            "settings.token_uri",
        ),
        # Apprise: a generic JSON endpoint, an email URL's SMTP server, an email host.
        ("apprise", "chat", {}, {"urls": '["json://10.0.0.1/hook"]'}, "secrets.urls.0"),
        (
            "apprise",
            "chat",
            {},
            {"urls": '["discord://1234/abcdefg", "mailto://u:p@example.com?smtp=127.0.0.1"]'},
            "secrets.urls.1",
        ),
        (
            "apprise",
            "chat",
            {},
            {"urls": '["mailto://u:p@mail.internal.example"]'},
            "secrets.urls.0",
        ),
        # SMTP: a private relay; and no host at all is refused by the model (above).
        ("smtp", "email", {"host": "127.0.0.1", "port": "25"}, {}, "settings.host"),
        ("smtp", "email", {"host": "mail.internal.example"}, {}, "settings.host"),
        # Any URL setting of an HTTP provider, not only a list of known names.
        (
            "sendgrid",
            "email",
            {"sender": "a@b.example", "base_url": "http://[::1]:8080"},
            {"api_key": "k"},
            "settings.base_url",
        ),
    ],
)
async def test_settings_that_aim_us_at_non_public_hosts_are_refused(
    provider: str, channel: str, settings: dict[str, str], secrets: dict[str, str], field: str
) -> None:
    problem = await _targets_problem(
        provider, channel, settings, secrets, _public_dns("mail.internal.example")
    )
    if "oauth.internal" in str(settings.get("token_uri")):
        problem = await _targets_problem(
            provider, channel, settings, secrets, _public_dns("oauth.internal.example")
        )
    assert problem is not None and problem.field == field
    assert "only public hosts" in problem.message
    # Never the value: URLs carry credentials.
    assert "u:p" not in problem.message and "10.0.0" not in problem.message


@pytest.mark.parametrize(
    ("provider", "channel", "settings", "secrets"),
    [
        ("fcm", "push", FCM, {"private_key": KEY}),  # the default token_uri (Google's)
        ("apprise", "chat", {}, {"urls": '["discord://1234/abcdefg", "jsons://hooks.example"]'}),
        ("smtp", "email", {"host": "smtp.example.com", "port": "587"}, {}),
    ],
)
async def test_public_hosts_pass(
    provider: str, channel: str, settings: dict[str, str], secrets: dict[str, str]
) -> None:
    dns = _public_dns("none")
    assert await _targets_problem(provider, channel, settings, secrets, dns) is None


async def test_the_operator_switch_allows_private_hosts() -> None:
    allowed = Egress(allow_private=True)
    settings = {"host": "127.0.0.1", "port": "2525"}
    assert await _targets_problem("smtp", "email", settings, {}, allowed) is None
