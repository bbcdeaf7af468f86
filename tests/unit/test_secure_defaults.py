"""Nothing well-known opens the system by default (issue 21, HIGH 3).

The demo key belongs to `make run` alone (scripts/run_local.py sets it); the library default
has no bootstrap keys, and the compose file publishes ports on loopback only and takes its
secrets from the environment.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from core.settings import Settings

REPO = Path(__file__).resolve().parents[2]


def test_settings_from_an_empty_environment_have_no_api_keys(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in list(os.environ):
        monkeypatch.delenv(name)
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.shim_api_keys == {}
    assert settings.shim_operator_token is None


def test_env_example_sets_no_bootstrap_key() -> None:
    lines = (REPO / ".env.example").read_text().splitlines()
    assert "SHIM_API_KEYS={}" in lines
    assert not any("demo-key" in line for line in lines if not line.startswith("#"))


def test_compose_publishes_on_loopback_and_keeps_secrets_out_of_the_file() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    published = [
        (name, port)
        for name, service in compose["services"].items()
        for port in service.get("ports", [])
    ]
    assert published, "the compose file publishes no ports: test is stale"
    assert [p for p in published if not str(p[1]).startswith("127.0.0.1:")] == []
    text = (REPO / "docker-compose.yml").read_text()
    assert "demo-key" not in text
    assert "postgres:postgres@" not in text
    assert "POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?" in text
