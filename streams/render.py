"""Stage 3, render: Jinja2 in a sandbox; inline content or a template from the templates topic.

notifications.enriched -> notifications.rendered
Templates come from streams.config_views (the templates topic, replicated on every worker);
choosing a version, locale and channel variant and checking declared variables is
streams.templates.
Status: rendered | failed (template missing, a declared variable missing, a broken template:
not retriable, with the reason).
"""

from __future__ import annotations

import json
from typing import Any

from faust.types import EventT

from streams import config_views, metrics, templates
from streams.app import topics
from streams.events import (
    decode_or_dead_letter,
    emit_status,
    outgoing_headers,
)
from streams.lane_agents import lane_agents
from streams.lanes import lane_of, lane_topic

STAGE = "render"


class RenderError(Exception):
    pass


def _context(notification: dict[str, Any]) -> dict[str, Any]:
    return {
        **json.loads(notification["data_json"]),
        "recipient": notification["recipient"],
        "locale": notification.get("locale"),
        "notification_id": notification["notification_id"],
    }


def _tenant_default_locale(tenant_id: str) -> str | None:
    tenant = config_views.tenants.get(tenant_id)
    return tenant.get("default_locale") if tenant else None


def render_notification(notification: dict[str, Any]) -> dict[str, Any]:
    """The notification with `rendered` filled in (and, from a template, the version and the
    locale used stamped on it). RenderError says why it cannot be rendered."""
    context = _context(notification)
    template_id = notification.get("template_id")
    if not template_id:
        try:
            rendered = templates.render_content(notification["content"] or {}, context)
        except templates.TemplateRenderError as exc:
            raise RenderError(str(exc)) from exc
        return {**notification, "rendered": rendered}

    tenant_id = notification["tenant_id"]
    version = notification.get("template_version")
    template = templates.resolve(tenant_id, template_id, version)
    if template is None:
        raise RenderError(templates.describe_missing(tenant_id, template_id, version))
    result = templates.render_template(
        template,
        context,
        locale=notification.get("locale"),
        channel=notification["channel"],
        tenant_default_locale=_tenant_default_locale(tenant_id),
    )
    if result.error is not None:
        raise RenderError(f"template {template_id!r} v{result.version}: {result.error}")
    return {
        **notification,
        "rendered": {"subject": result.subject, "text": result.text, "html": result.html},
        "template_version": result.version,
        "metadata": {**(notification.get("metadata") or {}), "rendered_locale": result.locale_used},
    }


def render(notification: dict[str, Any]) -> dict[str, Any]:
    """Just the rendered content (subject, text, html)."""
    rendered: dict[str, Any] = render_notification(notification)["rendered"]
    return rendered


async def handle(event: EventT) -> None:
    headers = outgoing_headers(event)
    notification = await decode_or_dead_letter(event, "Notification", STAGE)
    if notification is None:
        return
    try:
        rendered = render_notification(notification)
    except RenderError as exc:
        await emit_status(notification, "failed", stage=STAGE, headers=headers, reason=str(exc))
        metrics.processed(STAGE, "failed", notification["occurred_at"])
        return
    await emit_status(rendered, "rendered", stage=STAGE, headers=headers)
    target = lane_topic("notifications.rendered", lane_of(notification))
    await topics.sink(target).send(key=event.key, value=rendered, headers=headers)
    metrics.processed(STAGE, "rendered", notification["occurred_at"])


lane_agents("notifications.enriched", STAGE, handle, needs_views=True)
