"""Which providers a notification may use, in order, and their connectors.

Order (docs/delivery.md): the request's override for the channel → the tenant's enabled
configurations for the channel (by `priority`, lower first) → the environment default
(DEFAULT_PROVIDERS) → every other enabled platform-wide configuration (tenant "*") and
built-in provider for the channel. The deliver stage tries them in this order, failing over
on a provider's failure or open circuit.

Provider ids: "acme:sendgrid-eu" (a tenant's config on config.providers), "*:twilio" (a
platform-wide config), "env:smtp" (built from this process's environment).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import ValidationError

from connectors import registry
from connectors.base import Connector
from connectors.egress import Egress, guarded_client
from connectors.errors import ConnectorError
from connectors.setting_text import settings_from_text
from core.rate_limits import parse_rate
from core.sealing import SealingError, SecretBox

log = logging.getLogger(__name__)

GLOBAL_TENANT = "*"
# Settings the pipeline reads from a provider configuration; not passed to the connector.
PIPELINE_SETTINGS = frozenset({"rate_per_sec"})


class ProviderConfigError(Exception):
    """A configuration that cannot be used: it names the provider id and the problem."""


@dataclass(frozen=True)
class Candidate:
    provider_id: str
    connector: Connector[Any]
    rate_per_sec: float | None


ENV_SCOPE = "env"


def foreign_override(override: str, tenant_id: str) -> bool:
    """True when an override names another tenant's provider ("globex:sendgrid" sent by acme).

    A request may name only its own tenant's providers (bare "sendgrid-eu" or
    "acme:sendgrid-eu"), platform-wide ones ("*:twilio") or this process's ("env:smtp"):
    using another tenant's would spend its credentials, rate buckets and breaker."""
    scope, colon, _ = override.partition(":")
    return bool(colon) and scope not in (tenant_id, GLOBAL_TENANT, ENV_SCOPE)


def resolve_override(
    override: str, tenant_id: str, configs: dict[str, dict[str, Any]], env_ids: Iterable[str]
) -> str | None:
    """A request's override ("sendgrid-eu", "*:twilio", "env:smtp") as a provider id; None
    for another tenant's id, an "env:" id this process lacks, or a bare name matching nothing."""
    if foreign_override(override, tenant_id):
        # Upstream services publish requests straight to Kafka: the shim's 422 is not enough.
        log.warning(
            "tenant %s: provider override %r names another tenant's provider; ignored",
            tenant_id,
            override,
        )
        return None
    scope, colon, _ = override.partition(":")
    if colon and scope == ENV_SCOPE and scope != tenant_id:
        # Only this process's providers: a tenant whose id is "env" owns "env:<name>" configs.
        return override if override in set(env_ids) else None
    if colon:
        return override
    for candidate in (f"{tenant_id}:{override}", f"{GLOBAL_TENANT}:{override}"):
        if candidate in configs:
            return candidate
    env_id = f"env:{override}"
    return env_id if env_id in set(env_ids) else None


def _enabled_for(configs: dict[str, dict[str, Any]], tenant_id: str, channel: str) -> list[str]:
    found = [
        (record.get("priority", 0), pid)
        for pid, record in configs.items()
        if record["tenant_id"] == tenant_id and record["channel"] == channel and record["enabled"]
    ]
    return [pid for _, pid in sorted(found)]


def candidate_ids(
    *,
    tenant_id: str,
    channel: str,
    override: str | None,
    configs: dict[str, dict[str, Any]],
    defaults: dict[str, str],
    env_channels: dict[str, str],
) -> list[str]:
    """Provider ids in the order they are tried (pure: the rule in one place)."""
    ordered: list[str] = []
    if override:
        resolved = resolve_override(override, tenant_id, configs, env_channels)
        if resolved:
            ordered.append(resolved)
    ordered += _enabled_for(configs, tenant_id, channel)
    if channel in defaults:
        ordered.append(defaults[channel])
    ordered += _enabled_for(configs, GLOBAL_TENANT, channel)
    ordered += sorted(pid for pid, env_channel in env_channels.items() if env_channel == channel)
    seen: set[str] = set()
    usable = []
    for pid in ordered:
        record = configs.get(pid)
        disabled = record is not None and not record["enabled"]
        if pid in seen or disabled:
            continue
        seen.add(pid)
        usable.append(pid)
    return usable


class ProviderPool:
    """Connectors built from configuration records, rebuilt when a record changes."""

    def __init__(
        self,
        *,
        box: SecretBox | None,
        egress: Egress,
        env: dict[str, Connector[Any]],
        http_limits: httpx.Limits | None = None,
    ) -> None:
        self._box = box
        # Every configured connector's connections go through the SSRF guard; `egress` says
        # whether private targets are allowed (the operator's WEBHOOK_ALLOW_PRIVATE_TARGETS).
        self.egress = egress
        self._http = guarded_client(egress, limits=http_limits)
        self.env = env  # "env:smtp" -> connector
        self.configs: dict[str, dict[str, Any]] = {}
        self._built: dict[str, tuple[dict[str, Any], Candidate]] = {}

    def on_config(self, key: str, _old: Any, new: dict[str, Any] | None) -> None:
        """Listener for the config.providers view."""
        if new is None:
            self.configs.pop(key, None)
        else:
            self.configs[key] = new

    def env_channels(self) -> dict[str, str]:
        return {pid: connector.channel for pid, connector in self.env.items()}

    def ordered_ids(self, notification: dict[str, Any], defaults: dict[str, str]) -> list[str]:
        channel = notification["channel"]
        return candidate_ids(
            tenant_id=notification["tenant_id"],
            channel=channel,
            override=(notification.get("provider_overrides") or {}).get(channel),
            configs=self.configs,
            defaults=defaults,
            env_channels=self.env_channels(),
        )

    def candidate(self, provider_id: str) -> Candidate:
        """The candidate for an id; ProviderConfigError if it cannot be used."""
        if provider_id in self.env:
            connector = self.env[provider_id]
            return Candidate(provider_id, connector, connector.rate_per_sec)
        record = self.configs.get(provider_id)
        if record is None:
            raise ProviderConfigError(f"{provider_id}: no such provider configuration")
        built = self._built.get(provider_id)
        if built is not None and built[0] is record:
            return built[1]
        candidate = self._build(provider_id, record)
        self._built[provider_id] = (record, candidate)
        return candidate

    def _build(self, provider_id: str, record: dict[str, Any]) -> Candidate:
        settings: dict[str, Any] = dict(record.get("settings", {}))
        rate = settings.pop("rate_per_sec", None)
        # The SSRF guard is the operator's to lift (tests), never a tenant's: a stored
        # setting of that name (older records) is dropped, not honoured.
        settings.pop("allow_private_targets", None)
        try:
            model = registry.provider_class(record["provider"]).config_model
            values = settings_from_text(model, {**settings, **self._open(record)})
            connector = registry.build(
                record["provider"], values, http=self._http, egress=self.egress
            )
        except ValidationError as exc:
            # Field names only: pydantic's message may echo a value, and values may be secret.
            fields = ", ".join(".".join(map(str, e["loc"])) for e in exc.errors())
            raise ProviderConfigError(f"{provider_id}: invalid configuration ({fields})") from None
        except (ConnectorError, SealingError) as exc:
            raise ProviderConfigError(f"{provider_id}: {exc}") from exc
        if not rate:
            return Candidate(provider_id, connector, connector.rate_per_sec)
        try:
            return Candidate(provider_id, connector, parse_rate(rate))
        except ValueError as exc:  # checked by the admin API; a record from before the check
            raise ProviderConfigError(f"{provider_id}: rate_per_sec {exc}") from None

    def _open(self, record: dict[str, Any]) -> dict[str, str]:
        sealed = record.get("secrets_sealed")
        if not sealed:
            return {}
        if self._box is None:
            raise SealingError("sealed secrets, but PROVIDER_SECRETS_KEY is not set")
        return self._box.open(
            sealed, tenant_id=record["tenant_id"], provider_id=record["provider_id"]
        )

    async def close(self) -> None:
        for _, candidate in self._built.values():
            await candidate.connector.close()
        await self._http.aclose()
