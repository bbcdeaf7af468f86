"""Configuration every worker needs whatever partitions it owns, replicated in full.

Tenants, templates, provider configurations and batch life-cycle events are small and read
on every notification, so each worker keeps a whole copy (streams.runtime.replicated) rather than a
partitioned table. Stages call `await ensure_ready()` before their first message.
"""

from __future__ import annotations

import asyncio

from streams.runtime.app import catalog, codec, settings
from streams.runtime.replicated import ReplicatedView


def _view(logical_topic: str, schema_name: str) -> ReplicatedView:
    return ReplicatedView(
        settings,
        catalog.name(logical_topic),
        catalog[logical_topic].partitions,
        lambda value: codec.decode(value, schema_name),
    )


# tenant_id:template_id:version -> Template (see streams.content.templates for lookups)
templates = _view("notifications.templates", "Template")
# tenant_id -> Tenant
tenants = _view("config.tenants", "Tenant")
# tenant_id:provider_id -> ProviderConfig
providers = _view("config.providers", "ProviderConfig")
# batch_id -> the batch's latest BatchEvent (its `cancelled` flag stops queued items)
batch_events = _view("notifications.batch-events", "BatchEvent")

ALL_VIEWS = (templates, tenants, providers, batch_events)
READY_TIMEOUT_SECONDS = 120.0
_ready: asyncio.Task[None] | None = None


async def _start_all() -> None:
    for view in ALL_VIEWS:
        view.start()
    async with asyncio.timeout(READY_TIMEOUT_SECONDS):
        for view in ALL_VIEWS:
            await view.wait_ready()


class ViewsNotReady(Exception):
    """The views have not caught up (the broker is slow or down): transient, retried."""


async def ensure_ready() -> None:
    """Start every view once per process and wait until each has caught up."""
    global _ready
    if _ready is None:
        _ready = asyncio.ensure_future(_start_all())
    try:
        await asyncio.shield(_ready)
    except TimeoutError as exc:
        _ready = None  # the next message waits again rather than failing for ever
        raise ViewsNotReady(
            f"configuration views not ready after {READY_TIMEOUT_SECONDS}s"
        ) from exc


def batch_cancelled(batch_id: str | None) -> bool:
    if not batch_id:
        return False
    event = batch_events.get(batch_id)
    return bool(event and event.get("cancelled"))
