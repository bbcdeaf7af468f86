"""Tenants' status-webhook subscriptions, as every worker sees them.

config.webhook-subscriptions (compacted, keyed tenant_id:subscription_id) is small and read
for every status event whatever partition it is on, so each worker replicates it in full
(streams.runtime.replicated, like streams.runtime.config_views) and indexes it by tenant.
A record whose key does not name its own tenant and id is ignored: a subscription only ever
sees its tenant's events.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from core.sealing import SealingError, SecretBox
from streams.runtime.app import catalog, codec, settings
from streams.runtime.config_views import ViewsNotReady
from streams.runtime.replicated import ReplicatedView
from streams.webhooks.rules import sealed_as, signing_secrets, subscription_key

log = logging.getLogger(__name__)

TOPIC = "config.webhook-subscriptions"
READY_TIMEOUT_SECONDS = 120.0

view = ReplicatedView(
    settings,
    catalog.name(TOPIC),
    catalog[TOPIC].partitions,
    lambda value: codec.decode(value, "WebhookSubscription"),
)
# tenant_id -> subscription_id -> WebhookSubscription
_by_tenant: dict[str, dict[str, dict[str, Any]]] = {}


def _index(key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
    if old is not None:
        _by_tenant.get(old["tenant_id"], {}).pop(old["subscription_id"], None)
    if new is None:
        return
    if key != subscription_key(new["tenant_id"], new["subscription_id"]):
        log.warning("ignoring webhook subscription %r: its key does not name it", key)
        return
    _by_tenant.setdefault(new["tenant_id"], {})[new["subscription_id"]] = new


view.add_listener(_index)

_box = SecretBox.from_settings(
    settings.provider_secrets_key.get_secret_value() if settings.provider_secrets_key else None,
    settings.provider_secrets_key_id,
    {k: v.get_secret_value() for k, v in settings.provider_secrets_old_keys.items()},
)


def for_tenant(tenant_id: str) -> list[dict[str, Any]]:
    return list(_by_tenant.get(tenant_id, {}).values())


def get(tenant_id: str, subscription_id: str) -> dict[str, Any] | None:
    return _by_tenant.get(tenant_id, {}).get(subscription_id)


def secrets_for(subscription: dict[str, Any], now_ms: int) -> list[str]:
    """The secrets to sign with; raises SealingError when they cannot be opened."""
    if _box is None:
        raise SealingError("PROVIDER_SECRETS_KEY is not set: webhook secrets cannot be opened")
    opened = _box.open(
        subscription["secret_sealed"],
        tenant_id=subscription["tenant_id"],
        provider_id=sealed_as(subscription["subscription_id"]),
    )
    if not opened.get("secret"):
        raise SealingError("the sealed webhook secret holds no secret")
    return signing_secrets(opened, now_ms)


_ready: asyncio.Task[None] | None = None


async def _start() -> None:
    view.start()
    async with asyncio.timeout(READY_TIMEOUT_SECONDS):
        await view.wait_ready()


async def ensure_ready() -> None:
    """Start the view once per process and wait until it has caught up."""
    global _ready
    if _ready is None:
        _ready = asyncio.ensure_future(_start())
    try:
        await asyncio.shield(_ready)
    except TimeoutError as exc:
        _ready = None  # the next event waits again (ViewsNotReady is transient for `guarded`)
        raise ViewsNotReady(
            f"webhook subscriptions not replicated after {READY_TIMEOUT_SECONDS}s"
        ) from exc
