"""Stage 3, render: Jinja2 in a sandbox; inline content or a template from the templates topic.

notifications.enriched -> notifications.rendered
notifications.templates (compacted) -> an in-process replicated view (every partition).
Status: rendered | failed (template missing or broken: not retriable, with the error).
"""

from __future__ import annotations

import asyncio
import json
from functools import lru_cache
from typing import Any

import jinja2
from faust.types import EventT, StreamT
from jinja2.sandbox import ImmutableSandboxedEnvironment

from streams import metrics
from streams.app import app, catalog, codec, settings, topics
from streams.events import (
    decode_or_dead_letter,
    emit_status,
    guarded,
    outgoing_headers,
)
from streams.replicated import ReplicatedView

STAGE = "render"

# Sandboxed: templates come from tenants and must not reach Python internals.
# StrictUndefined: a missing variable is an error, never an empty string in a sent message.
_text_env = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=False)
_html_env = ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined, autoescape=True)

templates = ReplicatedView(
    settings.kafka_bootstrap_servers,
    catalog.name("notifications.templates"),
    catalog["notifications.templates"].partitions,
    lambda value: codec.decode(value, "Template"),
)


class RenderError(Exception):
    pass


@lru_cache(maxsize=2048)
def _compile(source: str, html: bool) -> jinja2.Template:
    return (_html_env if html else _text_env).from_string(source)


def _render_one(source: str | None, context: dict[str, Any], *, html: bool) -> str | None:
    if source is None:
        return None
    return _compile(source, html).render(context)


def source_content(notification: dict[str, Any]) -> dict[str, Any]:
    template_id = notification.get("template_id")
    if not template_id:
        return notification["content"] or {}
    template = templates.get(f"{notification['tenant_id']}:{template_id}")
    if template is None:
        raise RenderError(
            f"template {template_id!r} not found for tenant {notification['tenant_id']}"
        )
    return dict(template["content"])


def render(notification: dict[str, Any]) -> dict[str, Any]:
    content = source_content(notification)
    context = {
        **json.loads(notification["data_json"]),
        "recipient": notification["recipient"],
        "locale": notification.get("locale"),
        "notification_id": notification["notification_id"],
    }
    try:
        subject = _render_one(content.get("subject"), context, html=False)
        text = _render_one(content.get("text"), context, html=False)
        html = _render_one(content.get("html"), context, html=True)
    except jinja2.TemplateError as exc:
        raise RenderError(f"{type(exc).__name__}: {exc}") from exc
    if text is None and html is None:
        raise RenderError("content has neither text nor html")
    return {"subject": subject, "text": text, "html": html}


async def handle(event: EventT) -> None:
    headers = outgoing_headers(event)
    notification = await decode_or_dead_letter(event, "Notification", STAGE)
    if notification is None:
        return
    try:
        rendered = render(notification)
    except RenderError as exc:
        await emit_status(notification, "failed", stage=STAGE, headers=headers, reason=str(exc))
        metrics.processed(STAGE, "failed", notification["occurred_at"])
        return
    await emit_status(notification, "rendered", stage=STAGE, headers=headers)
    await topics.sink("notifications.rendered").send(
        key=event.key, value={**notification, "rendered": rendered}, headers=headers
    )
    metrics.processed(STAGE, "rendered", notification["occurred_at"])


@app.agent(topics.source("notifications.enriched"), concurrency=1)
async def render_notifications(stream: StreamT) -> None:
    templates.start()
    await asyncio.wait_for(templates.wait_ready(), timeout=120)
    async for event in stream.events():
        await guarded(STAGE, event, handle)
